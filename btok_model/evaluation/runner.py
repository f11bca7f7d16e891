"""Score an evaluation task with an embedder or TF-IDF and report retrieval metrics.

A scorer turns inputs into vectors (``encode``) and vectors into similarities
(``similarity``); :func:`evaluate` embeds every query and every distinct candidate once,
then scores queries in blocks against the pool (pairs) or each query against its own list
(candidate lists), counting only how many candidates beat or tie the relevant one, so the
full score matrix never has to exist. :func:`evaluate_dims` embeds once and scores the
Matryoshka truncations of the same embeddings, one metrics block per dimension.
"""

from __future__ import annotations

import time

import torch

from ..embedder.similarity import SIMILARITIES, similarity_scores, truncate
from .metrics import METRIC_NAMES, expected_metrics, rank_counts
from .task_files import CandidateListTask, PairTask
from .tfidf import TfidfScorer

__all__ = ["EmbeddingScorer", "TfidfTaskScorer", "evaluate", "evaluate_dims"]


class EmbeddingScorer:
    """Cosine similarity of L2-normalised embeddings from ``model.encode``, or MaxSim of a BTok
    model's K vectors (``encode(..., multi_vector=True)``).

    Args:
        model: anything with ``encode(inputs, batch_size=, show_progress_bar=)`` returning
            float32 ``[N, H]`` L2-normalised rows (:class:`~btok_model.BTokModel`,
            :class:`~btok_model.embedder.pooled.PooledEmbedder`); for ``"maxsim"`` also
            ``encode(..., multi_vector=True)`` returning ``[N, K, H]``.
        batch_size: inputs per forward pass.
        show_progress_bar: a tqdm bar per encode call.
        similarity: ``"cosine"`` or ``"maxsim"``; None: the model's ``config.similarity``
            (``"cosine"`` for a model without one).
    """

    def __init__(self, model, batch_size: int = 32, show_progress_bar: bool = False, similarity: str | None = None):
        if similarity is None:
            similarity = getattr(getattr(model, "config", None), "similarity", "cosine")
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
        self.model, self.batch_size, self.show_progress_bar = model, batch_size, show_progress_bar
        self.similarity_name = similarity

    def fit(self, inputs: list) -> None:
        """Embedders need no fitting."""

    def encode(self, inputs: list) -> torch.Tensor:
        """fp32 ``[N, H]`` (cosine) or ``[N, K, H]`` (maxsim) embeddings of ``inputs``."""
        kwargs = {"multi_vector": True} if self.similarity_name == "maxsim" else {}
        emb = self.model.encode(inputs, batch_size=self.batch_size, show_progress_bar=self.show_progress_bar, **kwargs)
        return torch.as_tensor(emb, dtype=torch.float32)

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
        return self.tfidf.transform(self._texts(inputs))

    @staticmethod
    def similarity(queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        return TfidfScorer.similarity(queries, candidates)


def evaluate(task: PairTask | CandidateListTask, scorer, block: int = 1024, *, per_query: bool = False) -> dict:
    """Retrieval metrics of ``scorer`` on ``task``.

    Args:
        task: from :func:`~btok_model.evaluation.task_files.load_task`.
        scorer: :class:`EmbeddingScorer`, :class:`TfidfTaskScorer` or anything with
            ``fit(inputs)``, ``encode(inputs)`` and ``similarity(q, c) -> [nq, nc]``.
        block: queries scored at once against a shared pool.
        per_query: also return every query's metrics (for paired comparisons of systems,
            :func:`~btok_model.evaluation.metrics.paired_bootstrap`).

    Returns:
        ``{"task", "layout", "num_queries", "num_candidates", <metrics>, "seconds"}`` with the
        metrics of :data:`~btok_model.evaluation.metrics.METRIC_NAMES` (expected values under
        random tie-breaking), and ``"hit@1"`` (= recall@1) for candidate lists; with
        ``per_query``, ``"per_query": {name: [value per query, in task order]}``.
    """
    start = time.perf_counter()
    queries, candidates = _embed(task, scorer)
    result = _score(task, scorer, queries, candidates, block, per_query)
    result["seconds"] = round(time.perf_counter() - start, 3)
    return result


def evaluate_dims(
    task: PairTask | CandidateListTask, scorer, dims: list[int | None], block: int = 1024, *, per_query: bool = False
) -> list[dict]:
    """Retrieval metrics at several Matryoshka dimensions, from one embedding of the task.

    Every query and candidate is embedded once (full size); each dimension scores the
    truncated, re-normalised embeddings (:func:`~btok_model.embedder.similarity.truncate`;
    every vector of a multi-vector embedding alike).

    Args:
        task, scorer, block, per_query: as for :func:`evaluate` (``scorer`` returns dense
            tensors: an :class:`EmbeddingScorer`).
        dims: the dimensions, each an int in ``[1, H]`` or None (the full embedding).

    Returns:
        one result per dimension, in order: the keys of :func:`evaluate` plus ``"dims"`` (the
        int, or None for full), ``"seconds"`` the embedding time plus that dimension's scoring.
    """
    start = time.perf_counter()
    queries, candidates = _embed(task, scorer)
    encode_seconds = time.perf_counter() - start
    results = []
    for d in dims:
        start = time.perf_counter()
        q, c = (queries, candidates) if d is None else (truncate(queries, d), truncate(candidates, d))
        result = {"dims": d, **_score(task, scorer, q, c, block, per_query)}
        result["seconds"] = round(encode_seconds + time.perf_counter() - start, 3)
        results.append(result)
    return results


def _embed(task: PairTask | CandidateListTask, scorer) -> tuple[torch.Tensor, torch.Tensor]:
    """The scorer fitted on the task, and every query's and distinct candidate's embedding."""
    scorer.fit(list(task.queries) + list(task.candidates))
    return scorer.encode(task.queries), scorer.encode(task.candidates)


def _score(
    task: PairTask | CandidateListTask,
    scorer,
    queries: torch.Tensor,
    candidates: torch.Tensor,
    block: int,
    per_query: bool,
) -> dict:
    """The metrics of :func:`evaluate` from the task's embeddings (no ``"seconds"``)."""
    greater, equal = [], []
    if isinstance(task, PairTask):
        for lo in range(0, len(task.queries), block):
            rows = torch.arange(lo, min(lo + block, len(task.queries)))
            scores = scorer.similarity(queries.index_select(0, rows), candidates)
            g, e = rank_counts(scores, task.positive_index[rows])
            greater.append(g)
            equal.append(e)
        layout = "pairs"
    else:
        for i, members in enumerate(task.lists):
            scores = scorer.similarity(queries.index_select(0, torch.tensor([i])), candidates.index_select(0, members))
            g, e = rank_counts(scores, task.labels[i : i + 1])
            greater.append(g)
            equal.append(e)
        layout = "candidate_lists"
    per_query_values = expected_metrics(torch.cat(greater), torch.cat(equal))
    result = {
        "task": task.name,
        "layout": layout,
        "num_queries": len(task.queries),
        "num_candidates": len(task.candidates),
    }
    result.update({name: float(per_query_values[name].mean()) for name in METRIC_NAMES})
    if layout == "candidate_lists":
        result["hit@1"] = result["recall@1"]
    if per_query:
        result["per_query"] = {name: values.tolist() for name, values in per_query_values.items()}
    return result
