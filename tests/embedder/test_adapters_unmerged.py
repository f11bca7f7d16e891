"""LoRA / DoRA adapters saved unmerged (``save_pretrained(merge_adapters=False)``, ``train
--save-adapters``) and loaded either way: kept apart (as during training) or merged; the two agree
to float rounding in float32 and to bf16 rounding in bfloat16."""

import pytest
import torch

from btok_model import BTokModel
from btok_model.embedder.backbone import ADAPTER_FOLDER
from btok_model.evaluate import load_embedder, parser
from btok_model.training.recipe import Recipe, build_model
from tests.helpers.tiny import EXAMPLES, adamw_step, char_tokenizer, tiny_backbone

TEXTS = ["what is a cat?", "paris", "x", "a small furry animal that purrs"]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A DoRA model after one step (adapters away from their init), saved merged and unmerged."""
    recipe = Recipe(lora_r=4, lora_alpha=8, lora_dora=True, lora_init="gaussian")
    model = build_model(tiny_backbone("qwen2"), recipe, char_tokenizer(), attn_implementation="sdpa")
    adamw_step(model, EXAMPLES)
    root = tmp_path_factory.mktemp("adapters")
    model.save_pretrained(root / "merged")
    model.save_pretrained(root / "unmerged", merge_adapters=False)
    return model.eval().encode(TEXTS), root


def _load(path, **kwargs):
    return BTokModel.from_pretrained(path, attn_implementation="sdpa", **kwargs).eval()


def test_unmerged_folder_holds_the_base_and_the_adapters(saved):
    live, root = saved
    assert (root / "unmerged" / ADAPTER_FOLDER / "adapter_config.json").is_file()
    assert not (root / "merged" / ADAPTER_FOLDER).exists()
    kept = _load(root / "unmerged", dtype=torch.float32)
    assert hasattr(kept.backbone, "peft_config"), "the adapters stay apart from the weights"
    assert torch.equal(kept.encode(TEXTS), live), "the same computation as the live model"
    merged_here = _load(root / "unmerged", dtype=torch.float32, merge_adapters=True)
    assert not hasattr(merged_here.backbone, "peft_config")
    merged = _load(root / "merged", dtype=torch.float32).encode(TEXTS)
    torch.testing.assert_close(merged_here.encode(TEXTS), merged, rtol=0, atol=1e-6)
    assert _rel(merged, live) < 1e-5


def test_merged_and_unmerged_agree_within_bf16_rounding(saved):
    live, root = saved
    unmerged = _load(root / "unmerged", dtype=torch.bfloat16).encode(TEXTS)
    merged = _load(root / "merged", dtype=torch.bfloat16).encode(TEXTS)
    rounding = _rel(unmerged, live)  # what bf16 alone costs, against the float32 model
    assert 0 < rounding < 0.02
    assert _rel(merged, live) <= 2 * rounding
    assert _rel(merged, unmerged) <= 2 * rounding


def test_unmerged_folder_loads_for_inference_only(saved):
    _, root = saved
    with pytest.raises(ValueError, match="unmerged adapters, loaded for inference: pass merge_adapters=True"):
        BTokModel.from_pretrained(root / "unmerged", attn_implementation="sdpa", lora=2)


def test_evaluate_loads_both_ways(saved):
    _, root = saved
    base = ["--data", "x.jsonl", "--model", str(root / "unmerged"), "--attn-implementation", "sdpa"]
    base += ["--device", "cpu", "--torch-dtype", "float32"]
    assert hasattr(load_embedder(parser().parse_args(base)).backbone, "peft_config")
    assert not hasattr(load_embedder(parser().parse_args([*base, "--merge-adapters"])).backbone, "peft_config")
