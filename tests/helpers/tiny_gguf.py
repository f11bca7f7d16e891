"""A tiny GGUF checkpoint written in the tests, for the real GGUF load path (offline).

:func:`write_tiny_gguf` writes a random 2-layer Llama as llama.cpp's converter lays it out
(``blk.N.attn_q`` ... names, the q/k rows permuted for llama.cpp's rope, matrices quantized to
Q8_0, norms in float32, the LM head tied to the embedding as in SmolLM2's file) with a
byte-level BPE tokenizer (``tokenizer.ggml.model = gpt2``) holding the chat markers. It also
returns the same model in transformers with the weights the file decodes to (Q8_0 rounding
included), so a test can compare what transformers loads from the file with it.
"""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFWriter, TokenType
from gguf.quants import dequantize, quantize
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.convert_slow_tokenizer import bytes_to_unicode

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = [("t", "h"), ("Ġ", "a")]
HIDDEN, HEADS, KV_HEADS, LAYERS, FFN = 64, 4, 2, 2, 128
ROPE_THETA = 10000.0


def tokens() -> list[str]:
    """The vocabulary: the special tokens, the 256 byte symbols, the merged pairs."""
    return SPECIAL + list(bytes_to_unicode().values()) + ["".join(pair) for pair in MERGES]


def _permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's row order for q / k: the two rope halves of every head interleaved."""
    return (
        weight.reshape(heads, 2, weight.shape[0] // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def _unpermute(weight: np.ndarray, heads: int) -> np.ndarray:
    return (
        weight.reshape(heads, weight.shape[0] // heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def write_tiny_gguf(path, seed: int = 0) -> LlamaForCausalLM:
    """Write the GGUF file to ``path``; returns the transformers model with the weights it decodes to."""
    vocab = tokens()
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).float()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.08) if p.dim() >= 2 else p.uniform_(0.8, 1.2)

    writer = GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(ROPE_THETA)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(len(vocab))
    writer.add_rope_dimension_count(HIDDEN // HEADS)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab)
    writer.add_token_types([TokenType.CONTROL] * len(SPECIAL) + [TokenType.NORMAL] * (len(vocab) - len(SPECIAL)))
    writer.add_token_merges([" ".join(pair) for pair in MERGES])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)

    state = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    decoded = {}

    def add(name: str, key: str, permute_heads: int | None = None) -> None:
        weight = state[key]
        stored = _permute(weight, permute_heads) if permute_heads else weight
        if weight.ndim == 2:
            packed = quantize(stored, GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, packed, raw_dtype=GGMLQuantizationType.Q8_0)
            stored = dequantize(packed, GGMLQuantizationType.Q8_0).reshape(stored.shape)
        else:
            writer.add_tensor(name, stored)
        decoded[key] = _unpermute(stored, permute_heads) if permute_heads else stored

    add("token_embd.weight", "model.embed_tokens.weight")
    for i in range(LAYERS):
        prefix = f"model.layers.{i}."
        add(f"blk.{i}.attn_norm.weight", prefix + "input_layernorm.weight")
        add(f"blk.{i}.attn_q.weight", prefix + "self_attn.q_proj.weight", HEADS)
        add(f"blk.{i}.attn_k.weight", prefix + "self_attn.k_proj.weight", KV_HEADS)
        add(f"blk.{i}.attn_v.weight", prefix + "self_attn.v_proj.weight")
        add(f"blk.{i}.attn_output.weight", prefix + "self_attn.o_proj.weight")
        add(f"blk.{i}.ffn_norm.weight", prefix + "post_attention_layernorm.weight")
        add(f"blk.{i}.ffn_gate.weight", prefix + "mlp.gate_proj.weight")
        add(f"blk.{i}.ffn_up.weight", prefix + "mlp.up_proj.weight")
        add(f"blk.{i}.ffn_down.weight", prefix + "mlp.down_proj.weight")
    add("output_norm.weight", "model.norm.weight")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in decoded.items()}, strict=False)
    model.tie_weights()
    return model
