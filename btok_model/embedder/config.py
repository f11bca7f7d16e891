"""The settings of an embedder, saved beside its backbone: ``btok_config.json`` (a BTok model) or
``pooled_config.json`` (the no-BTok baseline).

A model reads its settings from ``model.config`` (``model.config.temperature``); nothing in btok
changes them while the model lives. Build a new model for other settings: the collator takes
the target wrapping and the length limit, and the backbone the kernel settings, when the model
is built. The generative weight of a training step is not a setting of the model but an
argument of its loss (:class:`~btok_model.embedder.losses.LossWeights`), which the trainer's
schedule sets.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from typing import ClassVar

from ..backend.kernel_settings import KernelSettings
from .similarity import check_dims

__all__ = ["BTokConfig", "EmbedderConfig", "PooledConfig"]


@dataclass
class EmbedderConfig:
    """What every embedder's settings hold (see :class:`BTokConfig` and :class:`PooledConfig`).

    Attributes:
        pooling: how the pooled tokens become one embedding; the names a subclass accepts are
            the keys of its ``POOLINGS``, which map each to ``"mean"`` or ``"last"``.
        temperature: InfoNCE temperature (the logits are cosine similarities / temperature).
        max_length: the longest packed sequence accepted, or None for the backbone's own limit
            (``max_position_embeddings``). Longer inputs raise.
        gather_across_ranks: gather the candidates of every rank into each rank's InfoNCE
            (more negatives) when ``torch.distributed`` is initialised.
        kernel: how ``"btok_triton"`` runs the condensation kernel for this model
            (:class:`~btok_model.backend.kernel_settings.KernelSettings`; a dict is accepted).
        similarity: how embeddings compare, in training and by default in evaluation: one of
            the subclass's ``SIMILARITIES`` (``"cosine"`` of the pooled embeddings; a BTok model
            also ``"maxsim"`` of its K BTok vectors, :mod:`~btok_model.embedder.similarity`).
        matryoshka_dims: train InfoNCE summed over these leading dimensions (ints, strictly
            increasing, ``"full"`` last for the whole embedding); empty: the full embedding only.
        matryoshka_weights: one weight per Matryoshka dimension (empty: 1 each).
        video_layout: how the model's Qwen3-VL video prompts were laid out when it was saved
            (``"wrapped"`` or ``"frames"``, decided by the installed transformers:
            :func:`~btok_model.embedder.multimodal.qwen3_vl_video_layout`); None for other
            backbones and folders saved before it was recorded. Written by ``save_pretrained``
            and checked by ``from_pretrained``, which warns when they differ.
    """

    CONFIG_NAME: ClassVar[str]
    POOLINGS: ClassVar[dict[str, str]]
    SIMILARITIES: ClassVar[tuple[str, ...]] = ("cosine",)
    # The generative loss's weight when a loss is computed without explicit weights.
    generative_weight: ClassVar[float] = 0.0

    pooling: str = "mean"
    temperature: float = 0.02
    max_length: int | None = None
    gather_across_ranks: bool = True
    kernel: KernelSettings = field(default_factory=KernelSettings)
    similarity: str = "cosine"
    matryoshka_dims: list = field(default_factory=list)
    matryoshka_weights: list[float] = field(default_factory=list)
    video_layout: str | None = None

    def __post_init__(self):
        if self.pooling not in self.POOLINGS:
            raise ValueError(f"pooling must be one of {tuple(self.POOLINGS)}, got {self.pooling!r}")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
            raise ValueError(f"temperature must be a number > 0, got {t!r}")
        n = self.max_length
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"max_length must be None or an int >= 1, got {n!r}")
        if self.video_layout not in (None, "wrapped", "frames"):
            raise ValueError(f"video_layout must be None, 'wrapped' or 'frames', got {self.video_layout!r}")
        if not isinstance(self.gather_across_ranks, bool):
            raise ValueError(f"gather_across_ranks must be a bool, got {self.gather_across_ranks!r}")
        self.temperature = float(t)
        self.kernel = KernelSettings.from_value(self.kernel)
        if self.similarity not in self.SIMILARITIES:
            kind = type(self).__name__.removesuffix("Config")
            why = " (MaxSim compares K BTok vectors; this model has one vector per input)" * (
                self.similarity == "maxsim"
            )
            raise ValueError(
                f"similarity must be one of {self.SIMILARITIES} for a {kind} model, got {self.similarity!r}{why}"
            )
        self.matryoshka_dims, self.matryoshka_weights = _checked_matryoshka(
            self.matryoshka_dims, self.matryoshka_weights
        )

    @property
    def reduction(self) -> str:
        """``"mean"`` or ``"last"``: how :attr:`pooling` reduces the pooled tokens."""
        return self.POOLINGS[self.pooling]

    def save(self, directory: str | os.PathLike) -> None:
        """Write the settings to ``directory/CONFIG_NAME``."""
        with open(os.path.join(directory, self.CONFIG_NAME), "w") as f:
            json.dump(asdict(self), f, indent=2, sort_keys=True)
            f.write("\n")

    @classmethod
    def load(cls, directory: str | os.PathLike):
        """The settings saved in ``directory``.

        Raises:
            FileNotFoundError: the folder holds no ``CONFIG_NAME`` (not a saved model of this kind).
            ValueError: an unknown or bad setting, named.
        """
        path = os.path.join(directory, cls.CONFIG_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path} not found: {directory} is not a saved {cls.__name__.removesuffix('Config')} model "
                "(save_pretrained writes it)"
            )
        with open(path) as f:
            values = json.load(f)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{path}: unknown settings {unknown}; known: {sorted(known)}")
        return cls(**values)


def _checked_matryoshka(dims, weights) -> tuple[list, list[float]]:
    """``(dims, weights)`` checked (:func:`~.similarity.check_dims`; one weight > 0 per dim, or
    none), as lists; empty dims: Matryoshka off."""
    dims = check_dims(dims) if dims else []
    weights = list(weights or [])
    if weights and len(weights) != len(dims):
        raise ValueError(
            f"matryoshka_weights must hold one weight per Matryoshka dimension ({len(dims)}: {dims}), got {weights}"
        )
    if any(isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0 for w in weights):
        raise ValueError(f"matryoshka_weights must be numbers > 0, got {weights}")
    return dims, [float(w) for w in weights]


@dataclass
class BTokConfig(EmbedderConfig):
    """Everything besides the weights that decides what a BTok model computes.

    Attributes:
        num_btoks: ``K``, the number of bottleneck tokens appended after every input.
        btok_tokens: the K token strings (``<|btok_0|>`` ...), special tokens of the tokenizer.
        pooling: ``"mean"`` (mean of the K last-layer BTok states, the method's default) or
            ``"last"`` (the state of the last BTok only).
        generative_weight: weight of the generative loss in the total loss; 0 turns it off
            (targets are then neither collated nor computed). A trainer's schedule passes each
            step's weight to the loss instead (:class:`~btok_model.embedder.losses.LossWeights`).
        target_prefix: text placed before every target; visible to the target, never scored.
        target_suffix: text placed after every target; scored like the target text.
        similarity: ``"cosine"`` (of the pooled embeddings) or ``"maxsim"`` (of the K BTok
            vectors, each L2-normalised; with K = 1 the two are the same).
        (``temperature``, ``max_length`` -- input + K BToks [+ target] --, ``gather_across_ranks``,
        ``kernel``, ``matryoshka_dims``, ``matryoshka_weights``, ``video_layout``: see :class:`EmbedderConfig`.)
    """

    CONFIG_NAME: ClassVar[str] = "btok_config.json"
    POOLINGS: ClassVar[dict[str, str]] = {"mean": "mean", "last": "last"}
    SIMILARITIES: ClassVar[tuple[str, ...]] = ("cosine", "maxsim")

    num_btoks: int = 4
    btok_tokens: list[str] = field(default_factory=list)
    generative_weight: float = 5.0
    target_prefix: str = "<|im_start|>assistant\n"
    target_suffix: str = "<|im_end|>"

    def __post_init__(self):
        super().__post_init__()
        k = self.num_btoks
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"num_btoks must be an int >= 1, got {k!r}")
        tokens = list(self.btok_tokens) or [f"<|btok_{i}|>" for i in range(k)]
        if len(tokens) != k or len(set(tokens)) != k:
            raise ValueError(f"btok_tokens must hold num_btoks={k} distinct strings, got {self.btok_tokens!r}")
        self.btok_tokens = tokens
        w = self.generative_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not w >= 0:
            raise ValueError(f"generative_weight must be a number >= 0, got {w!r}")
        self.generative_weight = float(w)
        for name in ("target_prefix", "target_suffix"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a str, got {type(getattr(self, name)).__name__}")


@dataclass
class PooledConfig(EmbedderConfig):
    """The settings of the no-BTok baseline (:class:`~btok_model.embedder.pooled.PooledEmbedder`).

    Attributes:
        pooling: ``"last-token"`` (the last input token's state) or ``"mean"`` (mean over the
            input tokens). Without BToks there is no generative loss (``generative_weight`` 0).
        (``temperature``, ``max_length``, ``gather_across_ranks``, ``kernel``, ``similarity``
        -- ``"cosine"`` only --, ``matryoshka_dims``, ``matryoshka_weights``, ``video_layout``: see
        :class:`EmbedderConfig`.)
    """

    CONFIG_NAME: ClassVar[str] = "pooled_config.json"
    POOLINGS: ClassVar[dict[str, str]] = {"last-token": "last", "mean": "mean"}

    pooling: str = "last-token"
