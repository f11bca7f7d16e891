"""MMEB-V2 as the paper scores it: 78 datasets, Hit@1 / nDCG@5, meta-task, modality and Overall means.

Reads the authors' Lance release (``ROOT/<modality>-tasks/<dataset>/`` with ``queries.lance``,
``candidates.lance``, ``qrels.lance``, ``metadata.json``). A qrels row's ``mode`` says what its
query is ranked against: every candidate of the dataset (``"sparse"``) or exactly the candidates
it lists (``"exhaustive"``); candidates scoring > 0 are relevant. Per dataset every query and
candidate is embedded once through the encode engine, scored by the dot product of the
L2-normalised embeddings through the blocked scorer (no ``[queries, corpus]`` matrix is held;
sharded under ``torchrun``, only rank 0 writes), and each query gets Hit@1 or nDCG@5 as an
expected value under random tie-breaking. :func:`evaluate_mmeb_v2` writes each dataset's result
as it finishes (``OUT/datasets/<name>.json``) and skips the ones already there on a rerun with
the same settings, ending with ``OUT/results.json`` and ``OUT/results.md``. The rules in full:
docs/mmeb-v2.md; several processes: docs/evaluation-torchrun.md.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass

import torch

from ..datasets.lance_tables import LanceTable
from ..embedder import encode as engine
from ..inference import distributed
from ..inference.scoring import count_ranks
from .metrics import expected_graded_metrics
from .mmeb_v2_index import (
    DATASETS,
    META_TASK_LABELS,
    META_TASKS,
    MODALITIES,
    MODALITY_LABELS,
    MMEBDataset,
    select_datasets,
)
from .mmeb_v2_inputs import MODES, NUM_FRAMES, DatasetInputs, Side, dataset_inputs, to_model_input

__all__ = [
    "HIT_KS",
    "NDCG_KS",
    "MMEBTask",
    "aggregate",
    "evaluate_mmeb_v2",
    "evaluate_task",
    "markdown_table",
    "open_task",
    "open_tasks",
    "preflight",
]

HIT_KS = (1, 5, 10)
NDCG_KS = (5, 10)
TABLES = ("queries.lance", "candidates.lance", "qrels.lance")
QRELS_COLUMNS = ("query_id", "mode", "candidate_ids", "candidate_scores")
TEXT_BLOCK = 8192  # rows per encode block of a text-only side (media sides: evaluate_task's block)


@dataclass
class MMEBTask:
    """One MMEB-V2 dataset, opened and checked; no media read yet.

    Attributes:
        spec: the dataset's index entry.
        path: its folder.
        inputs: how its queries and candidates are composed.
        queries, candidates: its tables.
        query_rows: the rows of ``queries`` evaluated (the first ``limit`` ones).
        query_ids: their ids.
        candidate_ids: every candidate's id, in row order.
        lists: per evaluated query, the candidate rows it is ranked against (an exhaustive
            qrels row), or None (ranked against every candidate).
        relevant: per evaluated query, ``(candidate row, gain > 0)`` of its relevant candidates.
        num_queries_total: rows of ``queries``.
        mode: the authors' prompt mode ``inputs`` follows (``"canonical"`` or ``"origin"``).
    """

    spec: MMEBDataset
    path: str
    inputs: DatasetInputs
    queries: LanceTable
    candidates: LanceTable
    query_rows: list[int]
    query_ids: list
    candidate_ids: list
    lists: list[list[int] | None]
    relevant: list[list[tuple[int, float]]]
    num_queries_total: int
    mode: str = "canonical"

    @property
    def name(self) -> str:
        return self.spec.name

    def needed_candidates(self) -> list[int]:
        """The candidate rows the evaluated queries are ranked against (all, when one is sparse)."""
        if any(rows is None for rows in self.lists):
            return list(range(len(self.candidate_ids)))
        return sorted({row for rows in self.lists for row in rows})


def _unique_ids(ids: list, where: str) -> dict:
    index = {}
    for row, value in enumerate(ids):
        if value is None:
            raise ValueError(f"{where}: row {row} has no id")
        if value in index:
            raise ValueError(f"{where}: id {value!r} appears twice (rows {index[value]} and {row})")
        index[value] = row
    return index


def open_task(
    root: str | os.PathLike, spec: MMEBDataset, limit: int | None = None, mode: str = "canonical"
) -> MMEBTask:
    """Open one dataset under the benchmark ``root`` and check its tables and qrels.

    Args:
        root: the benchmark root (holding ``image-tasks/`` ...).
        spec: which dataset.
        limit: evaluate only its first ``limit`` queries (their candidate lists stay whole).
        mode: how prompts are composed, as the authors' ``canonical`` (default) or ``origin`` mode
            (:func:`~btok_model.evaluation.mmeb_v2_inputs.dataset_inputs`).

    Raises:
        FileNotFoundError: the dataset's folder or one of its tables is missing.
        ValueError: a table lacks a column, ids repeat, a ``metadata.json`` names another
            dataset, or a qrels row is malformed (no candidates, an unknown mode, an unknown
            query or candidate id, ids and scores of different lengths, a candidate listed twice).
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be an int >= 1 or None, got {limit!r}")
    folder = os.path.join(os.fspath(root), spec.folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{spec.name}: no dataset folder {folder}")
    for table in TABLES:
        if not os.path.isdir(os.path.join(folder, table)):
            raise FileNotFoundError(f"{spec.name}: missing table {os.path.join(folder, table)}")
    _check_metadata(folder, spec)
    inputs = dataset_inputs(spec.name, mode)
    queries = LanceTable(os.path.join(folder, "queries.lance"))
    candidates = LanceTable(os.path.join(folder, "candidates.lance"))
    qrels = LanceTable(os.path.join(folder, "qrels.lance"))
    queries.require(("id", *inputs.query.columns), f"{spec.name} queries")
    candidates.require(("id", *inputs.candidate.columns), f"{spec.name} candidates")
    qrels.require(QRELS_COLUMNS, f"{spec.name} qrels")
    query_ids = queries.column("id")
    query_index = _unique_ids(query_ids, queries.path)
    candidate_ids = candidates.column("id")
    candidate_index = _unique_ids(candidate_ids, candidates.path)
    judged = _read_qrels(qrels, query_index, candidate_index, spec.name)
    rows = list(range(len(query_ids) if limit is None else min(limit, len(query_ids))))
    if not rows:
        raise ValueError(f"{spec.name}: {queries.path} has no queries")
    lists, relevant = [], []
    for row in rows:
        if row not in judged:
            raise ValueError(f"{spec.name}: no qrels row for query id {query_ids[row]!r}")
        lists.append(judged[row][0])
        relevant.append(judged[row][1])
    return MMEBTask(
        spec,
        folder,
        inputs,
        queries,
        candidates,
        rows,
        [query_ids[r] for r in rows],
        candidate_ids,
        lists,
        relevant,
        len(query_ids),
        mode,
    )


def _check_metadata(folder: str, spec: MMEBDataset) -> None:
    path = os.path.join(folder, "metadata.json")
    if not os.path.isfile(path):
        return  # optional: the index says what the dataset is
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not readable JSON ({err})") from None
    for key, want in (("name", spec.name), ("modality", spec.modality), ("task_type", spec.meta_task)):
        if key in meta and meta[key] != want:
            raise ValueError(f"{path}: {key} is {meta[key]!r}, but {spec.folder} holds {spec.name!r} ({key} {want!r})")


def _read_qrels(qrels: LanceTable, query_index: dict, candidate_index: dict, name: str) -> dict:
    """``{query row: (candidate rows of an exhaustive row or None, [(candidate row, gain > 0)])}``."""
    columns = {c: qrels.column(c) for c in QRELS_COLUMNS}
    judged = {}
    for i in range(qrels.num_rows):
        query_id, mode = columns["query_id"][i], columns["mode"][i]
        ids, scores = columns["candidate_ids"][i] or [], columns["candidate_scores"][i] or []
        where = f"{name}: qrels row {i} (query id {query_id!r})"
        if query_id not in query_index:
            raise ValueError(f"{where}: no such query")
        row = query_index[query_id]
        if row in judged:
            raise ValueError(f"{where}: a second qrels row for this query")
        if mode not in ("sparse", "exhaustive"):
            raise ValueError(f"{where}: mode must be 'sparse' or 'exhaustive', got {mode!r}")
        if not ids:
            raise ValueError(f"{where}: lists no candidates")
        if len(ids) != len(scores):
            raise ValueError(f"{where}: {len(ids)} candidate_ids but {len(scores)} candidate_scores")
        unknown = [c for c in ids if c not in candidate_index]
        if unknown:
            raise ValueError(f"{where}: unknown candidate id(s) {unknown[:5]!r}")
        rows = [candidate_index[c] for c in ids]
        if len(set(rows)) != len(rows):
            repeated = sorted({c for c in ids if ids.count(c) > 1}, key=repr)
            raise ValueError(f"{where}: candidate id(s) {repeated[:5]!r} listed twice")
        gains = [0.0 if s is None else float(s) for s in scores]
        if any(math.isnan(g) for g in gains):
            raise ValueError(f"{where}: a candidate score is NaN")
        relevant = [(r, g) for r, g in zip(rows, gains) if g > 0]
        judged[row] = (rows if mode == "exhaustive" else None, relevant)
    return judged


def open_tasks(
    root: str | os.PathLike,
    datasets: list[str] | None = None,
    modalities: list[str] | None = None,
    limit: int | None = None,
    mode: str = "canonical",
) -> list[MMEBTask]:
    """Open and check every selected dataset (see :func:`open_task`); nothing is embedded.

    Raises:
        ValueError: an unknown ``mode``.
        FileNotFoundError: ``root`` is not a folder, or a dataset's folder or table is missing
            (all missing datasets named at once).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if not os.path.isdir(os.fspath(root)):
        raise FileNotFoundError(f"MMEB-V2 root {os.fspath(root)!r} is not a folder")
    specs = select_datasets(datasets, modalities)
    missing = [s.folder for s in specs if not os.path.isdir(os.path.join(os.fspath(root), s.folder))]
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise FileNotFoundError(
            f"MMEB-V2 root {os.fspath(root)!r} lacks {len(missing)} of the {len(specs)} datasets selected: {shown} "
            "(choose some with --datasets / --modalities)"
        )
    return [open_task(root, s, limit, mode) for s in specs]


# -- embedding ----------------------------------------------------------------------------------------


def _model_inputs(task: MMEBTask, side: Side, table: LanceTable, rows: list[int], role: str, num_frames: int) -> list:
    """The embedder inputs of ``rows`` of ``table`` (media decoded)."""
    records = table.rows(rows, ("id", *side.columns))
    return [
        to_model_input(side.build(record, num_frames), f"{task.name} {role} id {record['id']!r}") for record in records
    ]


class _SideRows:
    """The inputs of ``rows`` of one side's table as a sequence the encode engine slices: a
    slice reads and decodes only those rows (media rows a block at a time)."""

    def __init__(self, task: MMEBTask, side: Side, table: LanceTable, rows: list[int], role: str, num_frames: int):
        self.task, self.side, self.table, self.rows, self.role, self.num_frames = (
            task,
            side,
            table,
            rows,
            role,
            num_frames,
        )

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: slice) -> list:
        if not isinstance(index, slice):
            raise TypeError("read rows by slice: inputs[lo:hi]")
        return _model_inputs(self.task, self.side, self.table, self.rows[index], self.role, self.num_frames)


def _embed(
    task: MMEBTask,
    model,
    side: Side,
    table: LanceTable,
    rows: list[int],
    role: str,
    *,
    batch_size: int,
    block: int,
    num_frames: int,
    text_block: int,
    progress: bool,
    gather: bool,
    shard: bool,
):
    """The embeddings of ``rows`` through the encode engine, each rank encoding its share of the
    blocks: media rows read and decoded ``block`` rows at a time, text-only rows read at once
    (identical texts of a block embedded once). ``gather``: fp32 ``[len(rows), H]`` on every
    rank; else this rank's :class:`~btok_model.embedder.encode.EncodedShard`. Without ``shard``
    this process encodes every block (a tensor either way), with no collective."""
    if side.media:
        inputs, block_size = _SideRows(task, side, table, rows, role, num_frames), block
    else:
        inputs, block_size = _model_inputs(task, side, table, rows, role, num_frames), text_block
    return engine.encode(
        model,
        inputs,
        batch_size=batch_size,
        block_size=block_size,
        shard=shard,
        gather=gather,
        progress=progress,
        desc=f"MMEB-V2 {task.name} {role}",
    )


def preflight(tasks: list[MMEBTask], model, num_frames: int = NUM_FRAMES) -> None:
    """Embed each dataset's first query and first candidate: a model that cannot take a
    dataset's inputs (no video processor, a text-only backbone) fails here, before a long run."""
    for task in tasks:
        inputs = _model_inputs(task, task.inputs.query, task.queries, task.query_rows[:1], "query", num_frames)
        inputs += _model_inputs(
            task, task.inputs.candidate, task.candidates, task.needed_candidates()[:1], "candidate", num_frames
        )
        try:
            engine.encode(model, inputs, batch_size=2)
        except Exception as err:  # whatever the model raises, say which dataset it was
            raise ValueError(f"{task.name}: the model cannot embed its inputs: {err}") from err


# -- scoring ------------------------------------------------------------------------------------------


def _padded(relevant: list[list[tuple[int, float]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(candidate index long [Q, R] (-1 = padding), gain float64 [Q, R])`` with ``R >= 1``."""
    width = max([len(r) for r in relevant] + [1])
    index = torch.full((len(relevant), width), -1, dtype=torch.long)
    gains = torch.zeros(len(relevant), width, dtype=torch.float64)
    for q, pairs in enumerate(relevant):
        for j, (c, g) in enumerate(pairs):
            index[q, j], gains[q, j] = c, g
    return index, gains


def _scoring_device(model) -> torch.device:
    device = getattr(model, "device", None)
    return torch.device(device) if device is not None else torch.device("cpu")


def evaluate_task(
    task: MMEBTask,
    model,
    *,
    batch_size: int = 32,
    block: int = 256,
    num_frames: int = NUM_FRAMES,
    show_progress_bar: bool = True,
    query_block: int = 1024,
    corpus_block: int = 16384,
    text_block: int = TEXT_BLOCK,
    shard: bool = False,
) -> dict:
    """Embed and score one dataset.

    Args:
        task: from :func:`open_task`.
        model: an :class:`~btok_model.embedder.base.Embedder` (a :class:`~btok_model.BTokModel`,
            a :class:`~btok_model.embedder.pooled.PooledEmbedder`), or another encoder with
            ``encode(inputs, batch_size=, show_progress_bar=)`` returning L2-normalised float
            ``[N, H]``; run through the encode engine (:mod:`btok_model.embedder.encode`).
        batch_size: inputs per forward pass.
        block: media rows read, decoded and encoded at once (the encode block: the unit each
            rank takes under ``torchrun``).
        text_block: the encode block of a text-only side (read at once; identical texts of a
            block embedded once).
        shard: split the blocks across the ranks of ``torch.distributed`` (every rank calls
            with the same arguments); False: this process does all, with no collective (each
            rank of a training run's evaluation callback).
        num_frames: frames sampled per video.
        show_progress_bar: tqdm bars (rows/s) over the dataset's candidates and queries, rank 0.
        query_block, corpus_block: the score block (queries x candidates) of a shared corpus.

    With ``shard`` under ``torchrun`` every rank calls this with the same arguments:
    candidates stay on the rank that encoded them, queries are gathered, rank counts add up
    (the same result as one process).

    Returns:
        ``{"dataset", "modality", "meta_task", "metric", "score", "hit@1", "hit@5", "hit@10",
        "ndcg@5", "ndcg@10", "num_queries", "num_queries_total", "num_candidates" (embedded),
        "num_candidates_total", "sparse_queries", "exhaustive_queries",
        "queries_without_relevant", "seconds"}``.
    """
    start = time.perf_counter()
    needed = task.needed_candidates()
    settings = {"batch_size": batch_size, "block": block, "num_frames": num_frames, "progress": show_progress_bar}
    settings.update(text_block=text_block, shard=shard)
    candidates = _embed(
        task, model, task.inputs.candidate, task.candidates, needed, "candidate", gather=False, **settings
    )
    queries = _embed(task, model, task.inputs.query, task.queries, task.query_rows, "query", gather=True, **settings)
    local = candidates.embeddings if shard else candidates
    bad = torch.tensor([int(not (bool(torch.isfinite(queries).all()) and bool(torch.isfinite(local).all())))])
    if (distributed.all_reduce(bad, "max") if shard else bad).item():  # every rank stops, none hangs
        raise ValueError(f"{task.name}: the model returned non-finite embeddings")
    at = {row: i for i, row in enumerate(needed)}  # candidate row -> embedding row
    relevant = [[(at[c], g) for c, g in pairs] for pairs in task.relevant]
    index, gains = _padded(relevant)
    lists = [None if rows is None else [at[c] for c in rows] for rows in task.lists]
    counts = count_ranks(
        queries,
        candidates,
        index,
        lists=lists,
        query_block=query_block,
        candidate_block=corpus_block,
        device=_scoring_device(model),
    )
    targets, greater, equal = counts.targets, counts.greater, counts.equal
    sparse = [q for q, rows in enumerate(task.lists) if rows is None]
    exhaustive = [q for q, rows in enumerate(task.lists) if rows is not None]
    ties = (equal - 1).clamp(min=0)  # the relevant candidate ties with itself
    per_query = expected_graded_metrics(gains, targets.double(), greater, ties, HIT_KS, NDCG_KS)
    metrics = {name: float(values.mean()) for name, values in per_query.items()}
    return {
        "dataset": task.name,
        "modality": task.spec.modality,
        "meta_task": task.spec.meta_task,
        "metric": task.spec.metric,
        "score": metrics[task.spec.metric],
        **metrics,
        "num_queries": len(task.query_rows),
        "num_queries_total": task.num_queries_total,
        "num_candidates": len(needed),
        "num_candidates_total": len(task.candidate_ids),
        "sparse_queries": len(sparse),
        "exhaustive_queries": len(exhaustive),
        "queries_without_relevant": sum(not pairs for pairs in task.relevant),
        "seconds": round(time.perf_counter() - start, 3),
    }


# -- aggregation and reports --------------------------------------------------------------------------


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def aggregate(results: list[dict]) -> dict:
    """The paper's summary of per-dataset results (each with ``"dataset"`` and ``"score"``).

    Returns:
        ``{"meta_tasks": {meta_task: mean score of its datasets}, "modalities": {modality:
        mean score of its datasets}, "overall": mean score of all datasets, "num_datasets": n,
        "complete": whether all 78 are in}``; a group without datasets is left out.
    """
    by_name = {}
    for result in results:
        name = result["dataset"]
        if name in by_name:
            raise ValueError(f"two results for MMEB-V2 dataset {name!r}")
        by_name[name] = float(result["score"])
    meta_tasks, modalities = {}, {}
    for modality in MODALITIES:
        for meta_task in META_TASKS[modality]:
            mean = _mean([by_name[d.name] for d in DATASETS if d.meta_task == meta_task and d.name in by_name])
            if mean is not None:
                meta_tasks[meta_task] = mean
        mean = _mean([by_name[d.name] for d in DATASETS if d.modality == modality and d.name in by_name])
        if mean is not None:
            modalities[modality] = mean
    known = [d.name for d in DATASETS if d.name in by_name]
    unknown = sorted(set(by_name) - set(known))
    if unknown:
        raise ValueError(f"results for datasets that are not in MMEB-V2: {unknown}")
    return {
        "meta_tasks": meta_tasks,
        "modalities": modalities,
        "overall": _mean([by_name[n] for n in known]),
        "num_datasets": len(known),
        "complete": len(known) == len(DATASETS),
    }


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def markdown_table(results: list[dict], summary: dict) -> str:
    """The summary in the paper's column layout and the per-dataset scores, as markdown (x 100)."""
    header, cells = [], []
    for modality in MODALITIES:
        label = MODALITY_LABELS[modality]
        for meta_task in META_TASKS[modality]:
            header.append(f"{label} {META_TASK_LABELS[meta_task]}")
            cells.append(_pct(summary["meta_tasks"].get(meta_task)))
        header.append(f"**{label}**")
        cells.append(_pct(summary["modalities"].get(modality)))
    header.append("**Overall**")
    cells.append(_pct(summary["overall"]))
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        "| " + " | ".join(cells) + " |",
        "",
    ]
    if not summary["complete"]:
        lines += [
            (
                f"Over {summary['num_datasets']} of the {len(DATASETS)} MMEB-V2 datasets: not comparable with the "
                "paper's full-benchmark columns."
            ),
            "",
        ]
    lines += [
        "| dataset | modality | meta-task | metric | score | queries | candidates |",
        "|---|---|---|---|---|---|---|",
    ]
    order = {d.name: i for i, d in enumerate(DATASETS)}
    for r in sorted(results, key=lambda r: order[r["dataset"]]):
        queries = f"{r['num_queries']}" + (
            f" of {r['num_queries_total']}" if r["num_queries"] != r["num_queries_total"] else ""
        )
        lines.append(
            f"| {r['dataset']} | {r['modality']} | {META_TASK_LABELS[r['meta_task']]} | {r['metric']} | "
            f"{_pct(r['score'])} | {queries} | {r['num_candidates']} |"
        )
    return "\n".join(lines) + "\n"


def _write_json(path: str, value) -> None:
    """Write atomically: a result file is either whole or absent."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2)
    os.replace(tmp, path)


def evaluate_mmeb_v2(
    root: str | os.PathLike,
    model,
    output_dir: str | os.PathLike,
    *,
    datasets: list[str] | None = None,
    modalities: list[str] | None = None,
    limit: int | None = None,
    batch_size: int = 32,
    num_frames: int = NUM_FRAMES,
    block: int = 256,
    text_block: int = TEXT_BLOCK,
    shard: bool = False,
    mode: str = "canonical",
    run_info: dict | None = None,
    show_progress_bar: bool = True,
    tasks: list[MMEBTask] | None = None,
    log=print,
) -> dict:
    """Evaluate ``model`` on MMEB-V2 (or some of its datasets), resumable.

    Args:
        root: the benchmark root.
        model: see :func:`evaluate_task`.
        output_dir: ``datasets/<name>.json`` per dataset as it finishes, ``settings.json``,
            and at the end ``results.json`` and ``results.md`` (written by rank 0 under
            ``torchrun``; every rank returns the report). Datasets whose result file is already
            there are not evaluated again.
        datasets, modalities: which datasets (default all 78).
        limit: queries per dataset (smoke runs).
        batch_size, num_frames, block, text_block, shard: see :func:`evaluate_task`.
        mode: the authors' prompt mode, ``"canonical"`` (their default) or ``"origin"``; stored
            with the settings (a folder of results in the other mode is refused).
        run_info: what identifies the model (name, baseline, ...), stored with the settings; a
            folder holding results of other settings is refused.
        tasks: already opened datasets (from :func:`open_tasks` with the same selection and mode).
        log: prints one line per dataset.

    Returns:
        ``{"settings", "datasets": [per-dataset results in benchmark order], "summary"}``
        (see :func:`evaluate_task`, :func:`aggregate`).

    Raises:
        ValueError: ``output_dir`` holds results of other settings, an unknown ``mode``, or
            ``tasks`` opened in another mode.
    """
    if tasks is None:
        tasks = open_tasks(root, datasets, modalities, limit, mode)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    other = sorted({t.mode for t in tasks} - {mode})
    if other:
        raise ValueError(f"tasks were opened with mode {', '.join(map(repr, other))}, but mode is {mode!r}")
    settings = {"limit": limit, "num_frames": num_frames, "mode": mode, **(run_info or {})}
    out = os.fspath(output_dir)
    main = distributed.is_main() or not shard  # without shard this process is the whole run
    settings_path = os.path.join(out, "settings.json")
    previous = None
    if os.path.isfile(settings_path):
        with open(settings_path) as f:
            previous = json.load(f)
        previous.setdefault("mode", "canonical")  # folders written before the mode was recorded
    if previous is not None and previous != settings:
        changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
        raise ValueError(
            f"{out} holds MMEB-V2 results of other settings ({', '.join(changed)}: "
            f"{[previous.get(k) for k in changed]} there, {[settings.get(k) for k in changed]} now); "
            "use another output folder"
        )
    # Rank 0 decides what is done (every rank then evaluates the same datasets) and writes.
    done = {}
    for task in tasks:
        path = os.path.join(out, "datasets", f"{task.name}.json")
        if main and os.path.isfile(path):
            with open(path) as f:
                done[task.name] = json.load(f)
    if shard:
        done = distributed.all_gather_objects(done)[0]
        distributed.barrier()  # no rank writes before every rank has read
    if main:
        os.makedirs(os.path.join(out, "datasets"), exist_ok=True)
        if previous is None:
            _write_json(settings_path, settings)
    results, pending = {}, []
    for task in tasks:
        if task.name in done:
            results[task.name] = done[task.name]
            if main:
                log(f"{task.name}: already evaluated ({os.path.join(out, 'datasets', f'{task.name}.json')})")
        else:
            pending.append(task)
    preflight(pending, model, num_frames)
    for task in pending:
        result = evaluate_task(
            task,
            model,
            batch_size=batch_size,
            block=block,
            text_block=text_block,
            num_frames=num_frames,
            show_progress_bar=show_progress_bar,
            shard=shard,
        )
        results[task.name] = result
        if main:
            _write_json(os.path.join(out, "datasets", f"{task.name}.json"), result)
            log(
                f"{task.name}: {result['metric']} {100 * result['score']:.2f} ({result['num_queries']} queries, "
                f"{result['num_candidates']} candidates, {result['seconds']:.1f} s)"
            )
    ordered = [results[t.name] for t in tasks]
    summary = aggregate(ordered)
    report = {"settings": settings, "datasets": ordered, "summary": summary}
    if main:
        _write_json(os.path.join(out, "results.json"), report)
        with open(os.path.join(out, "results.md"), "w") as f:
            f.write(markdown_table(ordered, summary))
    return report
