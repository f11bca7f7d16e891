"""The authors' training mixtures: which sources, read from which folder, with which weight and side.

The authors' presets train on a mixture of 25 sources: MMEB-train's 20 subsets, ViDoRe's
``colpali_train_set``, VisRAG in-domain and three LLaVA-Hound video sources. Their README
downloads each family into its own folder under one data root (``VLM2EMB_DATA_ROOT``, default
``./data``)::

    DATA/MMEB-train                                    (mmeb_train)  the 20 subsets
    DATA/vidore_colpali_train_set                      (vidore)      colpali_train_set
    DATA/openbmb_VisRAG-Ret-Train-In-domain-data       (visrag)      visrag-indomain
    DATA/ShareGPTVideo_train_video_and_instruction     (llavahound)  video_caption_300k,
                                                                     video_caption_300k-video, video_qa_240k

:data:`AUTHORS_V1_MIXTURE` is the mixture of ``configs/presets/btoks_qwen2vl_2b_v1.yaml``
(weights of ``configs/datasets/mmeb_train.yaml``, generation sides of
``configs/datasets/btoks_mmeb_train.yaml``; total weight 52, MMEB-train 15 of it);
:data:`VLM2VEC_MIXTURE` that of ``configs/presets/vlm2vec_qwen2vl_2b.yaml`` (the weights of
``configs/datasets/mmeb_train_optimized.yaml``, total 100; no generation side: the baseline has
no generative loss). A weight is a source's probability of drawing a block (weight / total).

:func:`open_source` opens one source with its family's reader.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from . import llavahound_train, vidore_train, visrag_train
from .jsonl import DataError
from .llavahound_train import LlavaHoundSet
from .mmeb_train import DEFAULT_SPLIT, SUBSETS, MmebTrainSubset
from .vidore_train import VidoreTrainSet
from .visrag_train import VisragTrainSet

__all__ = [
    "AUTHORS_V1_MIXTURE",
    "FAMILIES",
    "FAMILY_FOLDERS",
    "FAMILY_SOURCES",
    "FAMILY_TITLES",
    "VLM2VEC_MIXTURE",
    "Mixture",
    "MixtureEntry",
    "folder_family",
    "open_source",
    "source_available",
]

FAMILIES = ("mmeb_train", "vidore", "visrag", "llavahound")
# The folder of each family under the authors' data root (their README's download commands).
FAMILY_FOLDERS = {
    "mmeb_train": "MMEB-train",
    "vidore": vidore_train.ROOT_NAME,
    "visrag": visrag_train.ROOT_NAME,
    "llavahound": llavahound_train.ROOT_NAME,
}
# How messages name a family's folder, and its sources.
FAMILY_TITLES = {
    "mmeb_train": ("an", "MMEB-train root", "subset"),
    "vidore": ("a", "ViDoRe folder", "source"),
    "visrag": ("a", "VisRAG folder", "source"),
    "llavahound": ("a", "ShareGPTVideo folder", "source"),
}
# The source names of each family: the authors' config keys.
FAMILY_SOURCES = {
    "mmeb_train": tuple(SUBSETS),
    "vidore": ("colpali_train_set",),
    "visrag": ("visrag-indomain",),
    "llavahound": tuple(llavahound_train.SOURCES),
}


@dataclass(frozen=True)
class MixtureEntry:
    """One source of a mixture.

    Attributes:
        name: the source's name (the authors' config key; what ``--target-side`` and the
            examples' ``source`` use).
        family: its reader: ``mmeb_train``, ``vidore``, ``visrag`` or ``llavahound``.
        weight: its mixing weight.
        target_side: whose text the other side's BToks generate (``ntp_side``); None: not set.
    """

    name: str
    family: str
    weight: float
    target_side: str | None

    @property
    def folder(self) -> str:
        """Its family's folder under the data root."""
        return FAMILY_FOLDERS[self.family]


@dataclass(frozen=True)
class Mixture:
    """A named mixture of sources (see the module docstring)."""

    name: str
    entries: tuple[MixtureEntry, ...]

    @property
    def total_weight(self) -> float:
        return sum(e.weight for e in self.entries)

    def family(self, family: str) -> tuple[MixtureEntry, ...]:
        """The entries of one family, in the mixture's order."""
        return tuple(e for e in self.entries if e.family == family)

    def entry(self, name: str) -> MixtureEntry:
        """The entry named ``name``.

        Raises:
            KeyError: no such source in this mixture.
        """
        for e in self.entries:
            if e.name == name:
                return e
        raise KeyError(f"{name!r} is not a source of the mixture {self.name}")


def _entry(name: str, family: str, weight: float, side: str | None) -> MixtureEntry:
    if name not in FAMILY_SOURCES[family]:
        raise ValueError(f"{name!r} is not a {family} source")
    return MixtureEntry(name, family, float(weight), side)


# configs/presets/btoks_qwen2vl_2b_v1.yaml -> configs/datasets/btoks_mmeb_train.yaml (metadata.ntp_side)
# -> configs/datasets/mmeb_train.yaml (weight). MMEB-train's 20 come from SUBSETS, which cites the same files.
AUTHORS_V1_MIXTURE = Mixture(
    "btoks_qwen2vl_2b_v1",
    (
        *(_entry(name, "mmeb_train", spec.weight, spec.target_side) for name, spec in SUBSETS.items()),
        _entry("colpali_train_set", "vidore", 10, "positive"),
        _entry("visrag-indomain", "visrag", 12, "query"),
        _entry("video_caption_300k", "llavahound", 5, "positive"),
        _entry("video_caption_300k-video", "llavahound", 5, "query"),
        _entry("video_qa_240k", "llavahound", 5, "positive"),
    ),
)

# configs/presets/vlm2vec_qwen2vl_2b.yaml -> configs/datasets/mmeb_train_optimized.yaml (weight), which
# inherits configs/datasets/mmeb_train.yaml (no ntp_side: VLM2Vec trains no generative loss).
_VLM2VEC_WEIGHTS = {
    "ImageNet_1K": 3,
    "N24News": 2,
    "HatefulMemes": 1,
    "VOC2007": 1,
    "SUN397": 1,
    "OK-VQA": 1,
    "A-OKVQA": 1,
    "DocVQA": 2,
    "InfographicsVQA": 1,
    "ChartQA": 1,
    "Visual7W": 2,
    "VisDial": 3,
    "CIRR": 1,
    "VisualNews_t2i": 3,
    "VisualNews_i2t": 3,
    "MSCOCO_t2i": 3,
    "MSCOCO_i2t": 3,
    "NIGHTS": 1,
    "WebQA": 1,
    "MSCOCO": 3,
    "colpali_train_set": 16,
    "visrag-indomain": 17,
    "video_caption_300k": 10,
    "video_caption_300k-video": 10,
    "video_qa_240k": 10,
}
VLM2VEC_MIXTURE = Mixture(
    "vlm2vec_qwen2vl_2b",
    tuple(_entry(e.name, e.family, _VLM2VEC_WEIGHTS[e.name], None) for e in AUTHORS_V1_MIXTURE.entries),
)


def open_source(family: str, root: str, name: str, *, split: str = DEFAULT_SPLIT, image_root: str | None = None):
    """The examples of source ``name`` of ``family`` under its folder ``root``.

    Args:
        family: one of :data:`FAMILIES`.
        root: the family's folder (an MMEB-train root, the ViDoRe / VisRAG / ShareGPTVideo folder).
        name: the source (an MMEB-train subset, ``colpali_train_set``, ``visrag-indomain`` or a
            LLaVA-Hound source).
        split, image_root: MMEB-train's split and parquet image root (other families have neither).

    Raises:
        DataError: an unknown family or source, a missing layout, or a bad row.
    """
    if family not in FAMILIES or name not in FAMILY_SOURCES[family]:
        raise DataError(
            f"{root}: {name!r} is not a {family} source (the family's sources: {FAMILY_SOURCES.get(family)})"
        )
    if family == "mmeb_train":
        return MmebTrainSubset(root, name, split=split, image_root=image_root)
    if image_root is not None:
        raise DataError(f"{root}: image_root applies to MMEB-train's parquet layout only, not to {name}")
    if family == "vidore":
        return VidoreTrainSet(root)
    if family == "visrag":
        return VisragTrainSet(root)
    return LlavaHoundSet(root, name)


def folder_family(path: str, split: str = DEFAULT_SPLIT) -> str | None:
    """Which family's folder ``path`` is (by its layout, not its name), or None.

    An MMEB-train root holds a subset's parquet or Lance files; a ShareGPTVideo folder an
    instruction file of a LLaVA-Hound source; the ViDoRe and VisRAG folders a table of rows
    with images, told apart by its columns (ViDoRe's rows have an ``answer``).

    Raises:
        DataError: a folder holding two layouts of one source.
    """
    from .image_rows import find_image_rows, table_columns
    from .mmeb_train import find_layout as mmeb_layout

    if not os.path.isdir(path):
        return None
    if any(mmeb_layout(path, name, split) for name in SUBSETS):
        return "mmeb_train"
    if any(llavahound_train.find_layout(path, spec.file) for spec in llavahound_train.SOURCES.values()):
        return "llavahound"
    if find_image_rows(path) is not None:
        return "vidore" if "answer" in table_columns(path) else "visrag"
    return None


def source_available(family: str, root: str, name: str, split: str = DEFAULT_SPLIT) -> bool:
    """Whether ``root`` holds source ``name``'s files (checked without reading rows)."""
    from .image_rows import find_image_rows
    from .mmeb_train import find_layout as mmeb_layout

    if family == "mmeb_train":
        return mmeb_layout(root, name, split) is not None
    if family == "llavahound":
        return llavahound_train.find_layout(root, llavahound_train.SOURCES[name].file) is not None
    return find_image_rows(root) is not None
