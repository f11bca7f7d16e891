"""A saved BTok model loads in sentence-transformers and embeds exactly like BTokModel.encode."""

import json
import sys
import warnings

import pytest
import torch

from tests.helpers.tiny import tiny_btok

st = pytest.importorskip("sentence_transformers")

from btok_model.sentence_transformers_module import BTokEmbedding, save_sentence_transformer  # noqa: E402

TEXTS = ["a small furry animal", "paris", "in water", "what bees make honey, and wax", "x"]


@pytest.mark.parametrize("family, pooling", [("llama", "mean"), ("qwen2", "last")])
def test_sentence_transformer_equals_encode(tmp_path, family, pooling):
    model = tiny_btok(family, seed=3, pooling=pooling)
    save_sentence_transformer(model, tmp_path)
    loaded = st.SentenceTransformer(str(tmp_path), device="cpu", trust_remote_code=True)
    assert isinstance(loaded[0], BTokEmbedding) and len(loaded) == 1
    assert loaded[0].model.config.pooling == pooling and loaded[0].get_sentence_embedding_dimension() == 64
    expected = model.encode(TEXTS)
    for batch_size in (2, 32):
        actual = loaded.encode(TEXTS, batch_size=batch_size, convert_to_tensor=True)
        assert actual.dtype == torch.float32
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)
    # The folder is still a BTok model folder.
    from btok_model import BTokModel

    torch.testing.assert_close(BTokModel.from_pretrained(tmp_path).encode(TEXTS), expected, rtol=0, atol=0)


def test_a_folder_naming_the_old_module_path_loads_without_a_warning(tmp_path, monkeypatch):
    """Folders saved before the module moved name ``btok_model.st.BTokEmbedding`` in modules.json:
    they load as they are (the deprecated ``btok_model.st`` gives the same class, silently when
    sentence-transformers imports it); new folders name the new path."""
    model = tiny_btok("llama", seed=3)
    save_sentence_transformer(model, tmp_path)
    path = tmp_path / "modules.json"
    modules = json.loads(path.read_text())
    assert [m["type"] for m in modules] == ["btok_model.sentence_transformers_module.BTokEmbedding"]
    path.write_text(json.dumps([{**modules[0], "type": "btok_model.st.BTokEmbedding"}]))
    monkeypatch.delitem(sys.modules, "btok_model.st", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        loaded = st.SentenceTransformer(str(tmp_path), device="cpu", trust_remote_code=True)
    assert "btok_model.st" in sys.modules and type(loaded[0]) is BTokEmbedding
    torch.testing.assert_close(loaded.encode(TEXTS, convert_to_tensor=True), model.encode(TEXTS), rtol=1e-5, atol=1e-6)
