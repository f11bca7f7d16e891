"""Deprecated: the task scorers and :func:`evaluate` moved to :mod:`btok_model.evaluation.scorers`
(``runner`` did not say what the module holds). ``from btok_model.evaluation.runner import
evaluate`` still works, with a ``DeprecationWarning`` (the list: docs/api.md, "Renamed")."""

from ..deprecation import warn_deprecated
from .scorers import *
from .scorers import BLOCK_SIZE, __all__  # noqa: F401

warn_deprecated(
    "btok_model.evaluation.runner is deprecated: import from btok_model.evaluation.scorers (EmbeddingScorer, "
    "TfidfTaskScorer, evaluate, evaluate_dims, check_task, find_bad_inputs)"
)
