"""MaxSim and Matryoshka: scores against direct loops, the MaxSim InfoNCE against an fp64
autograd reference, truncation, the K BTok vectors of ``encode(multi_vector=True)`` against the
decoder's own states, and the settings' checks and save / load."""

import json
import os

import pytest
import torch
import torch.nn.functional as F

from btok_model.embedder.btok import BTokModel
from btok_model.embedder.config import BTokConfig, PooledConfig
from btok_model.embedder.losses import info_nce, matryoshka_info_nce
from btok_model.embedder.pooled import PooledEmbedder
from btok_model.embedder.similarity import check_dims, cosine_of_means, maxsim, similarity_scores, truncate
from tests.helpers.tiny import EXAMPLES, char_tokenizer, tiny_backbone, tiny_btok

TEXTS = ["a cat", "the capital of france is paris", "cold", "2 + 2 = 4, it is four"]


def unit(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1).to(dtype)


def maxsim_loop(q, c):
    """``sum_i max_j q_i . c_j`` for every pair, with Python loops, in float64."""
    out = torch.empty(q.shape[0], c.shape[0], dtype=torch.float64)
    for a in range(q.shape[0]):
        for b in range(c.shape[0]):
            out[a, b] = sum(
                max(float(q[a, i].double() @ c[b, j].double()) for j in range(c.shape[1])) for i in range(q.shape[1])
            )
    return out


def test_maxsim_matches_a_loop_with_unequal_vector_counts_and_blocks():
    q, c = unit(3, 4, 16, seed=1), unit(7, 3, 16, seed=2)
    expected = maxsim_loop(q, c)
    for block in (1, 3, 7, 100):  # candidate blocks that split the pool unevenly, and one block
        got = maxsim(q, c, block=block)
        assert got.dtype == torch.float32 and got.shape == (3, 7)
        assert torch.allclose(got.double(), expected, rtol=0, atol=2e-6), block
    assert maxsim(q, c[:0]).shape == (3, 0)
    with pytest.raises(ValueError, match=r"maxsim needs query \[Nq, Kq, H\]"):
        maxsim(q[:, 0], c)


def test_cosine_of_means_and_k1_maxsim_are_cosines():
    q, c = unit(3, 4, 16, seed=3), unit(5, 4, 16, seed=4)
    means_q = F.normalize(q.double().mean(1), dim=-1)
    means_c = F.normalize(c.double().mean(1), dim=-1)
    assert torch.allclose(cosine_of_means(q, c).double(), means_q @ means_c.T, atol=1e-6)
    # K = 1: MaxSim is the cosine of the two vectors, and so is its InfoNCE.
    one_q, one_c = q[:, :1], c[:, :1]
    assert torch.allclose(maxsim(one_q, one_c), similarity_scores(q[:, 0], c[:, 0]), atol=1e-6)
    positive = torch.tensor([0, 3, 1])
    assert info_nce(one_q, one_c, positive, 0.05, "maxsim").item() == pytest.approx(
        info_nce(q[:, 0], c[:, 0], positive, 0.05).item(), rel=1e-6
    )


def maxsim_info_nce_fp64(q, c, positive, temperature):
    """InfoNCE on MaxSim / Kq, written out in float64 (autograd through max and logsumexp)."""
    dots = torch.einsum("akh,bjh->abkj", q, c)  # [Nq, Nc, Kq, Kc]
    scores = dots.max(-1).values.sum(-1) / q.shape[1]
    logits = scores / temperature
    return (torch.logsumexp(logits, 1) - logits[torch.arange(q.shape[0]), positive]).mean()


def test_maxsim_info_nce_gradients_match_float64_autograd():
    q64, c64 = unit(4, 3, 32, seed=5, dtype=torch.float64), unit(9, 4, 32, seed=6, dtype=torch.float64)
    positive = torch.tensor([2, 0, 8, 5])
    q64.requires_grad_(True)
    c64.requires_grad_(True)
    expected = maxsim_info_nce_fp64(q64, c64, positive, 0.02)
    expected.backward()
    q, c = q64.detach().float().requires_grad_(True), c64.detach().float().requires_grad_(True)
    got = info_nce(q, c, positive, 0.02, "maxsim")
    got.backward()
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    for name, mine, ref in (("query", q.grad, q64.grad), ("candidates", c.grad, c64.grad)):
        err = ((mine.double() - ref).norm() / ref.norm()).item()
        assert err < 1e-5, f"{name}: relative L2 error {err:.2e}"


@pytest.mark.parametrize("similarity,shape", [("cosine", (6, 32)), ("maxsim", (6, 3, 32))])
def test_matryoshka_loss_is_the_weighted_sum_of_truncated_losses(similarity, shape):
    q, c = unit(*shape, seed=7), unit(10, *shape[1:], seed=8)
    positive = torch.tensor([0, 2, 4, 6, 8, 9])
    dims, weights = [4, 16, 32], [0.5, 1.0, 2.0]
    got = matryoshka_info_nce(q, c, positive, 0.05, dims, weights, similarity)
    expected = 0.0
    for d, w in zip(dims, weights):
        qd = F.normalize(q.double()[..., :d], dim=-1)
        cd = F.normalize(c.double()[..., :d], dim=-1)
        if similarity == "maxsim":
            expected += w * maxsim_info_nce_fp64(qd, cd, positive, 0.05).item()
        else:
            logits = qd @ cd.T / 0.05
            expected += w * (torch.logsumexp(logits, 1) - logits[torch.arange(6), positive]).mean().item()
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert matryoshka_info_nce(q, c, positive, 0.05, dims, None, similarity).item() == pytest.approx(
        sum(info_nce(truncate(q, d), truncate(c, d), positive, 0.05, similarity).item() for d in dims), rel=1e-6
    )


def test_truncate_and_check_dims():
    x = torch.randn(5, 3, 16, dtype=torch.float64)
    assert torch.allclose(truncate(x, 4).double(), x[..., :4] / x[..., :4].norm(dim=-1, keepdim=True), atol=1e-6)
    assert check_dims([8, 16, "full"], None) == [8, 16, "full"]
    assert check_dims([8, "16", "full"], 64) == [8, 16, 64]
    assert check_dims([64], 64) == [64]
    bad = [
        ([], "non-empty"),
        ([0, 8], "int >= 1"),
        ([16, 8], "strictly increasing"),
        ([8, 8], "no duplicates"),
        (["full", 8], "must come last"),
        ([8, 128], "128 is larger than the embedding size 64"),
        ([8, 64, "full"], "64 is the embedding size, the same as 'full'"),
    ]
    for dims, message in bad:
        with pytest.raises(ValueError, match=message):
            check_dims(dims, 64)
    with pytest.raises(ValueError, match=r"dims must be an int in \[1, 16\]"):
        truncate(x, 17)


def test_encode_multi_vector_is_the_normalised_btok_states_and_pooled_their_normalised_mean():
    """The K vectors are the decoder's last-layer BTok states, each normalised; the pooled
    embedding is the normalised mean of the raw states (not of the normalised ones)."""
    model = tiny_btok("qwen2", attn="sdpa")
    k = model.config.num_btoks
    padded = model.collator.pad_sequences(model.collator.tokenize(TEXTS))
    with torch.no_grad():
        hidden = model._last_hidden_states(
            padded["input_ids"], padded["position_ids"], attention_mask=padded["attention_mask"]
        ).view(len(TEXTS), padded["input_ids"].shape[1], -1)
    lengths = padded["attention_mask"].sum(1)
    raw = torch.stack([hidden[i, n - k : n] for i, n in enumerate(lengths.tolist())]).double()  # [N, K, H]
    for packed in (False, True):
        vectors = model.encode(TEXTS, packed=packed, multi_vector=True)
        pooled = model.encode(TEXTS, packed=packed)
        assert vectors.shape == (len(TEXTS), k, model.embedding_dim)
        assert torch.allclose(vectors.double(), F.normalize(raw, dim=-1), atol=2e-5), packed
        assert torch.allclose(pooled.double(), F.normalize(raw.mean(1), dim=-1), atol=2e-5), packed
    # Exactly: the pooled embedding is the normalised norm-weighted mean of the K vectors.
    norms = raw.norm(dim=-1, keepdim=True)
    assert torch.allclose(pooled.double(), F.normalize((vectors.double() * norms).mean(1), dim=-1), atol=2e-5)


def test_encode_dims_truncates_and_renormalises():
    model = tiny_btok("llama", attn="sdpa")
    full = model.encode(TEXTS)
    assert torch.allclose(model.encode(TEXTS, dims=8), truncate(full, 8), atol=1e-6)
    assert torch.equal(model.encode(TEXTS, dims="full"), full)
    vectors = model.encode(TEXTS, multi_vector=True)
    assert torch.allclose(model.encode(TEXTS, multi_vector=True, dims=8), truncate(vectors, 8), atol=1e-6)
    both = model.encode(TEXTS, poolings=("mean", "last"), dims=8)
    assert both.shape == (len(TEXTS), 16)
    assert torch.allclose(both[:, :8], truncate(full, 8), atol=1e-6)
    with pytest.raises(ValueError, match="dims: 65 is larger than the embedding size 64"):
        model.encode(TEXTS, dims=65)
    with pytest.raises(ValueError, match="give no poolings"):
        model.encode(TEXTS, multi_vector=True, poolings=("mean",))


def test_pooled_embedder_has_no_vectors_and_no_maxsim():
    model = PooledEmbedder.from_backbone(tiny_backbone("llama"), char_tokenizer(), attn_implementation="sdpa")
    with pytest.raises(ValueError, match="PooledEmbedder has no BToks"):
        model.encode(TEXTS, multi_vector=True)
    with pytest.raises(ValueError, match="a model without BToks has one vector per input"):
        PooledConfig(similarity="maxsim")


def test_model_loss_uses_the_configured_similarity_and_dims():
    """``model(batch)``'s InfoNCE is info_nce / matryoshka_info_nce on the multi-vector embeddings."""
    model = tiny_btok("llama", attn="sdpa", similarity="maxsim", matryoshka_dims=[8, "full"], matryoshka_weights=[2, 1])
    batch = model.collate(EXAMPLES)
    out = model(batch)
    q, c = out.query_embeddings, out.candidate_embeddings
    assert q.shape == (len(EXAMPLES), 4, 64) and c.shape[1:] == (4, 64)
    expected = 2 * info_nce(truncate(q, 8), truncate(c, 8), batch.positive_index, model.config.temperature, "maxsim")
    expected = expected + info_nce(q, c, batch.positive_index, model.config.temperature, "maxsim")
    assert out.contrastive_loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_settings_checks_and_save_load(tmp_path):
    with pytest.raises(ValueError, match="similarity must be one of"):
        BTokConfig(similarity="dot")
    with pytest.raises(ValueError, match="one weight per Matryoshka dimension"):
        BTokConfig(matryoshka_dims=[8, "full"], matryoshka_weights=[1.0])
    with pytest.raises(ValueError, match="numbers > 0"):
        BTokConfig(matryoshka_dims=[8, "full"], matryoshka_weights=[1.0, 0])
    with pytest.raises(ValueError, match="matryoshka_dims: 128 is larger than the embedding size 64"):
        tiny_btok("llama", matryoshka_dims=[16, 128])
    model = tiny_btok("llama", attn="sdpa", similarity="maxsim", matryoshka_dims=[8, 32, "full"])
    model.save_pretrained(tmp_path)
    loaded = BTokModel.from_pretrained(tmp_path, attn_implementation="sdpa")
    assert loaded.config.similarity == "maxsim" and loaded.config.matryoshka_dims == [8, 32, "full"]
    assert loaded._matryoshka_sizes() == [8, 32, 64]
    # A settings file written before these settings existed loads as cosine, without Matryoshka.
    path = os.path.join(tmp_path, BTokConfig.CONFIG_NAME)
    with open(path) as f:
        values = json.load(f)
    for name in ("similarity", "matryoshka_dims", "matryoshka_weights"):
        del values[name]
    with open(path, "w") as f:
        json.dump(values, f)
    old = BTokConfig.load(tmp_path)
    assert old.similarity == "cosine" and old.matryoshka_dims == [] and old.matryoshka_weights == []
