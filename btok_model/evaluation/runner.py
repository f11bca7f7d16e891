"""Score an evaluation task with an embedder or TF-IDF and report retrieval metrics.

A scorer turns inputs into vectors (``encode``) and vectors into similarities
(``similarity``); :func:`evaluate` embeds every query and every distinct candidate once,
then scores queries in blocks against the pool (pairs) or each query against its own list
(candidate lists), counting only how many candidates beat or tie the relevant one, so the
full score matrix never has to exist.
"""

from __future__ import annotations

import time

import torch

from .metrics import METRIC_NAMES, expected_metrics, rank_counts
from .task_files import CandidateListTask, PairTask
from .tfidf import TfidfScorer

__all__ = ["EmbeddingScorer", "TfidfTaskScorer", "evaluate"]


class EmbeddingScorer:
    """Cosine similarity of L2-normalised embeddings from ``model.encode``.

    Args:
        model: anything with ``encode(inputs, batch_size=, show_progress_bar=)`` returning
            float32 ``[N, H]`` L2-normalised rows (:class:`~btok_model.BTokModel`,
            :class:`~btok_model.embedder.pooled.PooledEmbedder`).
        batch_size: inputs per forward pass.
        show_progress_bar: a tqdm bar per encode call.
    """

    def __init__(self, model, batch_size: int = 32, show_progress_bar: bool = False):
        self.model, self.batch_size, self.show_progress_bar = model, batch_size, show_progress_bar

    def fit(self, inputs: list) -> None:
        """Embedders need no fitting."""

    def encode(self, inputs: list) -> torch.Tensor:
        emb = self.model.encode(inputs, batch_size=self.batch_size, show_progress_bar=self.show_progress_bar)
        return torch.as_tensor(emb, dtype=torch.float32)

    @staticmethod
    def similarity(queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        return queries @ candidates.T


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
    scorer.fit(list(task.queries) + list(task.candidates))
    queries = scorer.encode(task.queries)
    candidates = scorer.encode(task.candidates)
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
    result["seconds"] = round(time.perf_counter() - start, 3)
    return result
