"""Score an evaluation task with an embedder or TF-IDF and report retrieval metrics.

A scorer turns inputs into vectors (``encode``) and says how vectors compare (``scoring``: a
similarity name, or a function of two sets of vectors). :func:`evaluate` embeds every query and
every distinct candidate once through the encode engine (:mod:`btok_model.embedder.encode`),
then counts, for each query, how many candidates beat or tie its relevant one with the blocked
scorer (:func:`btok_model.inference.scoring.count_ranks`): a block of queries against a block of
candidates (pairs) or each query against its own list (candidate lists), so the full score
matrix never has to exist. :func:`evaluate_dims` embeds once and scores the Matryoshka
truncations of the same embeddings, one metrics block per dimension.

Under ``torchrun`` an :class:`EmbeddingScorer` with ``shard=True`` shards the work: each rank encodes its share of
the row blocks; the queries are gathered to every rank, the candidates stay on the rank that
encoded them, and the per-rank counts add up -- the same metrics as one process.

Extra candidates from an ``embed`` output (``corpus_index``, a
:class:`~btok_model.inference.pools.PoolOptions`): a pairs task's pool is its positives followed
by the output's rows, their stored vectors read, not re-embedded
(:mod:`btok_model.inference.pools`): exact by default -- the same metrics as the same rows given
as a corpus file -- or through the output's ANN index, the result then marked approximate.

Bad rows: ``on_bad_row="error"`` stops at the first input the model refuses (an empty text, a
text longer than the model accepts, an image that does not decode), naming its file and line,
before anything is embedded; ``"skip"`` leaves such queries and candidates out (a query whose
relevant candidate is left out goes too) and reports how many beside the score.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from ..embedder import encode as engine
from ..embedder.similarity import check_similarity, similarity_scores, truncate
from ..inference import distributed
from ..inference.scoring import count_ranks
from .metrics import METRIC_NAMES, expected_metrics
from .task_files import ON_BAD_ROW, CandidateListTask, PairTask, input_key
from .tfidf import TfidfScorer

__all__ = ["EmbeddingScorer", "TfidfTaskScorer", "check_task", "evaluate", "evaluate_dims", "find_bad_inputs"]

BLOCK_SIZE = 8192  # rows per encode block: the unit of sharding (results do not depend on the ranks)


class EmbeddingScorer:
    """Cosine similarity of L2-normalised embeddings, or MaxSim of a BTok model's K vectors,
    embedded by the encode engine (sharded across ranks under ``torchrun``).

    Args:
        model: an :class:`~btok_model.embedder.base.Embedder` (:class:`~btok_model.BTokModel`,
            :class:`~btok_model.embedder.pooled.PooledEmbedder`), or another encoder with
            ``encode(inputs, batch_size=, show_progress_bar=)`` returning fp32 ``[N, H]``
            L2-normalised rows (``[N, K, H]`` with ``multi_vector=True`` for ``"maxsim"``).
        batch_size: inputs per forward pass.
        show_progress_bar: a tqdm bar (rows/s) per encode call, on rank 0.
        similarity: ``"cosine"`` or ``"maxsim"``; None: the model's ``config.similarity``
            (``"cosine"`` for a model without one).
        block_size: rows per encode block (the unit each rank takes).
        shard: split the work across the ranks of ``torch.distributed`` (every rank must then
            evaluate the same task: ``python -m btok_model.evaluate`` under ``torchrun``). False
            (the default): this process embeds and scores everything, with no collective -- as
            each rank does in the training's evaluation callback, whose FSDP forwards must stay
            in step across ranks.
    """

    def __init__(
        self,
        model,
        batch_size: int = 32,
        show_progress_bar: bool = False,
        similarity: str | None = None,
        block_size: int = BLOCK_SIZE,
        shard: bool = False,
    ):
        if similarity is None:
            similarity = getattr(getattr(model, "config", None), "similarity", "cosine")
        check_similarity(similarity)
        self.model, self.batch_size, self.show_progress_bar = model, batch_size, show_progress_bar
        self.similarity_name = self.scoring = similarity
        self.block_size, self.shard = block_size, shard

    @property
    def device(self) -> torch.device:
        """Where scores are computed: the model's device (the CPU for an encoder without one)."""
        return torch.device(getattr(self.model, "device", None) or "cpu")

    def fit(self, inputs: list) -> None:
        """Embedders need no fitting."""

    def _encode(self, inputs: list, gather: bool):
        return engine.encode(
            self.model,
            inputs,
            batch_size=self.batch_size,
            block_size=self.block_size,
            shard=self.shard,
            gather=gather,
            progress=self.show_progress_bar,
            multi_vector=self.similarity_name == "maxsim",
        )

    def encode(self, inputs: list) -> torch.Tensor:
        """fp32 ``[N, H]`` (cosine) or ``[N, K, H]`` (maxsim) embeddings of ``inputs``, whole (with
        ``shard``: each rank encodes its share of the blocks, then all are gathered)."""
        return self._encode(inputs, gather=True)

    def encode_shard(self, inputs: list) -> engine.EncodedShard | torch.Tensor:
        """With ``shard``, this rank's share of the embeddings of ``inputs``; else all of them."""
        return self._encode(inputs, gather=not self.shard)

    def check_inputs(self, inputs: list) -> list[tuple[int, str]]:
        """:func:`find_bad_inputs` of the model (shared across ranks with ``shard``)."""
        return find_bad_inputs(self.model, inputs, self.block_size, shard=self.shard)

    def similarity(self, queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """fp32 ``[nq, nc]`` scores (:func:`~btok_model.embedder.similarity.similarity_scores`)."""
        return similarity_scores(queries, candidates, self.similarity_name)


class TfidfTaskScorer:
    """TF-IDF cosine similarity, fitted on the task's own queries and candidates (no labels).

    Args:
        analyzer, ngram_range, sublinear_tf: see :class:`~btok_model.evaluation.tfidf.TfidfScorer`.
    """

    def __init__(self, analyzer: str = "char_wb", ngram_range: tuple[int, int] = (3, 5), sublinear_tf: bool = True):
        self.tfidf = TfidfScorer(analyzer, ngram_range, sublinear_tf)

    @staticmethod
    def _texts(inputs: list) -> list[str]:
        for i, item in enumerate(inputs):
            if not isinstance(item, str):
                raise ValueError(f"TF-IDF scores text only; input {i} is {item!r}")
        return inputs

    def fit(self, inputs: list) -> None:
        self.tfidf.fit(self._texts(inputs))

    def encode(self, inputs: list) -> torch.Tensor:
        """Sparse float64 ``[N, vocabulary]`` TF-IDF rows (every rank computes all of them)."""
        return self.tfidf.transform(self._texts(inputs))

    @staticmethod
    def similarity(queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        return TfidfScorer.similarity(queries, candidates)

    scoring = similarity


def find_bad_inputs(model, inputs: list, block_size: int = BLOCK_SIZE, *, shard: bool = False) -> list[tuple[int, str]]:
    """``[(row, reason)]`` of the inputs ``model`` refuses, in row order
    (:func:`~btok_model.embedder.encode.check_inputs`: an empty text, a text longer than the
    model accepts, media that do not decode), nothing embedded. With ``shard`` (under
    ``torchrun``) each rank checks its share of the row blocks and every rank gets the whole
    list (a collective)."""
    rank, world = distributed.rank_and_world() if shard else (0, 1)
    blocks = engine.row_blocks(len(inputs), block_size)
    found = []
    for b in engine.shard_blocks(len(blocks), rank, world):
        rows = blocks[b]
        for row, message in engine.check_inputs(model, inputs[rows.start : rows.stop], start=rows.start):
            found.append((row, message.removeprefix(f"text {row}: ")))
    parts = distributed.all_gather_objects(found) if shard else [found]
    return sorted(item for part in parts for item in part)


def _where(task: PairTask | CandidateListTask, side: str, row: int) -> str:
    names = task.query_where if side == "query" else task.candidate_where
    return names[row] if names else f"{task.name} {side} {row}"


def check_task(task: PairTask | CandidateListTask, scorer, on_bad_row: str = "error") -> PairTask | CandidateListTask:
    """The task with the inputs the scorer's model refuses named (``"error"``: a ``ValueError``
    naming the first one's file and line) or left out (``"skip"``: see
    :meth:`~btok_model.evaluation.task_files.PairTask.without`). Scorers without
    ``check_inputs`` (TF-IDF) refuse nothing here."""
    if on_bad_row not in ON_BAD_ROW:
        raise ValueError(f"on_bad_row must be one of {ON_BAD_ROW}, got {on_bad_row!r}")
    check = getattr(scorer, "check_inputs", None)
    if check is None:
        return task
    bad = {side: check(inputs) for side, inputs in (("query", task.queries), ("candidate", task.candidates))}
    reasons = [f"{_where(task, side, row)}: {reason}" for side in bad for row, reason in bad[side]]
    if not reasons:
        return task
    if on_bad_row == "error":
        extra = f" (and {len(reasons) - 1} more bad rows)" if len(reasons) > 1 else ""
        raise ValueError(f"{reasons[0]}{extra}; --on-bad-row skip leaves such rows out")
    return task.without({r for r, _ in bad["query"]}, {r for r, _ in bad["candidate"]}, reasons)


def evaluate(
    task: PairTask | CandidateListTask,
    scorer,
    block: int = 1024,
    *,
    per_query: bool = False,
    on_bad_row: str = "error",
    corpus_index=None,
) -> dict:
    """Evaluate one task: the retrieval metrics of ``scorer`` on ``task`` (one loaded evaluation
    file). ``python -m btok_model.evaluate`` (:mod:`btok_model.evaluate`, the command line) calls it
    (or :func:`evaluate_dims`) for each task it is given.

    Args:
        task: from :func:`~btok_model.evaluation.task_files.load_task`.
        scorer: :class:`EmbeddingScorer`, :class:`TfidfTaskScorer` or anything with
            ``fit(inputs)``, ``encode(inputs)`` and ``scoring`` (a similarity name of
            :mod:`~btok_model.embedder.similarity`, or ``(q, c) -> [nq, nc]``; without it,
            its ``similarity`` method).
        block: queries scored at once against a shared pool.
        per_query: also return every query's metrics (for paired comparisons of systems,
            :func:`~btok_model.evaluation.metrics.paired_bootstrap`).
        on_bad_row: ``"error"`` or ``"skip"`` (see the module docstring, :func:`check_task`).
        corpus_index: a :class:`~btok_model.inference.pools.PoolOptions`: the rows of that
            ``embed`` output join a pairs task's pool (an :class:`EmbeddingScorer` scoring by
            cosine, of the model that embedded them: ``ValueError`` otherwise).

    Returns:
        ``{"task", "layout", "num_queries", "num_candidates", <metrics>, "seconds"}`` with the
        metrics of :data:`~btok_model.evaluation.metrics.METRIC_NAMES` (expected values under
        random tie-breaking), and ``"hit@1"`` (= recall@1) for candidate lists; with
        ``per_query``, ``"per_query": {name: [value per query, in task order]}``; with
        ``on_bad_row="skip"``, ``"skipped_rows"`` (how many lines or inputs were left out,
        at loading and here) and ``"skipped"`` (their messages, the first 100); with
        ``corpus_index``, ``"corpus_index"``: :meth:`~btok_model.inference.pools.IndexPool.describe`
        (``"approximate": true`` with ANN).
    """
    start = time.perf_counter()
    task = check_task(task, scorer, on_bad_row)
    pool = _index_pool(task, scorer, corpus_index)
    queries, candidates = _embed(task, scorer, pool)
    result = _score(task, scorer, queries, candidates, block, per_query, pool)
    _add_skipped(result, task, on_bad_row)
    result["seconds"] = round(time.perf_counter() - start, 3)
    return result


def evaluate_dims(
    task: PairTask | CandidateListTask,
    scorer,
    dims: list[int | None],
    block: int = 1024,
    *,
    per_query: bool = False,
    on_bad_row: str = "error",
    corpus_index=None,
) -> list[dict]:
    """Retrieval metrics at several Matryoshka dimensions, from one embedding of the task.

    Every query and candidate is embedded once (full size); each dimension scores the
    truncated, re-normalised embeddings (:func:`~btok_model.embedder.similarity.truncate`;
    every vector of a multi-vector embedding alike).

    Args:
        task, scorer, block, per_query, on_bad_row, corpus_index: as for :func:`evaluate`
            (``scorer`` returns dense tensors: an :class:`EmbeddingScorer`; ``corpus_index``
            exact only: an ANN index holds the full-size vectors).
        dims: the dimensions, each an int in ``[1, H]`` or None (the full embedding).

    Returns:
        one result per dimension, in order: the keys of :func:`evaluate` plus ``"dims"`` (the
        int, or None for full), ``"seconds"`` the embedding time plus that dimension's scoring.
    """
    start = time.perf_counter()
    task = check_task(task, scorer, on_bad_row)
    if corpus_index is not None and corpus_index.ann and any(d is not None for d in dims):
        raise ValueError("Matryoshka dims and an ANN pool do not mix: the index searches full-size vectors")
    pool = _index_pool(task, scorer, corpus_index)
    queries, candidates = _embed(task, scorer, pool)
    encode_seconds = time.perf_counter() - start
    results = []
    for d in dims:
        start = time.perf_counter()
        q, c = (queries, candidates) if d is None else (truncate(queries, d), _truncate(candidates, d))
        result = {"dims": d, **_score(task, scorer, q, c, block, per_query, pool)}
        _add_skipped(result, task, on_bad_row)
        result["seconds"] = round(encode_seconds + time.perf_counter() - start, 3)
        results.append(result)
    return results


def _truncate(candidates, dims: int):
    if isinstance(candidates, engine.EncodedShard):
        return dataclasses.replace(candidates, embeddings=truncate(candidates.embeddings, dims))
    return truncate(candidates, dims)


def _add_skipped(result: dict, task: PairTask | CandidateListTask, on_bad_row: str) -> None:
    if on_bad_row == "skip":
        result["skipped_rows"] = len(task.skipped)
        result["skipped"] = task.skipped[:100]


def _index_pool(task, scorer, options):
    """The :class:`~btok_model.inference.pools.IndexPool` of ``options`` after the task's
    candidates (None without), its model checked against the output's."""
    if options is None:
        return None
    from ..inference.pools import IndexPool, open_pool_index

    if not isinstance(task, PairTask):  # the user's file: a ValueError, reported in one line
        message = f"{task.name}: a corpus index extends the pool of query/positive pairs, not candidate lists"
        raise ValueError(message)
    if not isinstance(scorer, EmbeddingScorer) or scorer.similarity_name != "cosine":
        raise ValueError("a corpus index holds one vector per row: score it with an embedder by cosine")
    options.check(10 if options.ann else 1)  # ranks beyond 10 score 0: fewer hits would cut the counts
    index = open_pool_index(options)
    index.check_embedder(scorer.model)
    return IndexPool(index, options, {input_key(c): i for i, c in enumerate(task.candidates)})


def _embed(task: PairTask | CandidateListTask, scorer, pool=None):
    """The scorer fitted on the task, every query's embedding (on every rank) and the distinct
    candidates' (this rank's shard where the scorer shards); with an exact ``pool``, the whole
    pool's (the task's candidates embedded, the output's rows read)."""
    scorer.fit(list(task.queries) + list(task.candidates))
    encode_shard = getattr(scorer, "encode_shard", None)
    if pool is not None and not pool.options.ann:
        shard = pool.shard(
            lambda lo, hi: engine.encode(
                scorer.model,
                task.candidates[lo:hi],
                batch_size=scorer.batch_size,
                block_size=scorer.block_size,
                progress=scorer.show_progress_bar,
            ),
            scorer.block_size,
            shard=scorer.shard,
        )
        candidates = shard if scorer.shard else shard.embeddings
    else:
        candidates = encode_shard(task.candidates) if encode_shard else scorer.encode(task.candidates)
    return scorer.encode(task.queries), candidates


def _score(
    task: PairTask | CandidateListTask,
    scorer,
    queries: torch.Tensor,
    candidates,
    block: int,
    per_query: bool,
    pool=None,
) -> dict:
    """The metrics of :func:`evaluate` from the task's embeddings (no ``"seconds"``); with an
    ANN ``pool`` the index's hits that beat or tie the positive are added to its counts."""
    if isinstance(task, PairTask):
        relevant, lists, layout = task.positive_index[:, None], None, "pairs"
    else:
        relevant = torch.stack([members[label] for members, label in zip(task.lists, task.labels.tolist())])[:, None]
        lists, layout = [members.tolist() for members in task.lists], "candidate_lists"
    counts = count_ranks(
        queries,
        candidates,
        relevant,
        lists=lists,
        similarity=getattr(scorer, "scoring", scorer.similarity),
        query_block=block,
        device=getattr(scorer, "device", None) if not queries.is_sparse else None,
    )
    greater, equal = counts.greater[:, 0], counts.equal[:, 0]
    if pool is not None and pool.options.ann:
        hits = pool.ann(queries, shard=getattr(scorer, "shard", False)).values
        greater = greater + (hits > counts.targets).sum(1)
        equal = equal + (hits == counts.targets).sum(1)
    per_query_values = expected_metrics(greater, equal - 1)  # the positive ties with itself
    result = {
        "task": task.name,
        "layout": layout,
        "num_queries": len(task.queries),
        "num_candidates": len(task.candidates) if pool is None else pool.num_rows,
    }
    if pool is not None:
        result["corpus_index"] = pool.describe()
    result.update({name: float(per_query_values[name].mean()) for name in METRIC_NAMES})
    if layout == "candidate_lists":
        result["hit@1"] = result["recall@1"]
    if per_query:
        result["per_query"] = {name: values.tolist() for name, values in per_query_values.items()}
    return result
