"""TF-IDF against a float64 formula written out with plain loops."""

import math
from collections import Counter

import pytest
import torch

from btok_model.evaluation.tfidf import TfidfScorer

DOCS = ["the cat sat on the mat", "a dog and a cat", "dogs bark", "the sun", "zzz"]
QUERIES = ["a cat on a mat", "the dog", "nothing in common qqq"]


def _reference(scorer: TfidfScorer, fit_texts, queries, candidates) -> torch.Tensor:
    df = Counter(f for t in fit_texts for f in set(scorer.features(t)))
    n = len(fit_texts)

    def vector(text):
        counts = Counter(f for f in scorer.features(text) if f in df)
        v = {
            f: (1 + math.log(c) if scorer.sublinear_tf else c) * (math.log((1 + n) / (1 + df[f])) + 1)
            for f, c in counts.items()
        }
        norm = math.sqrt(sum(x * x for x in v.values()))
        return {f: x / norm for f, x in v.items()} if norm else {}

    qv, cv = [vector(q) for q in queries], [vector(c) for c in candidates]
    return torch.tensor([[sum(a.get(f, 0.0) * x for f, x in b.items()) for b in cv] for a in qv], dtype=torch.float64)


@pytest.mark.parametrize(
    "analyzer, ngrams, sublinear",
    [("word", (1, 1), False), ("word", (1, 2), True), ("char_wb", (3, 5), True), ("char_wb", (2, 3), False)],
)
def test_matches_formula(analyzer, ngrams, sublinear):
    scorer = TfidfScorer(analyzer, ngrams, sublinear).fit(DOCS + QUERIES)
    got = scorer.scores(QUERIES, DOCS, block=2)
    want = _reference(scorer, DOCS + QUERIES, QUERIES, DOCS)
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-7)


def test_features_and_identity():
    scorer = TfidfScorer("char_wb", (3, 4))
    assert scorer.features("Ab c") == [" ab", "ab ", " ab ", " c "]
    scorer.fit(DOCS)
    assert torch.diagonal(scorer.scores(DOCS, DOCS)).tolist() == pytest.approx([1.0] * len(DOCS))


def test_bad_settings():
    with pytest.raises(ValueError, match="analyzer"):
        TfidfScorer("chars")
    with pytest.raises(ValueError, match="ngram_range"):
        TfidfScorer("word", (2, 1))
    with pytest.raises(RuntimeError, match="fit"):
        TfidfScorer().transform(["x"])
