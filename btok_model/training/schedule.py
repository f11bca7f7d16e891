"""The generative-loss weight over training: ``weight`` for the first ``steps`` optimizer
steps, then 0 (the authors' recipe: 5.0 for the first 2,000 of 5,000 steps).

:class:`GenerativeSchedule` says the weight of each step; :class:`GenerativeWeightCallback`
sets the weight the trainer's loss reads at the start of every optimizer step, and nothing
else (the batch builder asks the schedule itself whether a batch needs targets, for the step
the batch is built for).
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import TrainerCallback

__all__ = ["GenerativeSchedule", "GenerativeWeightCallback"]


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
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) or not self.weight >= 0:
            raise ValueError(f"the generative weight must be a number >= 0, got {self.weight!r}")
        if self.steps is not None and (
            isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0
        ):
            raise ValueError(f"generative steps must be None or an int >= 0, got {self.steps!r}")

    def weight_at(self, step: int) -> float:
        """The weight of optimizer step ``step`` (0-based)."""
        if self.steps is not None and step >= self.steps:
            return 0.0
        return float(self.weight)


class GenerativeWeightCallback(TrainerCallback):
    """Sets :attr:`weight`, the generative weight the loss of the current optimizer step reads,
    from ``schedule`` at the start of every step.

    Args:
        schedule: the weight per step.
    """

    def __init__(self, schedule: GenerativeSchedule):
        self.schedule = schedule
        self.weight = schedule.weight_at(0)

    def on_step_begin(self, args, state, control, **kwargs):
        self.weight = self.schedule.weight_at(state.global_step)
