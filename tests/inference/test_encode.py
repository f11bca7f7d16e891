"""The encode engine: blocks and shards give the same bytes, input order, any embedder
(BTok, pooled, K vectors, Matryoshka dims, another encoder), rows named in errors, the progress
bar; and the old per-caller encode wrappers and scoring loops are gone."""

import importlib

import pytest
import torch

import btok_model.embedder.encode as engine
from btok_model.embedder import ExampleError
from btok_model.embedder.pooled import PooledEmbedder
from btok_model.embedder.similarity import truncate
from tests.helpers.tiny import char_tokenizer, tiny_backbone, tiny_btok

TEXTS = [("w" * (i % 9)) + f" text {i}" for i in range(23)] + ["same", "same"]


@pytest.fixture(scope="module")
def model():
    return tiny_btok()


def test_one_block_is_embedder_encode(model):
    whole = engine.encode(model, TEXTS, batch_size=4)
    assert torch.equal(whole, model.encode(TEXTS, batch_size=4))
    assert whole.shape == (25, 64) and whole.dtype == torch.float32
    torch.testing.assert_close(whole.norm(dim=-1), torch.ones(25))
    assert torch.equal(whole[23], whole[24])  # identical texts embedded once
    # one forward per input: the same embeddings to float rounding, whatever the batches
    single = torch.cat([model.encode([t]) for t in TEXTS[:6]])
    torch.testing.assert_close(whole[:6], single, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("block_size, world, n", [(1, 2, 5), (4, 5, 13), (7, 3, 25)], ids=lambda v: str(v))
def test_shards_concatenate_to_the_blocks_bytes(model, block_size, world, n):
    texts = TEXTS[-n:]
    blocked = engine.encode(model, texts, batch_size=3, block_size=block_size)
    shards = [
        engine.encode(model, texts, batch_size=3, block_size=block_size, shard=(r, world), gather=False)
        for r in range(world)
    ]
    assert [s.start for s in shards[1:]] == [s.stop for s in shards[:-1]]  # contiguous, in rank order
    assert shards[0].start == 0 and shards[-1].stop == n and all(s.num_rows == n for s in shards)
    assert all(s.start % block_size == 0 or s.start == n for s in shards)  # whole blocks
    assert torch.equal(torch.cat([s.embeddings for s in shards]), blocked)
    torch.testing.assert_close(blocked, engine.encode(model, texts, batch_size=3), rtol=1e-5, atol=1e-6)


def test_shard_blocks_split_evenly():
    runs = [engine.shard_blocks(10, r, 4) for r in range(4)]
    assert [len(r) for r in runs] == [2, 3, 2, 3] and [r.start for r in runs] == [0, 2, 5, 7]
    assert [len(engine.shard_blocks(1, r, 3)) for r in range(3)] == [0, 0, 1]
    assert engine.row_blocks(5, 2) == [range(2), range(2, 4), range(4, 5)] and engine.row_blocks(0, 3) == []
    with pytest.raises(ValueError, match="rank must lie"):
        engine.shard_blocks(3, 2, 2)
    with pytest.raises(ValueError, match="block_size must be an int >= 1"):
        engine.row_blocks(3, 0)


def test_multi_vector_and_dims(model):
    full = engine.encode(model, TEXTS, multi_vector=True, block_size=6)
    assert full.shape == (25, 4, 64)
    torch.testing.assert_close(full.norm(dim=-1), torch.ones(25, 4))
    small = engine.encode(model, TEXTS, multi_vector=True, dims=16, block_size=6)
    torch.testing.assert_close(small, truncate(full, 16), rtol=1e-5, atol=1e-6)
    pooled = engine.encode(model, TEXTS, dims=8)
    torch.testing.assert_close(pooled, truncate(model.encode(TEXTS), 8), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "padded"])
@pytest.mark.parametrize("dims", [None, 16], ids=["full", "dims16"])
def test_btok_vectors_from_the_same_forward_are_a_second_calls(model, packed, dims, monkeypatch):
    # embed --multi-vector stores both from one forward per batch: bitwise what two calls give
    pooled = engine.encode_block(model, TEXTS, batch_size=4, packed=packed, dims=dims)
    vectors = engine.encode_block(model, TEXTS, batch_size=4, packed=packed, dims=dims, multi_vector=True)
    forwards = []
    states = engine._packed_states if packed else engine._padded_states
    monkeypatch.setattr(engine, states.__name__, lambda *a: forwards.append(1) or states(*a))
    both = engine.encode_block(model, TEXTS, batch_size=4, packed=packed, dims=dims, with_btok_vectors=True)
    assert len(forwards) == 6  # 24 distinct texts in batches of 4: one forward each, not two
    assert torch.equal(both[0], pooled) and torch.equal(both[1], vectors)
    assert both[1].shape == (25, 4, dims or 64)
    empty = engine.encode_block(model, [], dims=dims, with_btok_vectors=True)
    assert empty[0].shape == (0, dims or 64) and empty[1].shape == (0, 4, dims or 64)


def test_btok_vectors_need_a_btok_model(model):
    pooled = PooledEmbedder.from_backbone(tiny_backbone(), char_tokenizer(), "mean", attn_implementation="btok_triton")
    with pytest.raises(ValueError, match="has no BToks"):
        engine.encode_block(pooled, TEXTS, with_btok_vectors=True)
    with pytest.raises(ValueError, match="multi_vector=False"):
        engine.encode_block(model, TEXTS, with_btok_vectors=True, multi_vector=True)


def test_pooled_embedder():
    pooled = PooledEmbedder.from_backbone(tiny_backbone(), char_tokenizer(), "mean", attn_implementation="btok_triton")
    out = engine.encode(pooled, TEXTS, block_size=5, shard=(1, 2), gather=False)
    whole = engine.encode(pooled, TEXTS, block_size=5)
    assert torch.equal(out.embeddings, whole[out.start : out.stop])
    with pytest.raises(ValueError, match="has no BToks"):
        engine.encode(pooled, TEXTS, multi_vector=True)


class _Lookup:
    """Another encoder (not an Embedder): the engine blocks it and calls its encode per block."""

    def __init__(self):
        self.calls = []

    def encode(self, inputs, batch_size=32, show_progress_bar=False):
        self.calls.append(list(inputs))
        return torch.tensor([[float(len(t)), 1.0] for t in inputs])


def test_another_encoder_is_blocked_and_sharded():
    encoder = _Lookup()
    shard = engine.encode(encoder, TEXTS, block_size=4, shard=(1, 3), gather=False)
    assert encoder.calls == [TEXTS[8:12], TEXTS[12:16]] and (shard.start, shard.stop) == (8, 16)
    assert shard.embeddings[:, 0].tolist() == [float(len(t)) for t in TEXTS[8:16]]
    with pytest.raises(ValueError, match="poolings and dims need an Embedder"):
        engine.encode(encoder, TEXTS, dims=1)


def test_iter_encoded_blocks_gives_the_blocks_asked_for(model):
    whole = engine.encode(model, TEXTS, block_size=6)
    seen = [(b, rows, emb) for b, rows, emb in engine.iter_encoded_blocks(model, TEXTS, [4, 1], block_size=6)]
    assert [(b, rows) for b, rows, _ in seen] == [(4, range(24, 25)), (1, range(6, 12))]
    assert torch.equal(seen[0][2], whole[24:25]) and torch.equal(seen[1][2], whole[6:12])
    with pytest.raises(ValueError, match="block id 5 is out of range: 25 rows make 5 blocks of 6"):
        list(engine.iter_encoded_blocks(model, TEXTS, [5], block_size=6))


def test_bad_rows_are_named_by_their_row(model):
    texts = ["fine"] * 9 + [""] + ["ok", "x" * 300]
    with pytest.raises(ExampleError, match="text 9: empty text"):
        engine.encode(model, texts, block_size=4)
    with pytest.raises(ExampleError, match="text 9: empty text"):
        engine.encode(model, texts, block_size=4, shard=(1, 2), gather=False)  # the block holding row 9
    bad = engine.check_inputs(model, texts)
    assert [row for row, _ in bad] == [9, 11]
    assert bad[0][1] == "text 9: empty text" and "text 11: " in bad[1][1] and "longer than" in bad[1][1]
    assert engine.check_inputs(model, texts[2:], start=2) == bad
    assert engine.check_inputs(model, ["fine", "ok"]) == []


def test_progress_bar_counts_rows(model, capsys):
    engine.encode(model, TEXTS, batch_size=4, progress=True, desc="Encoding")
    err = capsys.readouterr().err
    assert "Encoding" in err and "25/25" in err and "row/s" in err
    model.encode(TEXTS)  # off by default in library calls
    assert capsys.readouterr().err == ""


def test_evaluate_and_mine_run_on_the_engine(model, monkeypatch, tmp_path):
    """The callers reach the model only through the engine's blocks."""
    from btok_model.evaluation import EmbeddingScorer, evaluate, load_task
    from btok_model.mine import mine_hard_negatives

    calls = []
    block = engine.encode_block
    monkeypatch.setattr(engine, "encode_block", lambda *a, **k: calls.append(len(a[1])) or block(*a, **k))
    path = tmp_path / "p.jsonl"
    path.write_text('{"query": "q one", "positive": "p one"}\n{"query": "q two", "positive": "p two"}\n')
    evaluate(load_task(path), EmbeddingScorer(model))
    assert sum(calls) == 4
    mine_hard_negatives(model, ["a", "b"], ["c", "d"], ["e"], num_negatives=1)
    assert sum(calls) == 4 + 2 + 3


def test_the_old_wrappers_and_loops_are_gone():
    from btok_model import mine
    from btok_model.embedder import base
    from btok_model.evaluation import mmeb_v2, scorers

    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("btok_model.evaluation.topk")
    gone = [
        (base, "encode_in_length_order"),
        (mmeb_v2, "_encode"),
        (mmeb_v2, "_count_against_corpus"),
        (mmeb_v2, "_count_against_lists"),
        (mine, "_encode"),
    ]
    assert [f"{m.__name__}.{name}" for m, name in gone if hasattr(m, name)] == []
    assert scorers.count_ranks.__module__ == mmeb_v2.count_ranks.__module__ == "btok_model.inference.scoring"
    assert mine.RunningTopK.__module__ == "btok_model.inference.scoring"
