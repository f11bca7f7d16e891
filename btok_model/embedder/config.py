"""The settings of a BTok embedder, saved beside the backbone as ``btok_config.json``."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields

__all__ = ["CONFIG_NAME", "POOLINGS", "BTokConfig"]

CONFIG_NAME = "btok_config.json"
POOLINGS = ("mean", "last")


@dataclass
class BTokConfig:
    """Everything besides the weights that decides what a BTok model computes.

    Attributes:
        num_btoks: ``K``, the number of bottleneck tokens appended after every input.
        btok_tokens: the K token strings (``<|btok_0|>`` ...), special tokens of the tokenizer.
        pooling: ``"mean"`` (mean of the K last-layer BTok states, the method's default) or
            ``"last"`` (the state of the last BTok only).
        temperature: InfoNCE temperature (the logits are cosine similarities / temperature).
        generative_weight: weight of the generative loss in the total loss; 0 turns it off
            (targets are then neither collated nor computed).
        target_prefix: text placed before every target; visible to the target, never scored.
        target_suffix: text placed after every target; scored like the target text.
        max_length: the longest packed sequence (input + K BToks [+ target]) accepted, or None
            for the backbone's own limit (``max_position_embeddings``). Longer inputs raise.
        gather_across_ranks: gather the candidates of every rank into each rank's InfoNCE
            (more negatives) when ``torch.distributed`` is initialised.
    """

    num_btoks: int = 4
    btok_tokens: list[str] = field(default_factory=list)
    pooling: str = "mean"
    temperature: float = 0.02
    generative_weight: float = 5.0
    target_prefix: str = "<|im_start|>assistant\n"
    target_suffix: str = "<|im_end|>"
    max_length: int | None = None
    gather_across_ranks: bool = True

    def __post_init__(self):
        if isinstance(self.num_btoks, bool) or not isinstance(self.num_btoks, int) or self.num_btoks < 1:
            raise ValueError(f"num_btoks must be an int >= 1, got {self.num_btoks!r}")
        if not self.btok_tokens:
            self.btok_tokens = [f"<|btok_{i}|>" for i in range(self.num_btoks)]
        if len(self.btok_tokens) != self.num_btoks or len(set(self.btok_tokens)) != self.num_btoks:
            raise ValueError(
                f"btok_tokens must hold num_btoks={self.num_btoks} distinct strings, got {self.btok_tokens!r}"
            )
        check_pooling(self.pooling)
        check_temperature(self.temperature)
        check_generative_weight(self.generative_weight)
        for name in ("target_prefix", "target_suffix"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a str, got {type(getattr(self, name)).__name__}")
        check_max_length(self.max_length)

    def save(self, directory: str | os.PathLike) -> None:
        with open(os.path.join(directory, CONFIG_NAME), "w") as f:
            json.dump(asdict(self), f, indent=2, sort_keys=True)
            f.write("\n")

    @classmethod
    def load(cls, directory: str | os.PathLike) -> BTokConfig:
        path = os.path.join(directory, CONFIG_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path} not found: {directory} is not a saved BTok model (BTokModel.save_pretrained writes it)"
            )
        with open(path) as f:
            values = json.load(f)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{path}: unknown settings {unknown}; known: {sorted(known)}")
        return cls(**values)


def check_pooling(pooling: str) -> str:
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    return pooling


def check_temperature(temperature: float) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
    return float(temperature)


def check_generative_weight(weight: float) -> float:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
        raise ValueError(f"generative_weight must be a number >= 0, got {weight!r}")
    return float(weight)


def check_max_length(max_length: int | None) -> int | None:
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1):
        raise ValueError(f"max_length must be None or an int >= 1, got {max_length!r}")
    return max_length
