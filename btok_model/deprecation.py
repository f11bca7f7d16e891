"""Deprecated names: one warning, pointed at the user's code.

A name btok renames keeps working for one release and says its new name with a
``DeprecationWarning`` (the list, with the release that drops them: ``docs/api.md``, "Renamed").
The warning is attributed to the first caller outside ``btok_model``, so Python shows it where
the user wrote the old name (and its default filters show it for a script's own code), not
inside btok.
"""

from __future__ import annotations

import os
import sys
import warnings

__all__ = ["warn_deprecated"]

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn_deprecated(message: str) -> None:
    """Issue a ``DeprecationWarning`` at the nearest caller outside this package (frames of
    ``btok_model`` and generated code, such as a dataclass's ``__init__``, are skipped)."""
    frame, level = sys._getframe(1), 2
    while frame is not None and (
        frame.f_code.co_filename.startswith(_PACKAGE) or frame.f_code.co_filename == "<string>"
    ):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, DeprecationWarning, stacklevel=level)
