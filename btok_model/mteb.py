"""Deprecated: the MTEB encoder moved to :mod:`btok_model.mteb_encoder` (a module named ``mteb``
read as the ``mteb`` package in tracebacks). ``from btok_model.mteb import MTEBEncoder`` still
works, with a ``DeprecationWarning``."""

import warnings

from .mteb_encoder import *
from .mteb_encoder import __all__  # noqa: F401

warnings.warn(
    "btok_model.mteb is deprecated: import from btok_model.mteb_encoder (MTEBEncoder, DEFAULT_INSTRUCTIONS, "
    "DEFAULT_TEMPLATE)",
    DeprecationWarning,
    stacklevel=2,
)
