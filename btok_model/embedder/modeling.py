"""Deprecated: :class:`BTokModel` moved to :mod:`btok_model.embedder.btok` (``modeling`` did not
say what the module holds). ``from btok_model.embedder.modeling import BTokModel`` still works,
with a ``DeprecationWarning``; the list: docs/api.md, "Renamed"."""

from ..deprecation import warn_deprecated
from .btok import *
from .btok import __all__  # noqa: F401

warn_deprecated("btok_model.embedder.modeling is deprecated: import from btok_model.embedder.btok (BTokModel)")
