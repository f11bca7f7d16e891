"""The generative-loss weight over training: ``weight`` for the first ``steps`` optimizer
steps, then 0 (the authors' recipe: 5.0 for the first 2,000 of 5,000 steps).

:class:`GenerativeSchedule` says the weight of each step; the trainer reads it at the
Trainer's global step where it computes the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..embedder.config import check_generative_weight

__all__ = ["GenerativeSchedule"]


@dataclass(frozen=True)
class GenerativeSchedule:
    """Piecewise-constant generative weight.

    Attributes:
        weight: the weight while the generative loss is on (>= 0; 0 = never on).
        steps: how many optimizer steps it stays on (``None``: the whole run).
    """

    weight: float = 5.0
    steps: int | None = 2000

    def __post_init__(self):
        check_generative_weight(self.weight, "the generative weight")
        if self.steps is not None and (
            isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0
        ):
            raise ValueError(f"generative steps must be None or an int >= 0, got {self.steps!r}")

    @property
    def ever_on(self) -> bool:
        """Whether some step has a weight other than 0 (the run needs its targets)."""
        return self.weight != 0 and self.steps != 0

    def weight_at(self, step: int) -> float:
        """The weight of optimizer step ``step`` (0-based)."""
        if self.steps is not None and step >= self.steps:
            return 0.0
        return float(self.weight)
