"""Embedders without BToks: last-token or mean pooling of a backbone's last layer (the
``pooling`` names ``"last"`` and ``"mean"``, as for a BTok model's BToks).

:class:`PooledEmbedder` is the comparison a BTok model has to beat. Untrained, it is the
``--baseline last-token|mean`` of ``python -m btok_model.evaluate`` (no token is added to the
tokenizer or the model). It also trains with the same Trainer, collation and InfoNCE as a
BTok model (the "last-token trained contrastively" row of the demo, or VLM2Vec: last-token
pooling on Qwen2-VL with images). Everything but where its pooled tokens sit -- the input's own
tokens instead of K BToks after it -- is the base class's
(:class:`~btok_model.embedder.base.Embedder`): the same loader, collator (K = 0, no targets),
forward, loss, ``encode``, save and load.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from ..backend import ATTN_IMPLEMENTATION
from .backbone import load_backbone, make_collator
from .base import Embedder
from .collate import BTokCollator, concat_ranges
from .config import PooledConfig

__all__ = ["PooledEmbedder"]


class PooledEmbedder(Embedder):
    """A causal LM (or vision-language model) used as an embedder with last-token or mean
    pooling, L2-normalised. Its settings are ``model.config``
    (:class:`~btok_model.embedder.config.PooledConfig`).

    Args:
        backbone: a transformers model (or a ``peft.PeftModel`` around one).
        tokenizer: its tokenizer.
        config: the settings.
        processor: a vision-language backbone's processor (or image processor), or None.
        no_video_reason: why the processor has no video processor, or None.
    """

    config_class = PooledConfig

    @classmethod
    def from_backbone(
        cls,
        name_or_model: str | os.PathLike | nn.Module,
        tokenizer=None,
        pooling: str | None = None,
        *,
        config: PooledConfig | None = None,
        lora=None,
        processor=None,
        attn_implementation: str | None = ATTN_IMPLEMENTATION,
        **settings_and_from_pretrained_kwargs,
    ) -> PooledEmbedder:
        """Wrap a backbone (an instance, or a name / folder / ``"smollm2"``), loaded by
        :func:`~btok_model.embedder.backbone.load_backbone` (as ``BTokModel.from_backbone``).

        Args:
            name_or_model: the backbone.
            tokenizer: a tokenizer or a name / folder (default: from ``name_or_model``).
            pooling: ``"last"`` (the last input token, default) or ``"mean"`` (a setting, see
                below; ``"last-token"``, the name in btok 0.1, warns and means ``"last"``).
            config: the settings (:class:`~btok_model.embedder.config.PooledConfig`), or None:
                built from the setting keywords.
            lora: None / 0 (every weight trains), a LoRA rank (on the language model's linear
                layers), or a ``peft.LoraConfig``.
            processor, attn_implementation: as for ``BTokModel.from_backbone``.
            **settings_and_from_pretrained_kwargs: fields of ``PooledConfig`` (``temperature=``,
                ``max_length=``, ``kernel=``, ``matryoshka_dims=``, ... ; not together with
                ``config``), and for loading by name ``from_pretrained`` keywords: ``dtype``,
                ``gguf_file``, ... .
        """
        keywords = dict(settings_and_from_pretrained_kwargs)
        if pooling is not None:
            keywords["pooling"] = pooling
        config, from_pretrained_kwargs = PooledConfig.from_keywords(config, keywords)
        loaded = load_backbone(name_or_model, tokenizer, processor, attn_implementation, **from_pretrained_kwargs)
        return cls._from_loaded(loaded, config, lora=lora)

    def _make_collator(self, no_video_reason: str | None) -> BTokCollator:
        return make_collator(
            self.backbone,
            self.tokenizer,
            [],
            self.processor,
            no_video_reason=no_video_reason,
            max_length=self.config.max_length,
            with_targets=False,
        )

    def _pooled_rows(
        self, starts: torch.Tensor, input_ends: torch.Tensor, pooling: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The last input token (``"last"``) or every input token (``"mean"``)."""
        if pooling == "last":
            return input_ends - 1, torch.ones_like(input_ends)
        lengths = input_ends - starts
        return concat_ranges(starts, lengths), lengths
