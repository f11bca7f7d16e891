"""Deprecated: :class:`Embedder` moved to :mod:`btok_model.embedder.base` (``core`` did not say
what the module holds). ``from btok_model.embedder.core import Embedder`` still works, with a
``DeprecationWarning``; the list: docs/api.md, "Renamed"."""

from ..deprecation import warn_deprecated
from . import pooling as _pooling
from .base import *
from .base import __all__  # noqa: F401

warn_deprecated(
    "btok_model.embedder.core is deprecated: import from btok_model.embedder.base (Embedder, BTokOutput, "
    "BatchEmbeddings, enable_activation_checkpointing)"
)

# Moved to btok_model.embedder.pooling after btok 0.1.
_MOVED = ("pool_btok_states", "pool_token_groups", "stack_token_groups")


def __getattr__(name: str):
    if name in _MOVED:
        warn_deprecated(
            f"btok_model.embedder.core.{name} is deprecated: import it from btok_model.embedder.pooling; the old "
            "place will be removed in the next release"
        )
        return getattr(_pooling, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
