"""The settings of an embedder, saved beside its backbone: ``btok_config.json`` (a BTok model) or
``pooled_config.json`` (the no-BTok baseline).

These dataclasses are the one definition of the method's settings: their defaults, their
checks, and (in each field's ``help``, see :func:`setting`) their meaning, from which
``python -m btok_model.train`` builds its flags. ``from_backbone(config=...)`` takes them and
the training :class:`~btok_model.training.recipe.Recipe` holds them.

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
from collections.abc import Callable
from dataclasses import MISSING, Field, asdict, dataclass, field, fields
from typing import ClassVar

from ..backend.kernel_settings import KernelSettings
from ..deprecation import warn_deprecated
from .similarity import FULL, check_dims, check_similarity
from .similarity import SIMILARITIES as ALL_SIMILARITIES
from .tokens import BTOK_INITS

__all__ = [
    "POOLINGS",
    "SETTING",
    "BTokConfig",
    "EmbedderConfig",
    "PooledConfig",
    "check_generative_weight",
    "parse_dim",
    "parse_optional_float",
    "parse_optional_int",
    "setting",
    "settings_of",
]

# The key of a field's metadata that makes it a setting with a command-line flag (see :func:`setting`).
SETTING = "btok_setting"


def setting(
    default=MISSING,
    *,
    help: str,
    default_factory=MISSING,
    group: str = "method",
    flag: str | None = None,
    parse: Callable[[str], object] | None = None,
    choices: tuple | None = None,
    nargs: str | None = None,
    metavar: str | None = None,
    shown: str | None = None,
) -> Field:
    """A dataclass field that is a user-facing setting: its documentation and how a command line
    gives it, in one place (``python -m btok_model.train`` builds its flags from these).

    Args:
        default, default_factory: as for :func:`dataclasses.field`.
        help: what the setting means (the flag's help; the default is appended there).
        group: the heading the flag is listed under in ``--help``.
        flag: the flag, when not ``--`` + the field name with dashes.
        parse: text -> value (raises ValueError with a message); default: the type of the default
            (a bool default makes a ``--x/--no-x`` pair).
        choices, nargs, metavar: as for ``argparse``.
        shown: the default as ``--help`` shows it, when not the value itself.
    """
    cli = dict(help=help, group=group, flag=flag, parse=parse, choices=choices, nargs=nargs, metavar=metavar)
    cli["shown"] = shown
    return field(
        default=default,
        default_factory=default_factory,
        metadata={SETTING: {k: v for k, v in cli.items() if v is not None}},
    )


def settings_of(cls) -> list[Field]:
    """The fields of the dataclass ``cls`` made with :func:`setting`, in their order."""
    return [f for f in fields(cls) if SETTING in f.metadata]


def parse_optional_int(text: str) -> int | None:
    """An int, or None for ``"none"`` / ``"all"``."""
    if text.lower() in ("none", "all"):
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"expected an int or 'none', got {text!r}") from None


def parse_optional_float(text: str) -> float | None:
    """A float, or None for ``"none"``."""
    if text.lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"expected a number or 'none', got {text!r}") from None


def parse_dim(text: str) -> int | str:
    """A Matryoshka dimension: an int >= 1 or ``"full"``."""
    if text.lower() == FULL:
        return FULL
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"expected an int >= 1 or 'full', got {text!r}")
    return value


# How an embedder's pooled tokens (a BTok model's K BToks, the baseline's input tokens) become one
# embedding: their mean or the last of them. The same names for every embedder.
POOLINGS = ("mean", "last")

_POOLING_HELP = (
    "how the pooled tokens become one embedding: mean (of the K BToks, the method) or last (the last BTok); "
    "without BToks: last (the last input token) or mean (of the input tokens)"
)


def check_generative_weight(value, name: str = "generative_weight") -> float:
    """``value`` as a float, checked: the generative loss's weight is a number >= 0 (0: off).

    Raises:
        ValueError: naming ``name``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


@dataclass
class EmbedderConfig:
    """What every embedder's settings hold (see :class:`BTokConfig` and :class:`PooledConfig`).

    A field made with :func:`setting` is documented by its ``help`` (``python -m btok_model.train
    --help`` prints them); the others:

    Attributes:
        gather_across_ranks: gather the candidates of every rank into each rank's InfoNCE
            (more negatives) when ``torch.distributed`` is initialised.
        kernel: how ``"btok_triton"`` runs the condensation kernel for this model
            (:class:`~btok_model.backend.kernel_settings.KernelSettings`; a dict is accepted).
        video_layout: how the model's Qwen3-VL video prompts were laid out when it was saved
            (``"wrapped"`` or ``"frames"``, decided by the installed transformers:
            :func:`~btok_model.embedder.multimodal.qwen3_vl_video_layout`); None for other
            backbones and folders saved before it was recorded. Written by ``save_pretrained``
            and checked by ``from_pretrained``, which warns when they differ.

    ``pooling`` is one of :data:`POOLINGS` (the subclass's ``POOLING_ALIASES`` are older
    spellings, accepted with a ``DeprecationWarning`` and read silently from a saved folder);
    ``similarity`` is one of its ``SIMILARITIES``.
    """

    CONFIG_NAME: ClassVar[str]
    POOLINGS: ClassVar[tuple[str, ...]] = POOLINGS
    POOLING_ALIASES: ClassVar[dict[str, str]] = {}
    SIMILARITIES: ClassVar[tuple[str, ...]] = ("cosine",)
    # The generative loss's weight when a loss is computed without explicit weights.
    generative_weight: ClassVar[float] = 0.0

    pooling: str = setting("mean", help=_POOLING_HELP)
    temperature: float = setting(0.02, help="InfoNCE temperature (the logits are similarities / temperature)")
    max_length: int | None = setting(
        None,
        parse=parse_optional_int,
        help="longest packed sequence accepted: input + K BToks (+ target); longer examples raise; none: the "
        "backbone's limit (max_position_embeddings)",
    )
    gather_across_ranks: bool = True
    kernel: KernelSettings = field(default_factory=KernelSettings)
    similarity: str = setting(
        "cosine",
        choices=ALL_SIMILARITIES,
        help="InfoNCE (and by default evaluation) on the cosine of the pooled embeddings, or on MaxSim of the K "
        "BTok vectors (divided by K, so --temperature means the same; BTok models only); saved with the model",
    )
    matryoshka_dims: list = setting(
        default_factory=list,
        parse=parse_dim,
        nargs="+",
        metavar="DIM",
        shown="off",
        help="InfoNCE summed over these leading dimensions, e.g. 64 128 256 full (ints strictly increasing, "
        "'full' last for the whole embedding)",
    )
    matryoshka_weights: list[float] = setting(
        default_factory=list,
        parse=float,
        nargs="+",
        metavar="W",
        shown="1 each",
        help="one weight > 0 per --matryoshka-dims entry",
    )
    video_layout: str | None = None

    def __post_init__(self):
        self.pooling = self.check_pooling(self.pooling)
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
        kind = type(self).__name__.removesuffix("Config")
        why = " (MaxSim compares K BTok vectors; a model without BToks has one vector per input)" * (
            self.similarity == "maxsim"
        )
        check_similarity(self.similarity, self.SIMILARITIES, where=f" for a {kind} model", why=why)
        self.matryoshka_dims, self.matryoshka_weights = _checked_matryoshka(
            self.matryoshka_dims, self.matryoshka_weights
        )

    @classmethod
    def check_pooling(cls, name, what: str = "pooling") -> str:
        """A pooling name checked: one of :data:`POOLINGS`; an older spelling of
        ``POOLING_ALIASES`` gives its name with a ``DeprecationWarning``.

        Raises:
            ValueError: an unknown name, naming ``what``.
        """
        if isinstance(name, str) and name in cls.POOLING_ALIASES:
            new = cls.POOLING_ALIASES[name]
            warn_deprecated(
                f"{what} {name!r} is deprecated, use {new!r} (the same pooling); the old name will be removed "
                "in the next release"
            )
            return new
        if name not in cls.POOLINGS:
            raise ValueError(f"{what} must be one of {cls.POOLINGS}, got {name!r}")
        return name

    @property
    def reduction(self) -> str:
        """Deprecated: the same as :attr:`pooling` (every pooling name is its reduction now)."""
        warn_deprecated(
            "config.reduction is deprecated, use config.pooling (the same value); it will be removed in the next "
            "release"
        )
        return self.pooling

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
        return cls(**cls.upgrade_saved(values))

    @classmethod
    def upgrade_saved(cls, values: dict) -> dict:
        """Saved settings with the older spellings a folder may hold replaced by their names
        (no warning: the user wrote none of them); other values unchanged."""
        pooling = values.get("pooling")
        if isinstance(pooling, str) and pooling in cls.POOLING_ALIASES:
            values = {**values, "pooling": cls.POOLING_ALIASES[pooling]}
        return values

    @classmethod
    def from_keywords(cls, config, keywords: dict) -> tuple[EmbedderConfig, dict]:
        """``(settings, the other keywords)`` of a ``from_backbone`` call: ``config`` itself, or
        the settings built from the keywords that are fields of ``cls`` (the rest are returned).

        Raises:
            TypeError: ``config`` is not a ``cls``.
            ValueError: ``config`` and setting keywords both given, or a bad setting (named).
        """
        names = {f.name for f in fields(cls)}
        settings = {name: keywords[name] for name in keywords if name in names}
        others = {name: value for name, value in keywords.items() if name not in names}
        if config is None:
            return cls(**settings), others
        if not isinstance(config, cls):
            raise TypeError(f"config must be a {cls.__name__}, got {type(config).__name__}")
        if settings:
            raise ValueError(
                f"pass the settings in config= or as keywords, not both: got config= and {sorted(settings)}"
            )
        return config, others


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

    The settings made with :func:`setting` are documented by their ``help``; the others:

    Attributes:
        btok_tokens: the K token strings (``<|btok_0|>`` ...), special tokens of the tokenizer.
        target_prefix: text placed before every target; visible to the target, never scored.
        target_suffix: text placed after every target; scored like the target text.
        (``gather_across_ranks``, ``kernel``, ``video_layout``: see :class:`EmbedderConfig`.)

    ``generative_weight`` is the loss's weight when it is computed without explicit weights; a
    trainer's schedule passes each step's weight instead
    (:class:`~btok_model.embedder.losses.LossWeights`). ``btok_init`` says how the BTok rows
    started (:func:`~btok_model.embedder.tokens.init_btok_rows`); folders saved before it was
    recorded read ``"mean"``.
    """

    CONFIG_NAME: ClassVar[str] = "btok_config.json"
    SIMILARITIES: ClassVar[tuple[str, ...]] = ALL_SIMILARITIES

    num_btoks: int = setting(4, help="K, the bottleneck tokens appended after every input")
    btok_tokens: list[str] = field(default_factory=list)
    generative_weight: float = setting(5.0, help="weight of the generative loss on the targets (>= 0); 0 turns it off")
    target_prefix: str = "<|im_start|>assistant\n"
    target_suffix: str = "<|im_end|>"
    btok_init: str = setting(
        "mean",
        choices=BTOK_INITS,
        help="BTok rows start as the vocabulary's mean, the EOS row, or the rows the checkpoint already has for "
        "the new ids (checkpoint: the authors' start on a backbone with spare rows; an error when the ids do not fit)",
    )

    def __post_init__(self):
        super().__post_init__()
        k = self.num_btoks
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"num_btoks must be an int >= 1, got {k!r}")
        tokens = list(self.btok_tokens) or [f"<|btok_{i}|>" for i in range(k)]
        if len(tokens) != k or len(set(tokens)) != k:
            raise ValueError(f"btok_tokens must hold num_btoks={k} distinct strings, got {self.btok_tokens!r}")
        self.btok_tokens = tokens
        self.generative_weight = check_generative_weight(self.generative_weight)
        if self.btok_init not in BTOK_INITS:
            raise ValueError(f"btok_init must be one of {BTOK_INITS}, got {self.btok_init!r}")
        for name in ("target_prefix", "target_suffix"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a str, got {type(getattr(self, name)).__name__}")


@dataclass
class PooledConfig(EmbedderConfig):
    """The settings of the no-BTok baseline (:class:`~btok_model.embedder.pooled.PooledEmbedder`):
    those of :class:`EmbedderConfig`, ``pooling`` ``"last"`` (the last input token, default) or
    ``"mean"`` (``"last-token"``, its name in btok 0.1, is accepted with a ``DeprecationWarning``
    and read silently from a saved ``pooled_config.json``), ``similarity`` ``"cosine"`` only.
    Without BToks there is no generative loss (``generative_weight`` 0).
    """

    CONFIG_NAME: ClassVar[str] = "pooled_config.json"
    POOLING_ALIASES: ClassVar[dict[str, str]] = {"last-token": "last"}

    pooling: str = setting("last", help=_POOLING_HELP)
