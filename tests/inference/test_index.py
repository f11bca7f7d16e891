"""Index: exact search equals brute-force top-k (across chunk edges, cosine and MaxSim); ANN
recall@10 against exact on a few thousand clustered vectors; the output opens in LanceDB."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from btok_model.inference.index import Index, build_index, default_index_parameters
from btok_model.inference.lance_store import EmbeddingStore, output_schema
from btok_model.inference.readers import Row

lance = pytest.importorskip("lance")

H, K = 32, 3
# ANN recall@10 against exact top-k with the default search (nprobes 20, refine_factor 10).
# Measured on this data: IVF_PQ 0.99-1.0, IVF_HNSW_SQ 1.0 (2026-12-07). The bound leaves room
# for Lance's unseeded PQ / HNSW training.
RECALL_BOUND = 0.9


def _clustered(n: int, seed: int, dim: int = H) -> torch.Tensor:
    """fp32 [n, dim] unit vectors around 40 random centres."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(40, dim, generator=g)
    x = centres[torch.randint(0, 40, (n,), generator=g)] + 0.5 * torch.randn(n, dim, generator=g)
    return torch.nn.functional.normalize(x, dim=-1)


def _store(path, vectors: torch.Tensor, multi: torch.Tensor | None = None, block: int = 1000) -> str:
    path = str(path)
    k = None if multi is None else multi.shape[1]
    schema = output_schema(vectors.shape[1], "float32", k, [], {"format": 1, "settings": {"weights": "w"}})
    store = EmbeddingStore.open(path, schema, block_size=block, dtype="float32")
    n = vectors.shape[0]
    for b, lo in enumerate(range(0, n, block)):
        hi = min(lo + block, n)
        rows = [Row(i, f"r{i}", None) for i in range(lo, hi)]
        store.write_block(b, rows, vectors[lo:hi].numpy(), None if multi is None else multi[lo:hi].numpy())
    store.finish((n + block - 1) // block)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    vectors = _clustered(4000, seed=0)
    g = torch.Generator().manual_seed(5)
    queries = torch.nn.functional.normalize(vectors[:64] + 0.3 * torch.randn(64, H, generator=g), dim=-1)
    return _store(tmp_path_factory.mktemp("idx") / "c.lance", vectors), vectors, queries


@pytest.mark.parametrize("chunk_rows", [4000, 999], ids=["one-chunk", "chunks-of-999"])
def test_exact_equals_brute_force(corpus, chunk_rows):
    path, vectors, queries = corpus
    hits = Index(path).search(queries, 10, exact=True, chunk_rows=chunk_rows)
    scores = queries.double() @ vectors.double().T
    best = scores.topk(10, dim=1)
    assert not hits.approximate and hits.method == "exact"
    assert torch.equal(hits.rows, best.indices)  # the stored row numbers are the positions here
    assert hits.ids[3] == [f"r{i}" for i in best.indices[3].tolist()]
    torch.testing.assert_close(hits.scores.double(), best.values, atol=1e-6, rtol=0)


def test_k_above_the_rows_pads(tmp_path):
    vectors = _clustered(5, seed=1)
    hits = Index(_store(tmp_path / "s.lance", vectors)).search(vectors[:2], 8, exact=True)
    assert hits.rows[0, 5:].tolist() == [-1, -1, -1] and len(hits.ids[0]) == 5
    assert hits.rows[0, 0] == 0 and torch.isinf(hits.scores[0, 5:]).all()


@pytest.mark.parametrize("index_type", ["IVF_PQ", "IVF_HNSW_SQ"])
def test_ann_recall_against_exact(corpus, tmp_path, index_type):
    _, vectors, queries = corpus
    path = _store(tmp_path / "ann.lance", vectors)
    params = build_index(path, index_type=index_type)
    assert params["num_partitions"] == default_index_parameters(4000, H, index_type)["num_partitions"]
    index = Index(path)
    assert index.index_type == index_type
    exact = index.search(queries, 10, exact=True)
    ann = index.search(queries, 10, columns=("row",))
    assert ann.approximate and ann.method == index_type
    assert [c["row"] for c in ann.columns[0]] == ann.rows[0].tolist()
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(ann.rows.tolist(), exact.rows.tolist())])
    assert recall >= RECALL_BOUND, f"{index_type} recall@10 {recall:.3f} < {RECALL_BOUND}"
    # the re-ranked scores are the stored vectors' cosines, for every hit (an ANN index may miss a
    # query's true nearest row -- its recall is bounded above -- but a row it returns is scored exactly)
    cosines = torch.einsum("qh,qkh->qk", torch.nn.functional.normalize(queries, dim=-1), vectors[ann.rows])
    torch.testing.assert_close(ann.scores, cosines, atol=1e-5, rtol=0)
    assert not torch.allclose(ann.scores, cosines.roll(1, dims=0), atol=1e-3)  # the check sees wrong rows
    assert Index(path).summary["index"]["index_type"] == index_type


def test_maxsim_exact_equals_brute_force(tmp_path):
    g = torch.Generator().manual_seed(3)
    multi = torch.nn.functional.normalize(torch.randn(300, K, H, generator=g), dim=-1)
    pooled = torch.nn.functional.normalize(multi.mean(1), dim=-1)
    path = _store(tmp_path / "m.lance", pooled, multi, block=128)
    queries = torch.nn.functional.normalize(torch.randn(7, K, H, generator=g), dim=-1)
    hits = Index(path).search(queries, 5, similarity="maxsim", chunk_rows=100)
    scores = torch.einsum("qah,cbh->qcab", queries.double(), multi.double()).amax(-1).sum(-1)
    best = scores.topk(5, dim=1)
    assert torch.equal(hits.rows, best.indices)
    torch.testing.assert_close(hits.scores.double(), best.values, atol=1e-5, rtol=0)


def test_bad_queries_and_small_corpus_are_refused(corpus, tmp_path):
    path, vectors, queries = corpus
    index = Index(path)
    with pytest.raises(ValueError, match=r"queries must be \[Q, H\] with H = 32"):
        index.search(queries[:, :16], 3)
    with pytest.raises(ValueError, match="embed it with --multi-vector"):
        index.search(queries[:, None], 3, similarity="maxsim")
    with pytest.raises(ValueError, match="too few for an ANN index"):
        build_index(_store(tmp_path / "tiny.lance", vectors[:100]))


def test_opens_as_a_lancedb_table(corpus):
    lancedb = pytest.importorskip("lancedb")
    path, _, queries = corpus
    import os

    db = lancedb.connect(os.path.dirname(path))
    table = db.open_table(os.path.basename(path).removesuffix(".lance"))
    assert table.count_rows() == 4000
    hits = table.search(queries[0].numpy()).metric("cosine").limit(3).to_list()
    exact = Index(path).search(queries[:1], 3, exact=True)
    assert [h["id"] for h in hits] == exact.ids[0]
