"""Tiny offline BTok fixtures: a character-level tokenizer and random 2-layer backbones.

Nothing is downloaded. The tokenizer is a ``tokenizers`` WordLevel model over single
characters (so any lower-case text tokenises), with the chat markers of the target template
as special tokens. Models: 2 layers, hidden 64, head dim 16, GQA 4/2, fp32, vocabulary 64
(the tokenizer uses 48 ids, so the 4 BToks fit without a resize; ``vocab_size=None`` makes
the vocabulary exactly the tokenizer's, so adding BToks resizes it).
"""

from __future__ import annotations

import string

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from btok_model import BTokModel

CHARS = string.ascii_lowercase + string.digits + " .,?!'-\n"
SPECIAL = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
# The text model of every tiny backbone in the tests (a vocabulary size added per use).
TINY_TEXT_CONFIG = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    pad_token_id=0,
)


def char_tokenizer() -> PreTrainedTokenizerFast:
    """A fresh character-level tokenizer (48 ids: 4 special + 44 characters)."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL + list(CHARS))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>")
    tokenizer.add_tokens(["<|im_start|>", "<|im_end|>"], special_tokens=True)
    return tokenizer


def tiny_backbone(family: str = "llama", seed: int = 0, vocab_size: int | None = 64, **overrides) -> torch.nn.Module:
    """A random fp32 causal LM: ``"llama"`` ties its LM head to the embedding, ``"qwen2"`` does not."""
    common = dict(TINY_TEXT_CONFIG, vocab_size=vocab_size or len(char_tokenizer()), **overrides)
    torch.manual_seed(seed)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common, head_dim=16, tie_word_embeddings=True))
    elif family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common, tie_word_embeddings=False))
    else:
        raise ValueError(family)
    return widened(model)


def widened(model):
    """``model`` in fp32 with wider random weights than the default init: the outputs then
    depend strongly on the attention pattern and the positions, so a wrong mask cannot hide
    under a tolerance."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.08)
    return model.float()


def tiny_btok(family: str = "llama", seed: int = 0, attn: str = "btok_triton", **kwargs) -> BTokModel:
    """A BTokModel on a tiny random backbone (kwargs go to ``from_backbone``)."""
    vocab_size = kwargs.pop("vocab_size", 64)
    backbone = tiny_backbone(family, seed, vocab_size=vocab_size)
    return BTokModel.from_backbone(backbone, tokenizer=char_tokenizer(), attn_implementation=attn, **kwargs)


EXAMPLES = [
    {"query": "what is a cat?", "positive": "a small furry animal", "negatives": ["a red fruit", "a tall tree"]},
    {"query": "capital of france", "positive": "paris", "target": "paris is the capital of france."},
    {"query": "opposite of hot", "positive": "cold", "target": None, "negatives": ["warm"]},
    {"query": "2 + 2", "positive": "four", "target": "it is 4"},
]


def snapshot(model: BTokModel) -> dict[str, torch.Tensor]:
    """A copy of every backbone parameter, by name."""
    return {n: p.detach().clone() for n, p in model.backbone.named_parameters()}


def adamw_step(model: BTokModel, examples: list[dict]) -> set[str]:
    """One AdamW step (lr 1e-2, weight decay 0.1) on ``examples``; returns the names of the
    backbone parameters that require gradients."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    model(**model.collate(examples)).loss.backward()
    opt.step()
    return {n for n, p in model.backbone.named_parameters() if p.requires_grad}
