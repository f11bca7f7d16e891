"""Training a BTok embedder on Qwen2-VL / Qwen2.5-VL / Qwen3-VL: the single packed pass equals
the authors' two-pass formulation with images and video in the queries and candidates, for
every generation side (generative loss, embeddings, every parameter gradient, vision tower
included; a target's image visible and unscored, its positions starting at its sequence's
token count); what trains under LoRA, a frozen backbone and full fine-tuning; save/load with
the processor."""

import dataclasses
import json

import pytest
import torch

from btok_model import BTokModel
from btok_model.embedder import LossWeights
from btok_model.embedder.backbone import transformers_model
from btok_model.training.collator import TrainingCollator
from btok_model.training.gradcache import grad_cache_step
from tests.helpers.numerics import rel_err
from tests.helpers.tiny import adamw_step, frames, image, snapshot, tiny_vl_backbone, tiny_vl_btok, vl_tokenizer
from tests.helpers.twopass import TOL, assert_same, continuing_positions, single_pass, two_pass

# Queries with images (1..6 tokens, non-square grids), an image + a 4-frame video, text only; targets
# given, defaulted to the positive, absent. Targets are long enough to span several rows.
EXAMPLES = [
    {"query": {"text": "what is in the picture?", "image": image(56, 84, 1)}, "positive": "a cat on a mat"},
    {"query": "plain text query", "positive": "p", "target": "a target after a text query"},
    {"query": {"image": image(84, 56, 2)}, "positive": {"text": "tall", "image": image(28, 28, 3)}},
    {
        "query": {"text": "clip", "image": image(28, 56, 9), "video": frames(4, 28, 56, 4)},
        "positive": "moving",
        "target": "it moves left",
    },
    {"query": {"text": "x", "image": image(40, 50, 5)}, "positive": "y", "target": None},
]


VL_FAMILIES = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"]


@pytest.mark.parametrize("family", VL_FAMILIES)
def test_single_pass_equals_two_pass_with_images(family):
    model = tiny_vl_btok(family)
    single, double = single_pass(model, EXAMPLES), two_pass(model, EXAMPLES, "sdpa")
    assert_same(single, double, family)
    grads = single[3]
    assert any("visual" in n for n in grads), "the vision tower must get gradients"
    assert all(grads[n].abs().sum() > 0 for n in grads if "visual" in n and "bias" not in n)


def side_examples(side: str) -> list[dict]:
    """An image query, a text query with an image positive, a video query, an image-only query
    with an image positive; every example generating on ``side``. Every image spans several
    rows and columns of tokens, so its M-RoPE positions end before its token count: a target
    after it starts later than the last BTok's position + 1."""
    examples = [
        {"query": {"text": "what is in the picture?", "image": image(56, 84, 1)}, "positive": "a cat on a mat"},
        {"query": "find the tall one", "positive": {"text": "tall", "image": image(56, 56, 3)}, "negatives": ["x"]},
        {"query": {"text": "clip", "video": frames(4, 28, 56, 4)}, "positive": "moving left"},
        {"query": {"image": image(84, 56, 2)}, "positive": {"text": "blue sky", "image": image(56, 84, 8)}},
    ]
    return [dict(ex, target_side=side) for ex in examples]


@pytest.mark.parametrize("family", VL_FAMILIES)
@pytest.mark.parametrize("side", ["positive", "query", "both"])
def test_each_generation_side_with_images_equals_two_pass(family, side):
    """Image and video inputs on either side of the target: the two passes position a target
    at S + the model's rope index of the target alone (S: the first pass's token count), the
    target's image runs through the vision tower again, its vision tokens score nothing (a
    Qwen3-VL video target's timestamps are text: scored in both formulations)."""
    model = tiny_vl_btok(family)
    examples = side_examples(side)
    single, double = single_pass(model, examples), two_pass(model, examples, "sdpa")
    assert_same(single, double, f"{family}/{side}")
    assert all(single[3][n].abs().sum() > 0 for n in single[3] if ".visual." in n and "bias" not in n)
    batch = model.collate(examples)
    # Control: targets continuing right after the last BTok's M-RoPE position fail this check.
    continuing = dataclasses.replace(batch, position_ids=continuing_positions(batch))
    with torch.no_grad():
        assert rel_err(model.embed_batch(continuing).generative_loss, double[1].detach()) > TOL
    # 4 images and a video in the inputs; a target generated from an input with media holds them again
    in_targets = {"positive": (2, 0), "query": (2, 1), "both": (4, 1)}[side]
    assert (batch["image_grid_thw"].shape[0], batch["video_grid_thw"].shape[0]) == (
        4 + in_targets[0],
        1 + in_targets[1],
    )


def test_side_none_with_images_and_targets_change_no_embedding():
    """``none`` leaves no target (nor a target's pixels); every side gives the same embeddings."""
    model = tiny_vl_btok("qwen2_vl")
    batch = model.collate(side_examples("none"))
    assert batch["num_target_tokens"] == 0 and (batch["labels"] == -100).all()
    assert batch["btok_layout"].host_target_start == batch["btok_layout"].seqlens
    assert batch["image_grid_thw"].shape[0] == 4 and batch["video_grid_thw"].shape[0] == 1
    ref = model.embed_batch(batch)
    assert ref.generative_loss is None
    for side in ("positive", "query", "both"):
        got = model.embed_batch(model.collate(side_examples(side)))
        assert got.generative_loss is not None
        # fp32 ulps at most: another packing may round differently, a leak would move them by ~1e-2
        assert rel_err(got.query_embeddings.detach(), ref.query_embeddings.detach()) < 1e-6, side
        assert rel_err(got.candidate_embeddings.detach(), ref.candidate_embeddings.detach()) < 1e-6, side


def _embedding_rows(model):
    embed = transformers_model(model.backbone).get_input_embeddings()
    with torch.no_grad():
        return embed(torch.arange(embed.weight.shape[0])).clone()


@pytest.mark.parametrize(
    "family, mode", [("qwen2_vl", "lora"), ("qwen2_vl", "frozen"), ("qwen2_vl", "full"), ("qwen3_vl", "lora")]
)
def test_what_trains(family, mode):
    """LoRA: adapters on the language model only (none in the vision tower, nor Qwen3-VL's
    deepstack mergers) + the BTok rows; frozen: the BTok rows only; full: everything, the
    vision tower included."""
    kwargs = {"lora": dict(lora=4), "frozen": dict(freeze_backbone=True), "full": {}}[mode]
    model = tiny_vl_btok(family, **kwargs)
    before, rows_before = snapshot(model), _embedding_rows(model)
    trainable = adamw_step(model, EXAMPLES)
    after, rows_after = snapshot(model), _embedding_rows(model)
    changed = {n for n in before if not torch.equal(after[n], before[n])}
    visual = {n for n in before if ".visual." in n}
    assert visual, "the vision tower's parameters must be found"

    if mode == "full":
        assert changed == set(before)
        return
    kinds = {"lora_A", "lora_B", "trainable_tokens_delta"} if mode == "lora" else {"trainable_tokens_delta"}
    assert all(any(k in n for k in kinds) for n in trainable), sorted(trainable)
    assert changed <= trainable and not changed & visual
    assert not any("lora" in n for n in visual), "no adapters on the vision tower"
    if mode == "lora":
        lora_modules = {n.split(".lora_")[0] for n in trainable if "lora_B" in n}
        assert lora_modules and all(".language_model." in n for n in lora_modules)
        assert {n.rsplit(".", 1)[-1] for n in lora_modules} == {
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        }
        assert any("lora_B" in n for n in changed)
    ids = model.btok_token_ids
    others = torch.ones(rows_before.shape[0], dtype=torch.bool)
    others[ids] = False
    assert torch.equal(rows_after[others], rows_before[others]), "non-BTok embedding rows changed"
    assert (rows_after[ids] != rows_before[ids]).any(dim=1).all(), "every BTok row must train"


@pytest.mark.parametrize("family, patch", [("qwen2_5_vl", 14), ("qwen3_vl", 16)])
def test_save_load_round_trip_with_the_processor(family, patch, tmp_path):
    model = tiny_vl_btok(family, video=False, pooling="last")
    with torch.no_grad():
        transformers_model(model.backbone).get_input_embeddings().weight[model.btok_token_ids] += 0.3
    inputs = [{"text": "a cat", "image": image(56, 84, 1)}, "just text", {"image": image(28, 56, 2)}]
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert (saved["patch_size"], saved["merge_size"], saved["temporal_patch_size"]) == (patch, 2, 2)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == family

    loaded = BTokModel.from_pretrained(tmp_path)
    assert type(transformers_model(loaded.backbone)) is type(transformers_model(model.backbone))
    assert loaded.tokenizer.convert_tokens_to_ids(["<|image_pad|>", "<|btok_3|>"]) == [50, model.btok_token_ids[3]]
    assert loaded.processor is not None and loaded.config.pooling == "last"
    assert torch.equal(loaded.encode(inputs), model.encode(inputs))
    a, b = loaded(**loaded.collate(EXAMPLES[:3])), model(**model.collate(EXAMPLES[:3]))
    assert torch.equal(a.loss, b.loss)


def test_from_backbone_by_folder_name_loads_the_processor(tmp_path):
    """A VL folder loads through AutoModelForImageTextToText; the processor comes from the
    folder (its image processor alone here: transformers cannot build the processor class
    without torchvision, and a video then says why)."""
    backbone = tiny_vl_backbone("qwen2_vl")
    backbone.save_pretrained(tmp_path)
    reference = tiny_vl_btok("qwen2_vl", video=False)
    reference.collator.image_processor.save_pretrained(tmp_path)
    model = BTokModel.from_backbone(str(tmp_path), tokenizer=vl_tokenizer(), dtype=torch.bfloat16)
    lm = transformers_model(model.backbone)
    assert lm.dtype == torch.bfloat16 and lm.config._attn_implementation == "btok_triton"
    inputs = [{"text": "a cat", "image": image(56, 84, 1)}]
    emb = model.encode(inputs)
    assert emb.dtype == torch.float32 and torch.allclose(emb.norm(dim=-1), torch.ones(1))
    assert torch.equal(
        model.collate([{"query": inputs[0], "positive": "p"}])["pixel_values"],
        reference.collate([{"query": inputs[0], "positive": "p"}])["pixel_values"],
    )
    with pytest.raises(ValueError, match="no video processor"):
        model.encode([{"video": frames(2, 28, 28, 1)}])


@pytest.mark.interpret
def test_single_pass_equals_two_pass_triton_kernel(monkeypatch):
    """The real Triton kernels (under the interpreter on a CPU): the text model's condensation
    layout and the vision tower's bidirectional one, against the two passes under sdpa."""
    monkeypatch.setenv("BTOK_BACKEND", "triton")
    model = tiny_vl_btok("qwen2_vl")
    examples = [{"query": {"text": "hi", "image": image(28, 56, 1)}, "positive": "yo", "target": "odd"}]
    assert_same(single_pass(model, examples), two_pass(model, examples, "sdpa"), "triton")


def test_grad_cache_chunks_with_images_equal_the_full_batch():
    """The training collator's GradCache chunks carry each example's pixels: the chunked
    step gives the full batch's losses and gradients (vision tower included)."""
    model = tiny_vl_btok("qwen2_vl").train()
    full_batch = model.collate(EXAMPLES)
    chunked = TrainingCollator(model.collator, True, chunk_size=2)(EXAMPLES)
    assert len(chunked.chunks) == 3 and all("pixel_values" in c.batch for c in chunked.chunks)
    model.zero_grad(set_to_none=True)
    full = model(**full_batch)
    full.loss.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    parts = grad_cache_step(model, chunked, lambda loss: loss.backward(), LossWeights(5.0))
    torch.testing.assert_close(parts.contrastive_loss, full.contrastive_loss.detach(), rtol=1e-5, atol=0)
    torch.testing.assert_close(parts.generative_loss, full.generative_loss.detach(), rtol=1e-5, atol=0)
    torch.testing.assert_close(parts.loss, full.loss.detach(), rtol=1e-5, atol=0)
    actual = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert actual.keys() == expected.keys() and any(".visual." in n for n in actual)
    for name in expected:
        assert rel_err(actual[name], expected[name]) < 2e-5, name
