"""A small exact TF-IDF scorer (the lexical baseline of the demo table); no scikit-learn.

Features are words (``analyzer="word"``: lower-cased ``\\w+`` runs, n-grams of them) or
character n-grams inside word boundaries (``analyzer="char_wb"``: each word padded with a
space on both sides, as scikit-learn's analyzer of that name does). Weights follow
scikit-learn's ``TfidfVectorizer`` defaults: raw counts (or ``1 + ln(count)`` with
``sublinear_tf``) times the smoothed ``idf = ln((1 + n) / (1 + df)) + 1``, rows L2-normalised,
so the dot product is the cosine similarity.
"""

from __future__ import annotations

import math
import re
import warnings
from collections import Counter

import torch

__all__ = ["TfidfScorer"]

_WORD = re.compile(r"\w+")


class TfidfScorer:
    """TF-IDF vectors fitted on a list of texts, scored by cosine similarity.

    Args:
        analyzer: ``"word"`` or ``"char_wb"``.
        ngram_range: ``(min_n, max_n)`` inclusive, in words or characters.
        sublinear_tf: use ``1 + ln(count)`` instead of the raw count.
    """

    def __init__(self, analyzer: str = "char_wb", ngram_range: tuple[int, int] = (3, 5), sublinear_tf: bool = True):
        if analyzer not in ("word", "char_wb"):
            raise ValueError(f'analyzer must be "word" or "char_wb", got {analyzer!r}')
        lo, hi = ngram_range
        if not 1 <= lo <= hi:
            raise ValueError(f"ngram_range must satisfy 1 <= min_n <= max_n, got {ngram_range}")
        self.analyzer, self.ngram_range, self.sublinear_tf = analyzer, (lo, hi), sublinear_tf
        self.vocabulary: dict[str, int] = {}
        self.idf: torch.Tensor | None = None

    def features(self, text: str) -> list[str]:
        """The features (with repeats) of one text."""
        words = _WORD.findall(text.lower())
        lo, hi = self.ngram_range
        if self.analyzer == "word":
            return [" ".join(words[i : i + n]) for n in range(lo, hi + 1) for i in range(len(words) - n + 1)]
        out = []
        for word in words:
            padded = f" {word} "
            if len(padded) < lo:
                out.append(padded)
                continue
            out.extend(padded[i : i + n] for n in range(lo, hi + 1) for i in range(len(padded) - n + 1))
        return out

    def fit(self, texts: list[str]) -> TfidfScorer:
        """Learn the vocabulary and the IDF weights from ``texts``."""
        if not texts:
            raise ValueError("fit needs at least one text")
        document_frequency: Counter = Counter()
        for text in texts:
            document_frequency.update(set(self.features(text)))
        self.vocabulary = {f: i for i, f in enumerate(sorted(document_frequency))}
        df = torch.tensor([document_frequency[f] for f in self.vocabulary], dtype=torch.float64)
        self.idf = torch.log((1.0 + len(texts)) / (1.0 + df)) + 1.0
        return self

    def transform(self, texts: list[str]) -> torch.Tensor:
        """Sparse COO float64 ``[len(texts), vocabulary size]``, rows L2-normalised (empty rows stay 0)."""
        if self.idf is None:
            raise RuntimeError("call fit() before transform()")
        rows, cols, values = [], [], []
        for r, text in enumerate(texts):
            counts = Counter(f for f in self.features(text) if f in self.vocabulary)
            for feature, count in counts.items():
                rows.append(r)
                cols.append(self.vocabulary[feature])
                values.append(1.0 + math.log(count) if self.sublinear_tf else float(count))
        cols_t = torch.tensor(cols, dtype=torch.long)
        values_t = torch.tensor(values, dtype=torch.float64) * self.idf[cols_t]
        rows_t = torch.tensor(rows, dtype=torch.long)
        norms = torch.zeros(len(texts), dtype=torch.float64).index_add_(0, rows_t, values_t**2).sqrt()
        values_t = values_t / norms[rows_t]
        indices = torch.stack([rows_t, cols_t]) if rows else torch.zeros(2, 0, dtype=torch.long)
        shape = (len(texts), len(self.vocabulary))
        return torch.sparse_coo_tensor(indices, values_t, shape, check_invariants=True).coalesce()

    @staticmethod
    def similarity(queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Dense float32 ``[nq, nc]`` dot products of rows of two :meth:`transform` outputs."""
        with warnings.catch_warnings():  # torch.sparse.mm goes through CSR internally and says it is beta
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            return torch.sparse.mm(queries, candidates.t().coalesce()).to_dense().float()

    def scores(self, queries: list[str], candidates: list[str], block: int = 1024) -> torch.Tensor:
        """Cosine similarities float32 ``[len(queries), len(candidates)]`` (call :meth:`fit` first)."""
        candidate_vectors = self.transform(candidates)
        out = [
            self.similarity(self.transform(queries[lo : lo + block]), candidate_vectors)
            for lo in range(0, len(queries), block)
        ]
        return torch.cat(out) if out else torch.zeros(0, len(candidates))
