"""Every model feature the backend cannot compute exactly raises an error that names it;
registration is by name, idempotent, and the only import side effect."""

import os
import subprocess
import sys

import pytest
import torch
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    masking_utils,
)

import btok_model
from btok_kernels import CondensationLayout
from btok_model import UnsupportedModelFeatureError, btok_attention_forward
from btok_model.backend.mask_interface import check_mask_function
from tests.helpers.tiny import BACKEND_TEXT_CONFIG, backend_model


def ids(n, b=1):
    return torch.randint(1, 90, (b, n), generator=torch.Generator().manual_seed(0))


def test_sliding_window_shorter_than_the_input():
    model = Qwen2ForCausalLM(
        Qwen2Config(**BACKEND_TEXT_CONFIG, use_sliding_window=True, sliding_window=4, max_window_layers=0)
    )
    model.set_attn_implementation("btok_triton")
    with pytest.raises(UnsupportedModelFeatureError, match="sliding-window attention"):
        model(input_ids=ids(9))


def test_logit_softcapping():
    config = Gemma2Config(**BACKEND_TEXT_CONFIG, head_dim=16, attn_logit_softcapping=50.0, sliding_window=512)
    model = Gemma2ForCausalLM(config)
    model.set_attn_implementation("btok_triton")
    with pytest.raises(UnsupportedModelFeatureError, match="softcapping"):
        model(input_ids=ids(6))


def test_attention_dropout_while_training():
    model = LlamaForCausalLM(LlamaConfig(**BACKEND_TEXT_CONFIG, attention_dropout=0.1))
    model.set_attn_implementation("btok_triton")
    model.eval()(input_ids=ids(5))  # no dropout at inference: fine
    with pytest.raises(UnsupportedModelFeatureError, match="attention dropout"):
        model.train()(input_ids=ids(5))


def test_custom_4d_mask():
    model = backend_model("llama")
    model.set_attn_implementation("btok_triton")
    mask = torch.zeros(1, 1, 5, 5)
    with pytest.raises(UnsupportedModelFeatureError, match="custom 4D attention mask"):
        model(input_ids=ids(5), attention_mask=mask)


def test_mask_overlay_from_or_mask_function():
    model = backend_model("llama")
    model.set_attn_implementation("btok_triton")
    embeds = torch.zeros(1, 5, 64)

    def image_tokens_see_each_other(batch_idx, head_idx, q_idx, kv_idx):
        return kv_idx < 2

    with pytest.raises(UnsupportedModelFeatureError, match="or_mask_function"):
        # positional `cache` argument: named `past_key_values` before transformers 5.24
        masking_utils.create_causal_mask(model.config, embeds, None, None, or_mask_function=image_tokens_see_each_other)


def test_chunked_attention_and_custom_mask_functions():
    chunked = masking_utils.chunked_causal_mask_function(4, torch.zeros(1, dtype=torch.long))
    with pytest.raises(UnsupportedModelFeatureError, match="chunked attention"):
        check_mask_function(chunked)
    with pytest.raises(UnsupportedModelFeatureError, match="custom mask function"):
        check_mask_function(lambda b, h, q, kv: q >= kv)
    check_mask_function(
        masking_utils.and_masks(masking_utils.causal_mask_function, masking_utils.sliding_window_overlay(3))
    )


@pytest.mark.parametrize("kwarg", ["s_aux", "position_bias"])
def test_attention_sinks_and_position_bias(kwarg):
    q = torch.randn(1, 2, 4, 16)
    module = backend_model("llama").model.layers[0].self_attn
    with pytest.raises(UnsupportedModelFeatureError, match=kwarg):
        btok_attention_forward(module, q, q, q, None, **{kwarg: torch.zeros(2)})


def test_btok_layout_misuse():
    model = backend_model("llama")
    model.set_attn_implementation("btok_triton")
    layout = CondensationLayout.from_lengths([3], 2, [2])
    with pytest.raises(ValueError, match=r"shape \[1, 7\]"):
        model(input_ids=ids(7, b=2), btok_layout=layout)
    with pytest.raises(ValueError, match="padding attention_mask"):
        mask = torch.ones(1, 7, dtype=torch.long)
        mask[0, 0] = 0
        model(input_ids=ids(7), attention_mask=mask, btok_layout=layout)
    with pytest.raises(TypeError, match="CondensationLayout"):
        model(input_ids=ids(7), btok_layout=[3, 2, 2])


def test_register_is_idempotent():
    assert btok_model.is_registered()
    assert btok_model.register() == "btok_triton" == btok_model.register()
    assert btok_model.is_registered()
    assert "btok_triton" in masking_utils.ALL_MASK_ATTENTION_FUNCTIONS


def test_import_only_registers():
    """``import btok_model`` in a fresh interpreter: registered, environment untouched, silent."""
    code = (
        "import os, transformers; env = dict(os.environ); import btok_model; "
        "assert dict(os.environ) == env; assert btok_model.is_registered(); "
        "from transformers import AutoModelForCausalLM, LlamaConfig; "
        "c = LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=1, "
        "num_attention_heads=2, num_key_value_heads=1); "
        "m = AutoModelForCausalLM.from_config(c, attn_implementation='btok_triton'); "
        "assert m.config._attn_implementation == 'btok_triton'"
    )
    env = {k: v for k, v in os.environ.items() if k != "BTOK_BACKEND"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
