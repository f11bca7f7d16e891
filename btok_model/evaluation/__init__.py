"""Retrieval evaluation: metrics, evaluation files, TF-IDF and no-BTok baselines, the runner."""

from .data import CandidateListTask, PairTask, load_corpus, load_task
from .metrics import METRIC_NAMES, expected_metrics, metrics_from_scores, paired_bootstrap, rank_counts
from .runner import EmbeddingScorer, TfidfTaskScorer, evaluate
from .tfidf import TfidfScorer
from .topk import RunningTopK

__all__ = [
    "METRIC_NAMES",
    "CandidateListTask",
    "EmbeddingScorer",
    "PairTask",
    "RunningTopK",
    "TfidfScorer",
    "TfidfTaskScorer",
    "evaluate",
    "expected_metrics",
    "load_corpus",
    "load_task",
    "metrics_from_scores",
    "paired_bootstrap",
    "rank_counts",
]
