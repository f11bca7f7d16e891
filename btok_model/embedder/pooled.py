"""Embedders without BToks: last-token or mean pooling of a backbone's last layer.

:class:`PooledEmbedder` is the comparison a BTok model has to beat. Untrained, it is the
``--baseline last-token|mean`` of ``python -m btok_model.evaluate`` (no token is added to the
tokenizer or the model). It also trains with the same Trainer, collation and InfoNCE as a
BTok model (the "last-token trained contrastively" row of the demo, or VLM2Vec: last-token
pooling on Qwen2-VL with images): it offers the training interface of
:class:`~btok_model.BTokModel` (``collator``, ``embed_batch``, ``compute_loss``,
``generative_weight`` fixed at 0, ``save_pretrained``/``from_pretrained``), with K = 0 and the
pooling over the input tokens themselves. It loads its backbone and builds its collator
(text, or images and video on a vision-language backbone) through the same functions as a
BTok model (:mod:`btok_model.embedder.backbone`).
"""

from __future__ import annotations

import json
import os

import torch
from torch import nn

from ..backend import ATTN_IMPLEMENTATION
from .backbone import (
    load_backbone,
    load_saved_backbone,
    make_collator,
    save_backbone,
    transformers_model,
)
from .modeling import BTokModel, BTokOutput, enable_activation_checkpointing, media_inputs, to_device
from .peer_masks import condensation_attention_mask
from .tokens import lora_target_modules, wrap_peft

__all__ = ["POOLINGS", "PooledEmbedder"]

POOLINGS = ("last-token", "mean")
CONFIG_NAME = "pooled_config.json"


class PooledEmbedder(nn.Module):
    """A causal LM (or vision-language model) used as an embedder with last-token or mean
    pooling, L2-normalised.

    Args:
        backbone: a transformers model (or a ``peft.PeftModel`` around one).
        tokenizer: its tokenizer.
        pooling: ``"last-token"`` (the last input token's state) or ``"mean"`` (mean over
            the input tokens).
        temperature: InfoNCE temperature when trained.
        max_length: longest input accepted (None: the backbone's ``max_position_embeddings``).
        processor: a vision-language backbone's processor (or image processor), or None.
        no_video_reason: why the processor has no video processor, or None.
    """

    def __init__(
        self,
        backbone,
        tokenizer,
        pooling: str = "last-token",
        temperature: float = 0.02,
        max_length=None,
        processor=None,
        *,
        no_video_reason: str | None = None,
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.backbone, self.tokenizer, self.processor = backbone, tokenizer, processor
        self.pooling, self.temperature, self.max_length = pooling, float(temperature), max_length
        self.gather_across_ranks = True
        self.collator = make_collator(
            backbone,
            tokenizer,
            [],
            processor,
            no_video_reason=no_video_reason,
            max_length=max_length,
            with_targets=False,
        )

    # -- construction and saving --------------------------------------------------------------
    @classmethod
    def from_backbone(
        cls,
        name_or_model,
        tokenizer=None,
        pooling: str = "last-token",
        *,
        lora=None,
        processor=None,
        attn_implementation: str | None = ATTN_IMPLEMENTATION,
        temperature: float = 0.02,
        max_length: int | None = None,
        **from_pretrained_kwargs,
    ):
        """Wrap a backbone (an instance, or a name / folder / ``"smollm2"``), loaded by
        :func:`~btok_model.embedder.backbone.load_backbone` (as ``BTokModel.from_backbone``).

        Args:
            name_or_model: the backbone.
            tokenizer: a tokenizer or a name / folder (default: from ``name_or_model``).
            pooling: ``"last-token"`` or ``"mean"``.
            lora: None / 0 (every weight trains), a LoRA rank (on the language model's linear
                layers), or a ``peft.LoraConfig``.
            processor, attn_implementation: as for ``BTokModel.from_backbone``.
            temperature, max_length: the InfoNCE temperature and the longest input.
            **from_pretrained_kwargs: loading by name only: ``dtype``, ``gguf_file``, ... .
        """
        loaded = load_backbone(name_or_model, tokenizer, processor, attn_implementation, **from_pretrained_kwargs)
        model = loaded.model
        if lora:
            import peft

            if isinstance(lora, int) and not isinstance(lora, bool):
                lora = peft.LoraConfig(r=lora, lora_alpha=2 * lora, target_modules=lora_target_modules(model))
            model = wrap_peft(model, lora)
        return cls(
            model,
            loaded.tokenizer,
            pooling,
            temperature,
            max_length,
            loaded.processor,
            no_video_reason=loaded.no_video_reason,
        )

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """The backbone (LoRA merged into a copy), the tokenizer, the processor and ``pooled_config.json``."""
        save_backbone(self.backbone, self.tokenizer, self.processor, path)
        with open(os.path.join(path, CONFIG_NAME), "w") as f:
            json.dump({"pooling": self.pooling, "temperature": self.temperature, "max_length": self.max_length}, f)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, attn_implementation: str | None = ATTN_IMPLEMENTATION, **kwargs):
        """Load a folder written by :meth:`save_pretrained` (in the dtype it was saved in unless ``dtype`` is given)."""
        with open(os.path.join(path, CONFIG_NAME)) as f:
            settings = json.load(f)
        loaded = load_saved_backbone(path, attn_implementation, **kwargs)
        return cls(
            loaded.model,
            loaded.tokenizer,
            **settings,
            processor=loaded.processor,
            no_video_reason=loaded.no_video_reason,
        )

    # -- the training interface of BTokModel ----------------------------------------------------
    @property
    def generative_weight(self) -> float:
        """Always 0: without BToks there is no condensation target."""
        return 0.0

    @generative_weight.setter
    def generative_weight(self, value: float) -> None:
        if value != 0:
            raise ValueError(f"a PooledEmbedder has no generative loss; generative_weight must stay 0, got {value}")

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def _decoder(self) -> nn.Module:
        model = transformers_model(self.backbone)
        return getattr(model, model.base_model_prefix, model)

    @property
    def attn_implementation(self) -> str:
        return transformers_model(self.backbone).config._attn_implementation

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict | None = None) -> None:
        enable_activation_checkpointing(transformers_model(self.backbone), activation_checkpointing_kwargs)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        enable_activation_checkpointing(transformers_model(self.backbone), gradient_checkpointing_kwargs)

    def collate(self, examples: list[dict]) -> dict:
        return self.collator(examples)

    def _pool_packed(self, hidden: torch.Tensor, cu: list[int]) -> torch.Tensor:
        """fp32 ``[n, H]`` L2-normalised pools of the ``n`` packed sequences bounded by ``cu``."""
        starts = torch.tensor(cu[:-1], dtype=torch.long)
        ends = torch.tensor(cu[1:], dtype=torch.long)
        if self.pooling == "last-token":
            pooled = hidden[(ends - 1).to(hidden.device)].float()
        else:
            lens = ends - starts
            seq = torch.repeat_interleave(torch.arange(lens.numel()), lens).to(hidden.device)
            sums = hidden.new_zeros((lens.numel(), hidden.shape[-1]), dtype=torch.float32)
            sums.index_add_(0, seq, hidden.float())
            pooled = sums / lens.to(hidden.device, torch.float32)[:, None]
        return nn.functional.normalize(pooled, dim=-1)

    def embed_batch(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, None, int]:
        """``(query [Nq, H], candidates [Nc, H], None, 0)`` of a collated batch, one packed pass
        (a vision-language batch's pixel inputs included)."""
        device = self.device
        layout = batch["btok_layout"].to(device)
        kwargs = dict(
            input_ids=to_device(batch["input_ids"], device),
            position_ids=to_device(batch["position_ids"], device),
            use_cache=False,
            **media_inputs(batch, device),
        )
        if self.attn_implementation == ATTN_IMPLEMENTATION:
            kwargs["btok_layout"] = layout
        else:
            dtype = transformers_model(self.backbone).get_input_embeddings().weight.dtype
            kwargs["attention_mask"] = condensation_attention_mask(layout, self.attn_implementation, dtype, device)
        hidden = self._decoder(**kwargs).last_hidden_state[0]
        pooled = self._pool_packed(hidden, layout.host_cu_seqlens)
        num_queries = batch["query_btok_index"].shape[0]
        return pooled[:num_queries], pooled[num_queries:], None, 0

    # The same InfoNCE, cross-rank gather and output as a BTok model (one definition).
    compute_loss = BTokModel.compute_loss

    def forward(
        self,
        input_ids,
        position_ids,
        btok_layout,
        labels,
        query_btok_index,
        candidate_btok_index,
        positive_index,
        num_target_tokens=None,
        pixel_values=None,
        image_grid_thw=None,
        pixel_values_videos=None,
        video_grid_thw=None,
    ) -> BTokOutput:
        batch = dict(
            input_ids=input_ids,
            position_ids=position_ids,
            btok_layout=btok_layout,
            query_btok_index=query_btok_index,
            pixel_values=pixel_values,
            image_grid_thw=image_grid_thw,
            pixel_values_videos=pixel_values_videos,
            video_grid_thw=video_grid_thw,
        )
        query, candidates, _, _ = self.embed_batch(batch)
        return self.compute_loss(query, candidates, positive_index, None)

    # -- inference -----------------------------------------------------------------------------
    def encode(self, texts: list, batch_size: int = 32, show_progress_bar: bool = False) -> torch.Tensor:
        """fp32 ``[N, H]`` L2-normalised embeddings on the CPU (see :meth:`encode_poolings`)."""
        return self.encode_poolings(texts, (self.pooling,), batch_size, show_progress_bar)[self.pooling]

    def encode_poolings(
        self, texts: list, poolings: tuple[str, ...], batch_size: int = 32, show_progress_bar: bool = False
    ) -> dict[str, torch.Tensor]:
        """Embeddings under several poolings from one forward pass per batch.

        Inputs are strings, or on a vision-language backbone also ``{"text", "image", "video"}``
        dicts (as for ``BTokModel.encode``). They are sorted by length into batches of ``batch_size``, each batch one packed
        ``[1, T]`` row with ``"btok_triton"`` (no padding), right-padded rows otherwise;
        results come back in input order, under ``torch.inference_mode``.

        Returns:
            ``{pooling: fp32 [N, H]}`` on the CPU, L2-normalised.
        """
        from tqdm.auto import tqdm

        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        for pooling in poolings:
            if pooling not in POOLINGS:
                raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        sequences, media = self.collator.encode_for_embedding(texts)
        order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
        hidden_size = transformers_model(self.backbone).get_input_embeddings().weight.shape[1]
        out = {p: torch.empty(len(sequences), hidden_size, dtype=torch.float32) for p in poolings}
        was_training, pooling = self.training, self.pooling
        self.eval()
        try:
            with torch.inference_mode():
                for start in tqdm(range(0, len(order), batch_size), desc="Encoding", disable=not show_progress_bar):
                    index = order[start : start + batch_size]
                    hidden, cu = self._hidden_states([sequences[i] for i in index], [media[i] for i in index])
                    for p in poolings:
                        self.pooling = p
                        out[p][index] = self._pool_packed(hidden, cu).cpu()
        finally:
            self.pooling = pooling
            self.train(was_training)
        return out

    def _hidden_states(self, sequences: list[list[int]], media: list) -> tuple[torch.Tensor, list[int]]:
        """Last-layer states ``[total tokens, H]`` of the sequences, back to back, and their
        bounds (``media``: each one's processed image / video, None for text)."""
        device = self.device
        if all(m is None for m in media):
            media = None
        if self.attn_implementation == ATTN_IMPLEMENTATION:
            batch = self.collator.pack_sequences(sequences, media=media)
            layout = batch["btok_layout"].to(device)
            hidden = self._decoder(
                input_ids=to_device(batch["input_ids"], device),
                position_ids=to_device(batch["position_ids"], device),
                btok_layout=layout,
                use_cache=False,
                **media_inputs(batch, device),
            ).last_hidden_state[0]
            return hidden, list(layout.host_cu_seqlens)
        batch = self.collator.pad_sequences(sequences, media=media)
        mask = to_device(batch["attention_mask"], device)
        hidden = self._decoder(
            input_ids=to_device(batch["input_ids"], device),
            attention_mask=mask,
            position_ids=to_device(batch["position_ids"], device),
            use_cache=False,
            **media_inputs(batch, device),
        ).last_hidden_state
        return hidden[mask.bool()], [0] + torch.cumsum(mask.sum(1), 0).tolist()
