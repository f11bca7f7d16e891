"""Deprecated: :class:`TrainingCollator` moved to :mod:`btok_model.training.collator`
(``batch_builder`` did not say what the module holds). ``from btok_model.training.batch_builder
import TrainingCollator`` still works, with a ``DeprecationWarning`` (the list: docs/api.md,
"Renamed")."""

from ..deprecation import warn_deprecated
from .collator import *
from .collator import __all__  # noqa: F401

warn_deprecated(
    "btok_model.training.batch_builder is deprecated: import from btok_model.training.collator (TrainingCollator, "
    "ChunkedBatch, GradCacheChunk, ReplacedRows)"
)
