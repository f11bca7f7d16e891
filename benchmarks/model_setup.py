"""Random decoders, a synthetic tokenizer and BTok models on them: what the model-level
benchmarks (``model_step.py``, ``btok_step.py``, ``encode.py``) build. Nothing is downloaded.

- :data:`QWEN2VL_2B_TEXT` / :data:`CPU_TINY` -- decoder dimensions (the Qwen2-VL-2B text
  model; a tiny one of the same family for a CPU).
- :func:`build_decoder` -- a random ``Qwen2ForCausalLM`` with some of those layers.
- :func:`word_tokenizer` -- a word-level tokenizer over ``w0 w1 ...``: a text of ``n`` words
  is exactly ``n`` tokens, so benchmarks choose input lengths exactly (:func:`word_texts`).
- :func:`build_btok_model` -- a :class:`~btok_model.BTokModel` on such a decoder and tokenizer.
"""

from __future__ import annotations

import torch

__all__ = [
    "QWEN2VL_2B_TEXT",
    "CPU_TINY",
    "SPECIAL_TOKENS",
    "build_decoder",
    "word_tokenizer",
    "word_texts",
    "num_words_for",
    "build_btok_model",
]

# Qwen2-VL-2B's text model (M-RoPE changes only the position ids, not the work: plain RoPE here)
QWEN2VL_2B_TEXT = dict(
    hidden_size=1536,
    num_attention_heads=12,
    num_key_value_heads=2,
    head_dim=128,
    intermediate_size=8960,
    vocab_size=151936,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)
CPU_TINY = dict(
    hidden_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    intermediate_size=384,
    vocab_size=1024,
    rope_theta=1_000_000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)

SPECIAL_TOKENS = ("<pad>", "<unk>", "<|im_start|>", "<|im_end|>")
# words of the synthetic vocabulary: enough for random texts, far below a real vocabulary
MAX_WORDS = 32_000


def build_decoder(dims: dict, layers: int, seed: int):
    """A random fp32 ``Qwen2ForCausalLM`` on the CPU (``torch.manual_seed(seed)`` before the init).

    Args:
        dims: the config's dimensions (:data:`QWEN2VL_2B_TEXT`, :data:`CPU_TINY`).
        layers: decoder layers.
        seed: weight seed.
    """
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        num_hidden_layers=layers, max_position_embeddings=32768, attention_dropout=0.0, use_cache=False, **dims
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config)


def word_tokenizer(num_words: int):
    """A fast tokenizer whose vocabulary is :data:`SPECIAL_TOKENS` then the words ``w0`` ...
    ``w{num_words - 1}`` (``w{i}`` has id ``len(SPECIAL_TOKENS) + i``), split on whitespace,
    no special tokens added to a text. The target template's ``<|im_start|>`` / ``<|im_end|>``
    are special tokens; other unknown words become ``<unk>``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    if num_words < 1:
        raise ValueError(f"num_words must be >= 1, got {num_words}")
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    vocab.update({f"w{i}": len(SPECIAL_TOKENS) + i for i in range(num_words)})
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>")
    tokenizer.add_tokens(["<|im_start|>", "<|im_end|>"], special_tokens=True)
    return tokenizer


def num_words_for(vocab_size: int, num_btoks: int) -> int:
    """Words of a :func:`word_tokenizer` whose ids and ``num_btoks`` BTok ids fit in ``vocab_size``."""
    return min(MAX_WORDS, vocab_size - len(SPECIAL_TOKENS) - num_btoks)


def word_texts(lengths: list[int], num_words: int, seed: int) -> list[str]:
    """Texts of exactly ``lengths[i]`` tokens for :func:`word_tokenizer`, words drawn
    uniformly with ``torch.Generator().manual_seed(seed)``."""
    g = torch.Generator().manual_seed(seed)
    words = torch.randint(0, num_words, (sum(lengths),), generator=g).tolist()
    out, start = [], 0
    for n in lengths:
        out.append(" ".join(f"w{i}" for i in words[start : start + n]))
        start += n
    return out


def build_btok_model(dims: dict, layers: int, seed: int, num_btoks: int, attn_implementation: str = "sdpa"):
    """A :class:`~btok_model.BTokModel` (full fine-tuning, mean pooling, the method's default
    temperature and generative weight) on :func:`build_decoder` and :func:`word_tokenizer`;
    fp32 on the CPU. Returns ``(model, num_words)``."""
    from btok_model import BTokModel

    num_words = num_words_for(dims["vocab_size"], num_btoks)
    backbone = build_decoder(dims, layers, seed)
    model = BTokModel.from_backbone(
        backbone, num_btoks=num_btoks, tokenizer=word_tokenizer(num_words), attn_implementation=attn_implementation
    )
    return model, num_words
