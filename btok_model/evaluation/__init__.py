"""Retrieval evaluation: metrics, evaluation files, the TF-IDF baseline, the scorers (the no-BTok
baseline embedder is :class:`btok_model.embedder.pooled.PooledEmbedder`)."""

from .metrics import METRIC_NAMES, expected_metrics, metrics_from_scores, paired_bootstrap, rank_counts
from .scorers import EmbeddingScorer, TfidfTaskScorer, evaluate, evaluate_dims
from .task_files import CandidateListTask, PairTask, load_corpus, load_task
from .tfidf import TfidfScorer

__all__ = [
    "METRIC_NAMES",
    "CandidateListTask",
    "EmbeddingScorer",
    "PairTask",
    "TfidfScorer",
    "TfidfTaskScorer",
    "evaluate",
    "evaluate_dims",
    "expected_metrics",
    "load_corpus",
    "load_task",
    "metrics_from_scores",
    "paired_bootstrap",
    "rank_counts",
]
