"""BTokModel: BTok rows, encode, the attention peers, save/load, and what trains in each mode."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from btok_model import BTokModel
from btok_model.embedder.backbone import transformers_model
from tests.helpers.numerics import rel_err
from tests.helpers.tiny import EXAMPLES, adamw_step, char_tokenizer, snapshot, tiny_backbone, tiny_btok

TEXTS = ["what is a cat?", "paris", "a much longer text about nothing in particular", "x", "four", "2 + 2"]


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("vocab_size", [64, None], ids=["spare-rows", "resized"])
def test_btok_tokens_and_rows(family, vocab_size):
    backbone = tiny_backbone(family, vocab_size=vocab_size)
    original_in = backbone.get_input_embeddings().weight.detach().clone()
    original_out = backbone.get_output_embeddings().weight.detach().clone()
    tokenizer = char_tokenizer()
    vocab = len(tokenizer)
    model = BTokModel.from_backbone(backbone, num_btoks=3, tokenizer=tokenizer)
    ids = model.btok_token_ids
    assert ids == list(range(vocab, vocab + 3))
    assert tokenizer.convert_ids_to_tokens(ids) == ["<|btok_0|>", "<|btok_1|>", "<|btok_2|>"]
    assert all(tokenizer.added_tokens_decoder[i].special for i in ids)
    assert model.collator.tokenize(["ab", "c"]) == [
        [*tokenizer("ab")["input_ids"], *ids],
        [*tokenizer("c")["input_ids"], *ids],
    ]

    embed, head = backbone.get_input_embeddings().weight, backbone.get_output_embeddings().weight
    assert embed.shape[0] == max(vocab + 3, original_in.shape[0])
    assert torch.equal(embed[:vocab], original_in[:vocab]), "existing rows must not change"
    assert torch.allclose(embed[ids], original_in[:vocab].mean(0).expand(3, -1), atol=1e-7)
    tied = family == "llama"
    assert (head is embed) == tied
    if not tied:
        assert torch.allclose(head[ids], original_out[:vocab].mean(0).expand(3, -1), atol=1e-7)


def test_existing_btok_tokens_are_reused():
    tokenizer = char_tokenizer()
    first = BTokModel.from_backbone(tiny_backbone(), tokenizer=tokenizer)
    again = BTokModel.from_backbone(tiny_backbone(seed=1), tokenizer=tokenizer)
    assert again.btok_token_ids == first.btok_token_ids and len(tokenizer) == 52
    with pytest.raises(ValueError, match="made for a different number of BToks"):
        BTokModel.from_backbone(tiny_backbone(), num_btoks=6, tokenizer=tokenizer)


def test_from_backbone_argument_errors():
    with pytest.raises(ValueError, match="pass tokenizer="):
        BTokModel.from_backbone(tiny_backbone())
    with pytest.raises(ValueError, match="num_btoks must be an int >= 1"):
        tiny_btok(num_btoks=0)
    with pytest.raises(ValueError, match="pooling must be one of"):
        tiny_btok(pooling="max")
    with pytest.raises(ValueError, match="temperature must be a number > 0"):
        tiny_btok(temperature=0.0)
    with pytest.raises(ValueError, match="lora must be None, an int rank"):
        tiny_btok(lora="16")
    with pytest.raises(ValueError, match="apply only when loading by name"):
        BTokModel.from_backbone(tiny_backbone(), tokenizer=char_tokenizer(), torch_dtype=torch.float16)
    with pytest.raises(ValueError, match="generative_weight must be a number >= 0"):
        tiny_btok(generative_weight=-1.0)
    with pytest.raises(ValueError, match="max_length must be None or an int >= 1"):
        tiny_btok(max_length=0)
    with pytest.raises(ValueError, match="kernel setting backend must be None or one of"):
        tiny_btok(kernel={"backend": "fast"})
    with pytest.raises(ValueError, match=r"unknown kernel settings \['fused'\]"):
        tiny_btok(kernel={"fused": True})


def test_encode_contract():
    model = tiny_btok()
    model.train()
    emb = model.encode(TEXTS, batch_size=4, show_progress_bar=True)
    assert model.training, "encode must restore the training mode"
    assert emb.dtype == torch.float32 and emb.device.type == "cpu" and emb.shape == (len(TEXTS), 64)
    assert not emb.requires_grad
    assert torch.allclose(emb.norm(dim=-1), torch.ones(len(TEXTS)))
    # Batching and sorting put every row back in place: each text alone gives its row.
    for i, text in enumerate(TEXTS):
        assert rel_err(model.encode([text])[0], emb[i]) < 2e-6
    assert model.encode([]).shape == (0, 64)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        model.encode(TEXTS, batch_size=0)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_padded_encode_equals_packed(family):
    model = tiny_btok(family)
    packed = model.encode(TEXTS, batch_size=4, packed=True)
    padded = model.encode(TEXTS, batch_size=4, packed=False)
    assert rel_err(padded, packed) < 2e-6
    model = tiny_btok(family, pooling="last")
    last = model.encode(TEXTS, packed=True)
    assert rel_err(model.encode(TEXTS, packed=False), last) < 2e-6 and rel_err(last, packed) > 1e-2


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_dense_mask_peers_equal_the_fused_backend(attn):
    """The other backends get the condensation mask as a dense 4D mask: same results."""
    model = tiny_btok()
    batch = model.collate(EXAMPLES)
    ref = model.embed_batch(batch)
    model.backbone.set_attn_implementation(attn)
    got = model.embed_batch(batch)
    for field in ("query_embeddings", "candidate_embeddings", "generative_loss"):
        assert rel_err(getattr(got, field).detach(), getattr(ref, field).detach()) < 2e-6, field
    assert rel_err(model.encode(TEXTS), tiny_btok().encode(TEXTS)) < 2e-6


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_lm_head_runs_on_target_rows_only(family):
    """Never ``[T, vocab]``: the head sees exactly the target rows whose next token is scored
    (not the rows inside a target's prefix), in row order."""
    model = tiny_btok(family)
    batch = model.collate(EXAMPLES)
    layout = batch["btok_layout"]
    rows = (batch["labels"][0, 1:] != -100).nonzero().flatten()  # row r predicts token r + 1
    assert rows.numel() == batch["num_target_tokens"] < layout.total_tokens // 2
    seen = []
    hook = (
        transformers_model(model.backbone)
        .get_output_embeddings()
        .register_forward_hook(lambda module, args, out: seen.append(args[0].detach()))
    )
    try:
        model(**batch)
    finally:
        hook.remove()
    hidden = model._last_hidden_states(batch["input_ids"], batch["position_ids"], layout=layout).detach()
    assert len(seen) == 1 and torch.equal(seen[0], hidden[rows])


def test_gradient_checkpointing_gives_the_same_gradients():
    model = tiny_btok("qwen2")
    model.train()
    batch = model.collate(EXAMPLES)
    model(**batch).loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    model.gradient_checkpointing_enable()
    model(**batch).loss.backward()
    for name, p in model.named_parameters():
        assert torch.equal(p.grad, plain[name]), name


def test_unsupported_attention_backend_is_refused():
    model = tiny_btok()
    transformers_model(model.backbone).config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="cannot apply the condensation mask"):
        model.embed_batch(model.collate(EXAMPLES))


def test_save_load_round_trip(tmp_path):
    model = tiny_btok(
        "qwen2", pooling="last", temperature=0.05, target_prefix="<|im_start|>", max_length=200, generative_weight=2.5
    )
    with torch.no_grad():  # make the BTok rows differ from their initial value
        transformers_model(model.backbone).get_input_embeddings().weight[model.btok_token_ids] += 0.3
    model.save_pretrained(tmp_path)
    settings = json.loads((tmp_path / "btok_config.json").read_text())
    assert settings["num_btoks"] == 4 and settings["pooling"] == "last" and settings["generative_weight"] == 2.5

    loaded = BTokModel.from_pretrained(tmp_path)
    assert loaded.decoder.config._attn_implementation == "btok_triton"
    assert loaded.btok_token_ids == model.btok_token_ids
    assert loaded.config == model.config
    cfg = loaded.config
    assert (cfg.pooling, cfg.temperature, cfg.generative_weight) == ("last", 0.05, 2.5)
    assert (cfg.target_prefix, cfg.target_suffix, cfg.max_length) == ("<|im_start|>", "<|im_end|>", 200)
    assert torch.equal(loaded.encode(TEXTS), model.encode(TEXTS))
    a, b = loaded(**loaded.collate(EXAMPLES)), model(**model.collate(EXAMPLES))
    assert torch.equal(a.loss, b.loss)
    with pytest.raises(FileNotFoundError, match="not a saved BTok model"):
        BTokModel.from_pretrained(tmp_path / "missing")


def _effective_rows(model, module):
    """All rows of an embedding (or tied/untied LM head) as the model computes with them."""
    embedding = transformers_model(model.backbone).get_input_embeddings()
    with torch.no_grad():
        if module is embedding:
            return module(torch.arange(embedding.weight.shape[0])).clone()
        return module(torch.eye(model.embedding_dim)).T.clone()  # [V, H]


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("mode", ["lora", "frozen"])
def test_only_adapters_and_btok_rows_train(family, mode):
    kwargs = dict(lora=4) if mode == "lora" else dict(freeze_backbone=True)
    model = tiny_btok(family, **kwargs)
    hf = transformers_model(model.backbone)
    embed, head = hf.get_input_embeddings(), hf.get_output_embeddings()
    before = snapshot(model)
    rows_before, head_before = _effective_rows(model, embed), _effective_rows(model, head)
    trainable = adamw_step(model, EXAMPLES)

    kinds = {"lora_A", "lora_B", "trainable_tokens_delta"} if mode == "lora" else {"trainable_tokens_delta"}
    assert trainable and all(any(k in n for k in kinds) for n in trainable), sorted(trainable)
    assert any("trainable_tokens_delta" in n for n in trainable)
    after = snapshot(model)
    for name in before:
        if name not in trainable:
            assert torch.equal(after[name], before[name]), f"frozen {name} changed"
    if mode == "lora":
        assert any(not torch.equal(after[n], before[n]) for n in trainable if "lora_B" in n)

    ids = model.btok_token_ids
    others = torch.ones(rows_before.shape[0], dtype=torch.bool)
    others[ids] = False
    rows_after, head_after = _effective_rows(model, embed), _effective_rows(model, head)
    assert torch.equal(rows_after[others], rows_before[others]), "non-BTok embedding rows changed"
    assert (rows_after[ids] != rows_before[ids]).any(dim=1).all(), "every BTok row must train"
    assert torch.equal(head_after[others], head_before[others]), "non-BTok LM-head rows changed"
    # A tied LM head follows the trained BTok rows; an untied one keeps its own (frozen) rows.
    assert torch.equal(head_after[ids], rows_after[ids] if family == "llama" else head_before[ids])


def test_full_fine_tuning_trains_everything():
    model = tiny_btok()
    assert all(p.requires_grad for p in model.parameters())
    before = snapshot(model)
    adamw_step(model, EXAMPLES)
    assert all(not torch.equal(p, before[n]) for n, p in model.backbone.named_parameters())


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_lora_model_saves_merged(family, tmp_path):
    model = tiny_btok(family, lora=4)
    adamw_step(model, EXAMPLES)
    model.save_pretrained(tmp_path)
    assert not list(tmp_path.glob("adapter*")), "the folder must be a plain transformers model"
    plain = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert not any("lora" in n or "token_adapter" in n for n, _ in plain.named_parameters())
    loaded = BTokModel.from_pretrained(tmp_path)
    # Merged LoRA: x (W + s B A) vs x W + s (x A) B, equal up to fp32 rounding.
    assert rel_err(loaded.encode(TEXTS), model.encode(TEXTS)) < 1e-5
    assert any("lora" in n for n, _ in model.named_parameters()), "saving must not unwrap the live model"
    relora = BTokModel.from_pretrained(tmp_path, lora=2)
    assert all(("lora" in n or "trainable_tokens" in n) for n, p in relora.named_parameters() if p.requires_grad)


def test_from_backbone_by_name(tmp_path):
    """A folder name loads through AutoModelForCausalLM with the from_pretrained kwargs."""
    tiny_backbone("qwen2").save_pretrained(tmp_path)
    model = BTokModel.from_backbone(str(tmp_path), tokenizer=char_tokenizer(), dtype=torch.bfloat16)
    assert model.decoder.config._attn_implementation == "btok_triton"
    assert transformers_model(model.backbone).dtype == torch.bfloat16
    emb = model.encode(TEXTS[:2])
    assert emb.dtype == torch.float32 and torch.allclose(emb.norm(dim=-1), torch.ones(2))
    out = model(**model.collate(EXAMPLES))
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)


def test_pooled_embedder_save_load_round_trip(tmp_path):
    """The no-BTok baseline saves through the same core: its settings file, merged LoRA, the same embeddings."""
    from btok_model import PooledEmbedder

    model = PooledEmbedder.from_backbone(tiny_backbone("qwen2"), char_tokenizer(), "mean", lora=4, temperature=0.1)
    adamw_step(model, EXAMPLES)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "pooled_config.json").read_text())["pooling"] == "mean"
    loaded = PooledEmbedder.from_pretrained(tmp_path)
    assert loaded.config == model.config and loaded.collator.num_btoks == 0
    assert rel_err(loaded.encode(TEXTS), model.encode(TEXTS)) < 1e-5  # LoRA merged: fp32 rounding
    with pytest.raises(ValueError, match="freeze_backbone=True without LoRA trains only the BTok rows"):
        PooledEmbedder.from_pretrained(tmp_path, freeze_backbone=True)
    with pytest.raises(FileNotFoundError, match=r"btok_config\.json not found: .* is not a saved BTok model"):
        BTokModel.from_pretrained(tmp_path)


def test_from_backbone_takes_the_config_or_its_fields_as_keywords():
    """``config=BTokConfig(...)`` and the same settings as keywords build the same model; both
    at once are refused; a bad setting is named before anything loads."""
    from btok_model.embedder.config import BTokConfig

    settings = dict(num_btoks=2, pooling="last", temperature=0.05, btok_init="checkpoint", max_length=100)
    torch.manual_seed(0)
    by_keywords = BTokModel.from_backbone(tiny_backbone("qwen2"), tokenizer=char_tokenizer(), **settings)
    torch.manual_seed(0)
    config = BTokConfig(**settings)
    by_config = BTokModel.from_backbone(tiny_backbone("qwen2"), tokenizer=char_tokenizer(), config=config)
    assert by_config.config == by_keywords.config == BTokConfig(**settings)
    assert torch.equal(by_config.encode(TEXTS), by_keywords.encode(TEXTS))
    # btok_init="checkpoint": the BTok rows are the backbone's own rows for their ids
    rows = transformers_model(by_config.backbone).get_input_embeddings().weight
    stored = tiny_backbone("qwen2").get_input_embeddings().weight
    assert torch.equal(rows[by_config.btok_token_ids], stored[by_config.btok_token_ids])
    with pytest.raises(ValueError, match=r"not both: got config= and \['temperature'\]"):
        BTokModel.from_backbone(tiny_backbone("qwen2"), tokenizer=char_tokenizer(), config=config, temperature=1.0)
    with pytest.raises(ValueError, match="btok_init must be one of"):
        BTokModel.from_backbone(tiny_backbone("qwen2"), tokenizer=char_tokenizer(), btok_init="zeros")


def test_a_folder_saved_before_btok_init_was_recorded_loads(tmp_path):
    model = tiny_btok("qwen2", btok_init="checkpoint")
    model.save_pretrained(tmp_path)
    path = tmp_path / "btok_config.json"
    saved = json.loads(path.read_text())
    assert saved["btok_init"] == "checkpoint"
    path.write_text(json.dumps({k: v for k, v in saved.items() if k != "btok_init"}))
    loaded = BTokModel.from_pretrained(tmp_path)
    assert loaded.config.btok_init == "mean"  # the default of folders from before
    assert torch.equal(loaded.encode(TEXTS), model.encode(TEXTS))
