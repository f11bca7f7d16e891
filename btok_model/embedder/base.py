"""The embedder base class: what a BTok model and the no-BTok baseline share.

:class:`Embedder` holds a backbone (a transformers model, PEFT-wrapped or not), its tokenizer,
processor and collator, and its settings (``model.config``). It runs a packed batch (or padded
rows) to the decoder's last-layer states, pools them (:mod:`.pooling`), scores the targets'
next tokens, adds up the losses (:mod:`.losses`), saves and loads through the one backbone
loader, and merges LoRA adapters; ``encode`` is the encode engine's (:mod:`.encode`). Its two
kinds differ only in where the pooled tokens sit:

* :class:`~btok_model.BTokModel`: the K BToks after each input, their mean (or the last);
* :class:`~btok_model.embedder.pooled.PooledEmbedder`: the input's own tokens, their mean or
  the last one.

A subclass sets ``config_class`` and implements :meth:`Embedder._pooled_rows` and
:meth:`Embedder._make_collator` (private: hooks for the two subclasses, not API). The methods
with a leading underscore (the forward to last-layer states, the pooling plan) are the
package's own: :mod:`.encode`, :mod:`.twopass` and :mod:`.btok_cache` call them.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from transformers.utils import ModelOutput

from btok_kernels import CondensationLayout

from ..backend import ATTN_IMPLEMENTATION
from ..backend.kernel_settings import set_kernel_settings
from ..deprecation import warn_deprecated
from . import encode as engine
from .backbone import Backbone, load_adapters, load_saved_backbone, save_backbone, transformers_model
from .collate import IGNORE_INDEX, BTokCollator, concat_ranges
from .config import EmbedderConfig
from .losses import (
    LossWeights,
    authors_next_token_loss,
    contrastive_loss,
    next_token_loss,
)
from .multimodal import check_processor, check_video_layout, vision_family
from .packed_batch import BTokBatch, to_device
from .peer_masks import condensation_attention_mask
from .pooling import PoolingPlan, sequence_spans
from .similarity import check_dims
from .tokens import make_trainable

__all__ = [
    "BTokOutput",
    "BatchEmbeddings",
    "Embedder",
    "enable_activation_checkpointing",
]


@dataclass
class BTokOutput(ModelOutput):
    """Output of an embedder's ``forward`` / ``compute_loss``.

    Attributes:
        loss: fp32 scalar, the contrastive part + ``generative_weight`` x the generative part
            (:class:`~btok_model.embedder.losses.LossWeights`; on one process the parts are the
            losses themselves).
        contrastive_loss: fp32 scalar, InfoNCE (Matryoshka: summed over the dimensions; times
            this rank's query share).
        generative_loss: fp32 scalar, mean next-token loss per target token (times this rank's
            target share), or None (no target in the batch, or generative weight 0).
        query_embeddings: fp32 ``[Nq, H]``, L2-normalised (``[Nq, K, H]``, each vector
            normalised, when ``config.similarity`` is ``"maxsim"``).
        candidate_embeddings: fp32 ``[Nc, H]`` (or ``[Nc, K, H]``), this rank's candidates.
    """

    loss: torch.Tensor | None = None
    contrastive_loss: torch.Tensor | None = None
    generative_loss: torch.Tensor | None = None
    query_embeddings: torch.Tensor | None = None
    candidate_embeddings: torch.Tensor | None = None


@dataclass(frozen=True)
class BatchEmbeddings:
    """What the embedding pass of a packed batch gives (:meth:`Embedder.embed_batch`).

    Attributes:
        query_embeddings: fp32 ``[Nq, H]``, L2-normalised; ``[Nq, K, H]`` with each of the K
            vectors L2-normalised when the model's ``config.similarity`` is ``"maxsim"``.
        candidate_embeddings: fp32 ``[Nc, H]`` (``[Nc, K, H]``), likewise.
        generative_loss: fp32 scalar, the mean next-token loss over the batch's scored target
            tokens, or None (no target, or not asked for).
        num_target_tokens: how many target tokens that mean is over (0 without one).
    """

    query_embeddings: torch.Tensor
    candidate_embeddings: torch.Tensor
    generative_loss: torch.Tensor | None = None
    num_target_tokens: int = 0


def enable_activation_checkpointing(model: nn.Module, kwargs: dict | None = None) -> None:
    """Turn on activation checkpointing in a transformers model's layers, non-reentrant by
    default, through ``activation_checkpointing_enable`` (transformers >= 5.24) or the older
    ``gradient_checkpointing_enable`` (which 5.24 deprecates with a warning)."""
    kwargs = kwargs or {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


class Embedder(nn.Module):
    """A transformers decoder used as an embedder (see the module docstring).

    Build one with a subclass's ``from_backbone`` (a fresh backbone) or :meth:`from_pretrained`
    (a saved model); the constructor takes parts that are already prepared.

    Args:
        backbone: the transformers model, or a ``peft.PeftModel`` around it.
        tokenizer: its tokenizer.
        config: the settings (an instance of the subclass's ``config_class``).
        processor: a vision-language backbone's processor (or image processor), or None (text only).
        no_video_reason: why the processor has no video processor, or None.
    """

    config_class: ClassVar[type[EmbedderConfig]]
    # Read by the transformers Trainer: the loss is already this model's own mean, so the
    # Trainer passes no num_items_in_batch and divides the loss by the accumulation steps.
    accepts_loss_kwargs = False

    def __init__(self, backbone: nn.Module, tokenizer, config: EmbedderConfig, processor=None, *, no_video_reason=None):
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.config = config
        self.processor = processor
        check_processor(transformers_model(backbone), processor)
        set_kernel_settings(backbone, config.kernel)
        self._matryoshka_sizes()  # checked against H here, not at the first step
        self.collator = self._make_collator(no_video_reason)

    def __getattr__(self, name: str):
        # nn.Module's lookup (parameters, buffers, submodules) first; then the names renamed
        # after btok 0.1 (_RENAMED), which keep working for one release with a DeprecationWarning.
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name not in _RENAMED:
                raise
        new, value = _RENAMED[name]
        warn_deprecated(f"{type(self).__name__}.{name} is deprecated: {new}; it will be removed in the next release")
        return value(self)

    # -- what a subclass says ----------------------------------------------------------------
    def _make_collator(self, no_video_reason: str | None) -> BTokCollator:
        """The collator of this embedder (built once, in the constructor)."""
        raise NotImplementedError

    def _pooled_rows(
        self, starts: torch.Tensor, input_ends: torch.Tensor, pooling: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Where the pooled tokens of each sequence sit.

        Args:
            starts: int64 ``[n]``, each sequence's first row in the flattened states.
            input_ends: int64 ``[n]``, the row after each sequence's input (where BToks would start).
            pooling: ``"mean"`` or ``"last"`` (:data:`~.config.POOLINGS`).

        Returns:
            ``(rows int64 [M], counts int64 [n])``: the pooled rows, sequence by sequence, and
            how many each sequence has (host tensors).
        """
        raise NotImplementedError

    @classmethod
    def _trained_token_ids(cls, tokenizer, config: EmbedderConfig) -> list[int]:
        """Token ids whose embedding rows train in every mode (BToks); none by default."""
        return []

    # -- construction and saving -------------------------------------------------------------
    @classmethod
    def _from_loaded(cls, loaded: Backbone, config: EmbedderConfig, *, lora=None, freeze_backbone: bool = False):
        """An embedder on a loaded backbone, with what trains chosen (see
        :func:`~btok_model.embedder.tokens.make_trainable`)."""
        ids = cls._trained_token_ids(loaded.tokenizer, config)
        backbone = make_trainable(loaded.model, ids, lora=lora, freeze_backbone=freeze_backbone)
        return cls(backbone, loaded.tokenizer, config, loaded.processor, no_video_reason=loaded.no_video_reason)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        attn_implementation: str | None = ATTN_IMPLEMENTATION,
        *,
        lora=None,
        freeze_backbone: bool = False,
        kernel=None,
        merge_adapters: bool = False,
        **from_pretrained_kwargs,
    ):
        """Load a model written by :meth:`save_pretrained`.

        Args:
            path: the folder.
            attn_implementation: the attention backend (None keeps the saved config's).
            lora, freeze_backbone: what trains from here on (as in ``from_backbone``); by
                default everything (saved LoRA adapters were merged into the weights).
            merge_adapters: for a folder saved with unmerged adapters
                (``save_pretrained(merge_adapters=False)``): merge them into the weights (then it
                trains as any folder), or keep them apart (the default: inference only, the
                adapters computed as during training).
            kernel: kernel settings replacing the saved ones
                (:class:`~btok_model.backend.kernel_settings.KernelSettings` or a dict), or None.
            **from_pretrained_kwargs: passed to ``from_pretrained``; ``dtype`` defaults to
                ``"auto"`` (the dtype the model was saved in: a reload gives the same model).
        """
        config = cls.config_class.load(path)
        if kernel is not None:
            config.kernel = type(config.kernel).from_value(kernel)
        loaded = load_saved_backbone(path, attn_implementation, **from_pretrained_kwargs)
        family = vision_family(loaded.model)
        check_video_layout(config.video_layout, family, os.fspath(path))
        config.video_layout = family and family.video_layout  # the layout it computes with from here on
        adapted = load_adapters(loaded, path, merge=merge_adapters)
        if adapted is not loaded and not merge_adapters:
            if lora or freeze_backbone:
                raise ValueError(
                    f"{path} holds unmerged adapters, loaded for inference: pass merge_adapters=True to train on it"
                )
            return cls(
                adapted.model, adapted.tokenizer, config, adapted.processor, no_video_reason=adapted.no_video_reason
            )
        return cls._from_loaded(adapted, config, lora=lora, freeze_backbone=freeze_backbone)

    def save_pretrained(self, path: str | os.PathLike, *, merge_adapters: bool = True) -> None:
        """Write the backbone, the tokenizer (the processor) and the settings file to ``path``.

        The folder is a plain transformers model folder (weights, ``config.json``, tokenizer,
        and for a VL model the processor's configs) plus ``config.CONFIG_NAME`` (with the
        Qwen3-VL video layout the installed transformers gives, ``video_layout``). PEFT adapters
        are merged into a copy of the weights first (:func:`~.backbone.save_backbone`), so
        loading needs no PEFT and the live model keeps its adapters. A merged LoRA layer
        computes ``x (W + s B A)`` instead of ``x W + s (x A) B``: embeddings agree to float
        rounding, not bit for bit (in bf16, to bf16 rounding). ``merge_adapters=False`` saves
        the base weights and the adapters apart (``adapter/``, PEFT's format), as the authors
        keep and evaluate them; :meth:`from_pretrained` loads them either way.
        """
        save_backbone(self.backbone, self.tokenizer, self.processor, path, merge_adapters=merge_adapters)
        family = vision_family(transformers_model(self.backbone))
        dataclasses.replace(self.config, video_layout=family and family.video_layout).save(path)

    def merge_adapters(self):
        """Fold PEFT adapters (LoRA, trainable token rows) into the backbone's weights, in place:
        the same embeddings to float rounding, without the adapters' per-layer cost. Returns self."""
        if hasattr(self.backbone, "merge_and_unload"):
            self.backbone = self.backbone.merge_and_unload()
        return self

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict | None = None) -> None:
        """Activation checkpointing in the backbone's layers (non-reentrant by default)."""
        enable_activation_checkpointing(transformers_model(self.backbone), activation_checkpointing_kwargs)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """The name transformers < 5.24 (and its Trainer) use for :meth:`activation_checkpointing_enable`."""
        enable_activation_checkpointing(transformers_model(self.backbone), gradient_checkpointing_kwargs)

    # -- parts ----------------------------------------------------------------------------------
    @property
    def decoder(self) -> nn.Module:
        """The backbone without its LM head: its forward returns ``last_hidden_state``."""
        model = transformers_model(self.backbone)
        return getattr(model, model.base_model_prefix, model)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def embedding_dim(self) -> int:
        """``H``, the size of an embedding."""
        return transformers_model(self.backbone).get_input_embeddings().weight.shape[1]

    def _matryoshka_sizes(self) -> list[int]:
        """``config.matryoshka_dims`` as ints (``"full"`` = H); empty when off.

        Raises:
            ValueError: a dimension larger than H (or H beside ``"full"``).
        """
        dims = self.config.matryoshka_dims
        return check_dims(dims, self.embedding_dim, "matryoshka_dims") if dims else []

    # -- collation ------------------------------------------------------------------------------
    def collate(self, examples: list[dict]) -> BTokBatch:
        """One packed training batch from ``examples`` (see :class:`~btok_model.embedder.collate.BTokCollator`);
        targets only while the configured generative weight is not 0."""
        return self.collator(examples, with_targets=self.config.generative_weight != 0)

    # -- the forward to last-layer states ------------------------------------------------------
    def _last_hidden_states(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        *,
        layout: CondensationLayout | None = None,
        attention_mask: torch.Tensor | None = None,
        media: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The decoder's last-layer states of a packed row or of padded rows, flattened.

        Args:
            input_ids: int64 ``[1, T]`` (packed) or ``[B, S]`` (padded), on the model's device.
            position_ids: int64 ``[1, T]`` / ``[B, S]``, or ``[3, ...]`` M-RoPE positions.
            layout: the packed row's layout: ``"btok_triton"`` reads it; the peer
                implementations get it as a mask (:func:`~.peer_masks.condensation_attention_mask`).
            attention_mask: int64 ``[B, S]`` padding mask of padded rows (instead of ``layout``).
            media: the pixel inputs (:data:`~.media.MEDIA_BATCH_KEYS`), on the device.

        Returns:
            ``[T, H]`` or ``[B * S, H]`` in the model's dtype.
        """
        kwargs = dict(input_ids=input_ids, position_ids=position_ids, use_cache=False, **(media or {}))
        if layout is None:
            return self.decoder(**kwargs, attention_mask=attention_mask).last_hidden_state.flatten(0, 1)
        impl = transformers_model(self.backbone).config._attn_implementation
        if impl == ATTN_IMPLEMENTATION:
            kwargs["btok_layout"] = layout
        else:
            dtype = transformers_model(self.backbone).get_input_embeddings().weight.dtype
            kwargs["attention_mask"] = condensation_attention_mask(layout, impl, dtype, input_ids.device)
        return self.decoder(**kwargs).last_hidden_state[0]

    def _pooling_plan(self, spans: tuple[torch.Tensor, torch.Tensor], pooling: str) -> PoolingPlan:
        """The :class:`~.pooling.PoolingPlan` of sequences ``spans = (starts, input ends)``
        (:func:`~.pooling.sequence_spans`, :func:`~.pooling.padded_spans`): :meth:`_pooled_rows`,
        on the device before the forward is queued."""
        rows, counts = self._pooled_rows(*spans, pooling)
        return PoolingPlan.on_device(rows, counts, pooling, self.device)

    # -- training ---------------------------------------------------------------------------------
    def embed_batch(self, batch: BTokBatch, generative: bool = True, normalization: str = "token") -> BatchEmbeddings:
        """Embeddings (and generative loss) of a packed batch, in one forward pass.

        Args:
            batch: from :meth:`collate` (on any device; it is moved to the model's).
            generative: score the batch's targets (the LM head runs only on the target rows
                whose next token is scored, never ``[T, vocab]``); False leaves the loss None.
            normalization: the generative loss as a token mean (``"token"``) or with the
                authors' per-side weighting over the batch's examples (``"authors"``, see
                :class:`~btok_model.embedder.losses.LossWeights`).

        Returns:
            :class:`BatchEmbeddings`: the first ``Nq`` sequences' embeddings are the queries',
            the others the candidates'. Targets may sit on any sequence.
        """
        device = self.device
        batch = batch.to(device)
        layout = batch.btok_layout
        num_targets = batch.num_target_tokens if generative else 0
        if num_targets:
            rows = _target_rows(layout)  # row r predicts the token at r + 1
            labels = batch.labels[0]
            host_next = labels[(rows + 1).to(labels.device)]
            if normalization == "authors":
                on_query, side_tokens, side_sequences = _target_sides(layout, rows, host_next, batch.num_queries)
            next_labels = to_device(host_next, device)
            rows = to_device(rows, device)
            # Only the rows whose next token is scored run the LM head (not the rows before a
            # target's image tokens or inside its prefix). A stable sort puts them first in row
            # order; their count is known on the host, so nothing waits for the device.
            keep = torch.argsort((next_labels == IGNORE_INDEX).int(), stable=True)[:num_targets]
            rows, next_labels = rows[keep], next_labels[keep]
        plan = self._pooling_plan(sequence_spans(layout), self.config.pooling)
        hidden = self._last_hidden_states(
            batch.input_ids, batch.position_ids, layout=layout, media=batch.media_inputs()
        )
        # Queries and candidates pooled apart: two tensors, not views of one (FSDP2 warns about
        # views among a root module's outputs). MaxSim training scores the K vectors apart.
        nq, multi = batch.num_queries, self.config.similarity == "maxsim"
        query = plan.pool(hidden, multi, 0, nq)
        candidates = plan.pool(hidden, multi, nq)
        loss = None
        if num_targets and normalization == "authors":
            on_query = to_device(on_query, device)[keep]
            logits = self._logits(hidden[rows])
            loss = authors_next_token_loss(logits, next_labels, on_query, side_tokens, side_sequences, nq)
        elif num_targets:
            loss = next_token_loss(self._logits(hidden[rows]), next_labels, num_targets)
        return BatchEmbeddings(query, candidates, loss, num_targets)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """LM-head logits ``[R, V]`` of the ``[R, H]`` states."""
        model = transformers_model(self.backbone)
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
        self, embeddings: BatchEmbeddings, positive_index: torch.Tensor, weights: LossWeights | None = None
    ) -> BTokOutput:
        """The loss of an embedding pass: InfoNCE and the generative loss, added up by ``weights``.

        InfoNCE scores by ``config.similarity`` (cosine, or MaxSim of the K BTok vectors), and
        with ``config.matryoshka_dims`` is summed over those leading dimensions
        (:func:`~btok_model.embedder.losses.matryoshka_info_nce`). With ``torch.distributed``
        initialised and ``config.gather_across_ranks``, each rank's queries are scored against
        the candidates of every rank (gathered with gradients flowing back to their owner, at
        full size: Matryoshka truncates after), positives offset by the rank's position.

        Args:
            embeddings: from :meth:`embed_batch`.
            positive_index: int64 ``[Nq]`` into this rank's candidates.
            weights: the generative weight and rank shares (default: ``config.generative_weight``, shares 1).
        """
        cfg = self.config
        weights = weights if weights is not None else LossWeights(cfg.generative_weight)
        query, candidates = embeddings.query_embeddings, embeddings.candidate_embeddings
        contrastive = contrastive_loss(
            query,
            candidates,
            positive_index.to(query.device),
            cfg.temperature,
            cfg.similarity,
            self._matryoshka_sizes(),
            cfg.matryoshka_weights,
            gather=cfg.gather_across_ranks,
        )
        contrastive = weights.contrastive_part(contrastive)
        generative = weights.generative_part(embeddings.generative_loss)
        return BTokOutput(
            loss=weights.total(contrastive, generative),
            contrastive_loss=contrastive,
            generative_loss=generative,
            query_embeddings=query,
            candidate_embeddings=candidates,
        )

    def forward(
        self, batch: BTokBatch | None = None, *, loss_weights: LossWeights | None = None, **fields
    ) -> BTokOutput:
        """The training step's forward: :meth:`embed_batch`, then :meth:`compute_loss`.

        ``model(batch)`` and ``model(**batch)`` are the same (``fields``: the fields of a
        :class:`~btok_model.embedder.packed_batch.BTokBatch`). ``loss_weights`` (default: the
        configured generative weight, shares 1) also decides whether the targets are scored.
        """
        if batch is None:
            batch = BTokBatch(**fields)
        elif fields:
            raise TypeError(f"pass a BTokBatch or its fields, not both (got the batch and {sorted(fields)})")
        weights = loss_weights if loss_weights is not None else LossWeights(self.config.generative_weight)
        embeddings = self.embed_batch(batch, generative=weights.generative != 0, normalization=weights.normalization)
        return self.compute_loss(embeddings, batch.positive_index, weights)

    # -- inference ------------------------------------------------------------------------------
    def encode(
        self,
        inputs: list,
        batch_size: int = 32,
        show_progress_bar: bool = False,
        packed: bool | None = None,
        *,
        poolings: tuple[str, ...] | None = None,
        multi_vector: bool = False,
        dims: int | str | None = None,
    ) -> torch.Tensor:
        """Embed inputs: one forward per batch of ``batch_size``, longest first, results in input order
        (the engine, :func:`~btok_model.embedder.encode.encode`, in one block of all N inputs;
        call it for blocks, sharding across ranks and the rest).

        Runs under ``torch.inference_mode`` with the model in eval mode (its mode restored).

        Args:
            inputs: N inputs: strings, or for a vision-language backbone also dicts
                ``{"text": str | None, "image": ..., "video": ..., "fps": ...}`` (see
                :mod:`~btok_model.embedder.multimodal`).
            batch_size: inputs per forward pass.
            show_progress_bar: show a tqdm bar over the batches.
            packed: True: each batch is one packed ``[1, T]`` row (no padding); False: right-
                padded ``[B, S]`` rows with an attention mask. None: packed with
                ``"btok_triton"`` (the kernel reads the layout directly), padded otherwise.
            poolings: pool several ways from the same forward passes (``"mean"``,
                ``"last"``); the result is then ``[N, len(poolings) * H]``, one block per
                pooling in this order. Default: the configured pooling.
            multi_vector: return a BTok model's K BTok states, each L2-normalised, instead of
                their pooled embedding (for MaxSim, :func:`~btok_model.embedder.similarity.maxsim`;
                whether the model *trains* with MaxSim is ``config.similarity``). The pooled
                embedding is the normalised mean of the raw states, so it is not in general the
                normalised mean of these.
            dims: Matryoshka truncation: keep the leading ``dims`` components of every vector
                (of every pooling's block) and L2-normalise again; None or ``"full"``: all H.

        Returns:
            fp32 ``[N, H]`` (``[N, dims]``; with several poolings ``[N, len(poolings) * dims]``;
            with ``multi_vector`` ``[N, K, dims]``) on the CPU, L2-normalised.
        """
        return engine.encode(
            self,
            inputs,
            batch_size=batch_size,
            progress=show_progress_bar,
            packed=packed,
            poolings=poolings,
            multi_vector=multi_vector,
            dims=dims,
        )


def _target_rows(layout: CondensationLayout) -> torch.Tensor:
    """int64 positions of every target row that predicts a next target token (all target
    rows but each sequence's last), built from the layout's host integers."""
    cu = layout.host_cu_seqlens
    starts = torch.tensor(cu[:-1], dtype=torch.long)
    ends = torch.tensor(cu[1:], dtype=torch.long)
    first = starts + torch.tensor(layout.host_target_start, dtype=torch.long)
    return concat_ranges(first, (ends - first - 1).clamp_min(0))


def _target_sides(
    layout: CondensationLayout, rows: torch.Tensor, next_labels: torch.Tensor, num_queries: int
) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
    """For the authors' generative loss (:func:`~.losses.authors_next_token_loss`): whether each target row's sequence is a query (bool
    ``[R]``), and per side (queries, candidates) the scored target tokens and the sequences
    holding any, counted on the host from ``rows`` (:func:`_target_rows`) and their next labels."""
    sequence = torch.searchsorted(torch.tensor(layout.host_cu_seqlens[1:], dtype=torch.long), rows, right=True)
    on_query = sequence < num_queries
    scored = (next_labels != IGNORE_INDEX).cpu()
    tokens = (int((scored & on_query).sum()), int((scored & ~on_query).sum()))
    generating = torch.unique(sequence[scored])
    sequences = (int((generating < num_queries).sum()), int((generating >= num_queries).sum()))
    return on_query, tokens, sequences


# Names renamed after btok 0.1: {old name: (what to use instead, the value)}. Each warns (see
# Embedder.__getattr__) and goes in the next release.
_RENAMED = {
    "tokenize": ("use model.collator.tokenize(texts)", lambda m: m.collator.tokenize),
    "last_hidden_states": ("it is internal (Embedder._last_hidden_states)", lambda m: m._last_hidden_states),
    "embed_padded": (
        "use btok_model.embedder.encode.embed_padded(model, padded, ...)",
        lambda m: (
            lambda padded, poolings=None, multi_vector=False: engine.embed_padded(m, padded, poolings, multi_vector)
        ),
    ),
    "multi_vector": (
        (
            "whether the model trains with MaxSim is model.config.similarity == 'maxsim' "
            "(encode(multi_vector=True) returns the K vectors)"
        ),
        lambda m: m.config.similarity == "maxsim",
    ),
    "matryoshka_dims": (
        "the setting is model.config.matryoshka_dims ('full' = model.embedding_dim)",
        lambda m: m._matryoshka_sizes(),
    ),
}
