"""Names renamed after btok 0.1: the old ones still work for one release, each with a
DeprecationWarning that says the new name; a saved folder written with an old spelling loads
without one."""

import importlib
import itertools
import json
import os
import sys
import warnings

import pytest
import torch

from btok_model.embedder import PooledConfig, PooledEmbedder, pooling
from btok_model.embedder.collate import Target
from btok_model.embedder.encode import embed_padded
from btok_model.embedder.similarity import similarity_scores
from btok_model.training.schedule import GenerativeSchedule
from tests.helpers.tiny import char_tokenizer, tiny_backbone, tiny_btok

TEXTS = ["what is a cat?", "paris", "x"]


def test_old_model_names_warn_and_give_what_they_gave(monkeypatch):
    model = tiny_btok(attn="sdpa", similarity="maxsim", matryoshka_dims=[8, "full"])
    with pytest.warns(DeprecationWarning, match=r"BTokModel.tokenize is deprecated: use model.collator.tokenize"):
        ids = model.tokenize(TEXTS)
    assert ids == model.collator.tokenize(TEXTS)
    padded = model.collator.pad_sequences(ids)
    with pytest.warns(DeprecationWarning, match="embed_padded is deprecated: use btok_model.embedder.encode"):
        old = model.embed_padded(padded, multi_vector=True)
    torch.testing.assert_close(old, embed_padded(model, padded, multi_vector=True), rtol=0, atol=0)
    with pytest.warns(DeprecationWarning, match="last_hidden_states is deprecated"):
        forward = model.last_hidden_states
    assert forward == model._last_hidden_states
    with pytest.warns(DeprecationWarning, match=r"model.config.similarity == 'maxsim'"):
        assert model.multi_vector is True
    with pytest.warns(DeprecationWarning, match=r"model.config.matryoshka_dims \('full' = model.embedding_dim\)"):
        assert model.matryoshka_dims == [8, 64]
    with pytest.raises(AttributeError, match="no_such_name"):
        model.no_such_name  # noqa: B018
    monkeypatch.delitem(sys.modules, "btok_model.embedder.core", raising=False)
    with pytest.warns(DeprecationWarning, match="btok_model.embedder.core is deprecated"):
        core = importlib.import_module("btok_model.embedder.core")
    with pytest.warns(DeprecationWarning, match="import it from btok_model.embedder.pooling"):
        assert core.pool_btok_states is pooling.pool_btok_states


def test_last_token_pooling_is_last_and_old_folders_load_silently(tmp_path):
    with pytest.warns(DeprecationWarning, match="pooling 'last-token' is deprecated, use 'last'"):
        assert PooledConfig(pooling="last-token") == PooledConfig(pooling="last") == PooledConfig()
    with pytest.warns(DeprecationWarning, match="config.reduction is deprecated, use config.pooling"):
        assert PooledConfig().reduction == "last"
    with pytest.raises(ValueError, match=r"pooling must be one of \('mean', 'last'\), got 'last-btok'"):
        PooledConfig(pooling="last-btok")
    model = PooledEmbedder.from_backbone(tiny_backbone(), char_tokenizer(), "last", attn_implementation="sdpa")
    emb = model.encode(TEXTS)
    with pytest.warns(DeprecationWarning, match="poolings entry 'last-token' is deprecated, use 'last'"):
        both = model.encode(TEXTS, poolings=("last-token", "mean"))
    torch.testing.assert_close(both[:, : emb.shape[1]], emb, rtol=0, atol=0)
    # A folder saved by btok 0.1 holds "last-token": it loads as "last", and the user sees no warning.
    model.save_pretrained(tmp_path)
    path = os.path.join(tmp_path, PooledConfig.CONFIG_NAME)
    with open(path) as f:
        values = json.load(f)
    assert values["pooling"] == "last"
    with open(path, "w") as f:
        json.dump({**values, "pooling": "last-token"}, f)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        loaded = PooledEmbedder.from_pretrained(tmp_path, attn_implementation="sdpa")
    assert loaded.config.pooling == "last"
    torch.testing.assert_close(loaded.encode(TEXTS), emb, rtol=0, atol=0)


def test_pack_and_pad_take_the_same_sequences():
    model = tiny_btok(attn="sdpa")
    collator, k = model.collator, model.config.num_btoks
    sequences = collator.tokenize(TEXTS)
    packed = collator.pack_sequences(sequences)
    padded = collator.pad_sequences(sequences)
    rows = [padded["input_ids"][i, : len(seq)].tolist() for i, seq in enumerate(sequences)]
    cu = packed["btok_layout"].host_cu_seqlens
    assert rows == sequences == [packed["input_ids"][0, a:b].tolist() for a, b in itertools.pairwise(cu)]
    # btok 0.1's call: the inputs without their BToks, accepted with a warning.
    with pytest.warns(DeprecationWarning, match=r"pack_sequences takes \[input \| BToks\] sequences"):
        old = collator.pack_sequences([seq[:-k] for seq in sequences])
    assert (
        torch.equal(old["input_ids"], packed["input_ids"])
        and old["btok_layout"].seqlens == packed["btok_layout"].seqlens
    )
    with pytest.raises(ValueError, match="sequence 1 does not end with the 4 BToks"):
        collator.pack_sequences([sequences[0], sequences[1][:-k]])
    target = Target([5, 6], [5, 6])
    with pytest.raises(TypeError, match="targets are a keyword argument now"):
        collator.pack_sequences(sequences, [target, None, None])
    with_target = collator.pack_sequences(sequences, targets=[target, None, None])
    assert with_target["input_ids"][0, len(sequences[0]) : len(sequences[0]) + 2].tolist() == [5, 6]


def test_one_check_of_each_setting():
    with pytest.raises(ValueError, match=r"^generative_weight must be a number >= 0, got -1$"):
        tiny_btok(generative_weight=-1)
    with pytest.raises(ValueError, match=r"^the generative weight must be a number >= 0, got -1$"):
        GenerativeSchedule(weight=-1)
    with pytest.raises(
        ValueError, match=r"similarity must be one of \('cosine', 'maxsim'\) for a BTok model, got 'dot'"
    ):
        tiny_btok(similarity="dot")
    with pytest.raises(ValueError, match=r"similarity must be one of \('cosine', 'maxsim'\), got 'dot'"):
        similarity_scores(torch.ones(1, 4), torch.ones(2, 4), "dot")
