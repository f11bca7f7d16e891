"""The 78 MMEB-V2 datasets: modality, meta-task and metric of each, in the benchmark's order.

The order, names, folders (``<modality>-tasks/<name>`` under the benchmark root) and
meta-tasks are those of the authors' converted MMEB-V2 (the Lance release their evaluation
reads); the metric is Hit@1 for image and video tasks and nDCG@5 for visual documents. The
paper's table has one column per meta-task, one per modality and an Overall column; the
labels below are its column headers.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

__all__ = [
    "DATASETS",
    "META_TASKS",
    "META_TASK_LABELS",
    "MODALITIES",
    "MODALITY_LABELS",
    "PRIMARY_METRIC",
    "MMEBDataset",
    "dataset",
    "select_datasets",
]

MODALITIES = ("image", "video", "visdoc")
MODALITY_LABELS = {"image": "Image", "video": "Video", "visdoc": "VisDoc"}
PRIMARY_METRIC = {"image": "hit@1", "video": "hit@1", "visdoc": "ndcg@5"}

META_TASKS = {
    "image": ("image_classification", "image_question_answer", "image_retrieval", "image_visual_grounding"),
    "video": ("video_classification", "video_question_answer", "video_retrieval", "video_moment_retrieval"),
    "visdoc": ("visdoc_vidore_v1", "visdoc_vidore_v2", "visdoc_visrag", "visdoc_ood"),
}
META_TASK_LABELS = {
    "image_classification": "CLS",
    "image_question_answer": "QA",
    "image_retrieval": "RET",
    "image_visual_grounding": "GD",
    "video_classification": "CLS",
    "video_question_answer": "QA",
    "video_retrieval": "RET",
    "video_moment_retrieval": "MRET",
    "visdoc_vidore_v1": "VDRv1",
    "visdoc_vidore_v2": "VDRv2",
    "visdoc_visrag": "VR",
    "visdoc_ood": "OOD",
}


@dataclass(frozen=True)
class MMEBDataset:
    """One MMEB-V2 dataset.

    Attributes:
        name: its name, as the benchmark spells it (also its folder name).
        modality: ``"image"``, ``"video"`` or ``"visdoc"``.
        meta_task: one of :data:`META_TASKS` of its modality.
    """

    name: str
    modality: str
    meta_task: str

    @property
    def folder(self) -> str:
        """Its folder under the benchmark root."""
        return f"{self.modality}-tasks/{self.name}"

    @property
    def metric(self) -> str:
        """The metric the paper reports for it."""
        return PRIMARY_METRIC[self.modality]


def _rows(modality: str, meta_task: str, names: str) -> list[MMEBDataset]:
    return [MMEBDataset(name, modality, meta_task) for name in names.split()]


DATASETS: tuple[MMEBDataset, ...] = tuple(
    _rows(
        "image",
        "image_classification",
        "VOC2007 N24News SUN397 ObjectNet Country211 Place365 ImageNet-1K HatefulMemes ImageNet-A ImageNet-R",
    )
    + _rows(
        "image",
        "image_question_answer",
        "OK-VQA A-OKVQA DocVQA InfographicsVQA ChartQA Visual7W ScienceQA GQA TextVQA VizWiz",
    )
    + _rows(
        "image",
        "image_retrieval",
        "VisDial CIRR VisualNews_t2i VisualNews_i2t MSCOCO_t2i MSCOCO_i2t NIGHTS WebQA FashionIQ Wiki-SS-NQ OVEN EDIS",
    )
    + _rows("image", "image_visual_grounding", "MSCOCO RefCOCO RefCOCO-Matching Visual7W-Pointing")
    + _rows("video", "video_classification", "K700 UCF101 HMDB51 SmthSmthV2 Breakfast")
    + _rows("video", "video_question_answer", "Video-MME MVBench NExTQA EgoSchema ActivityNetQA")
    + _rows("video", "video_retrieval", "MSR-VTT MSVD DiDeMo VATEX YouCook2")
    + _rows("video", "video_moment_retrieval", "QVHighlight Charades-STA MomentSeeker")
    + _rows(
        "visdoc",
        "visdoc_vidore_v1",
        "ViDoRe_arxivqa ViDoRe_docvqa ViDoRe_infovqa ViDoRe_tabfquad ViDoRe_tatdqa ViDoRe_shiftproject "
        "ViDoRe_syntheticDocQA_artificial_intelligence ViDoRe_syntheticDocQA_energy "
        "ViDoRe_syntheticDocQA_government_reports ViDoRe_syntheticDocQA_healthcare_industry",
    )
    + _rows(
        "visdoc",
        "visdoc_vidore_v2",
        "ViDoRe_esg_reports_human_labeled_v2 ViDoRe_biomedical_lectures_v2_multilingual "
        "ViDoRe_economics_reports_v2_multilingual ViDoRe_esg_reports_v2_multilingual",
    )
    + _rows(
        "visdoc",
        "visdoc_visrag",
        "VisRAG_ArxivQA VisRAG_ChartQA VisRAG_MP-DocVQA VisRAG_SlideVQA VisRAG_InfoVQA VisRAG_PlotQA",
    )
    + _rows("visdoc", "visdoc_ood", "ViDoSeek-page ViDoSeek-doc MMLongBench-page MMLongBench-doc")
)
_BY_NAME = {d.name: d for d in DATASETS}


def dataset(name: str) -> MMEBDataset:
    """The dataset called ``name``.

    Raises:
        ValueError: no such MMEB-V2 dataset (the message suggests close names).
    """
    try:
        return _BY_NAME[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_BY_NAME), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see btok_model.evaluation.mmeb_v2_index.DATASETS"
        raise ValueError(f"unknown MMEB-V2 dataset {name!r}{hint}") from None


def select_datasets(names: list[str] | None = None, modalities: list[str] | None = None) -> list[MMEBDataset]:
    """The datasets named (all when None) of the given modalities (all when None), in the benchmark's order.

    Raises:
        ValueError: an unknown dataset or modality, a name repeated, or nothing selected.
    """
    for modality in modalities or ():
        if modality not in MODALITIES:
            raise ValueError(f"unknown MMEB-V2 modality {modality!r}; choose from {', '.join(MODALITIES)}")
    if names is not None:
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"MMEB-V2 dataset(s) named twice: {', '.join(repeated)}")
        wanted = {dataset(n).name for n in names}
    chosen = [
        d for d in DATASETS if (names is None or d.name in wanted) and (modalities is None or d.modality in modalities)
    ]
    if not chosen:
        raise ValueError(f"no MMEB-V2 dataset is both in {names} and of modality {modalities}")
    return chosen
