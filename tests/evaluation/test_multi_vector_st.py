"""A saved MaxSim BTok model loads as a sentence-transformers MultiVectorEncoder: its K BTok
vectors per input and MaxSim scores equal ``BTokModel.encode(..., multi_vector=True)`` and
:func:`btok_model.embedder.similarity.maxsim`; without a MultiVectorEncoder class the save
raises a clear ImportError."""

import pytest
import torch

from tests.helpers.tiny import tiny_btok

st = pytest.importorskip("sentence_transformers")

from btok_model.embedder.similarity import maxsim  # noqa: E402
from btok_model.sentence_transformers_module import (  # noqa: E402
    BTokEmbedding,
    save_sentence_transformer,
    write_sentence_transformers_files,
)

TEXTS = ["a small furry animal", "paris", "what bees make honey, and wax", "x"]


@pytest.mark.skipif(
    not hasattr(st, "MultiVectorEncoder"), reason="this sentence-transformers has no MultiVectorEncoder"
)
def test_maxsim_model_loads_as_a_multi_vector_encoder(tmp_path):
    model = tiny_btok("llama", seed=3, attn="sdpa", similarity="maxsim")
    save_sentence_transformer(model, tmp_path)
    loaded = st.MultiVectorEncoder(str(tmp_path), device="cpu", trust_remote_code=True)
    assert isinstance(loaded[0], BTokEmbedding) and len(loaded) == 1
    expected = model.encode(TEXTS, multi_vector=True)  # [N, K, H]
    actual = loaded.encode(TEXTS, batch_size=3)
    assert len(actual) == len(TEXTS)
    for got, want in zip(actual, expected):
        assert got.shape == (4, 64)
        torch.testing.assert_close(got.float(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loaded.similarity(actual, actual), maxsim(expected, expected), rtol=1e-5, atol=1e-5)


def test_without_multi_vector_encoder_a_maxsim_save_says_so(tmp_path, monkeypatch):
    monkeypatch.delattr(st, "MultiVectorEncoder", raising=False)
    with pytest.raises(ImportError, match=r"lacks \(6.3.0 has it\)"):
        write_sentence_transformers_files(tmp_path, "maxsim")
    write_sentence_transformers_files(tmp_path, "cosine")  # cosine models are unaffected
