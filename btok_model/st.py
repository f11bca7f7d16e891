"""Deprecated: the sentence-transformers module moved to
:mod:`btok_model.sentence_transformers_module` (``st`` did not say what the module holds).
``from btok_model.st import BTokEmbedding`` still works, with a ``DeprecationWarning`` (the
list: docs/api.md, "Renamed").

A folder saved before the move names ``btok_model.st.BTokEmbedding`` in its ``modules.json``:
sentence-transformers imports this module to load it, and that import does not warn (the user
wrote no old name; such a folder loads as it is)."""

import sys

from .deprecation import warn_deprecated
from .sentence_transformers_module import *
from .sentence_transformers_module import __all__  # noqa: F401


def _imported_by_sentence_transformers() -> bool:
    """Whether the first frame importing this module outside btok and importlib is
    sentence-transformers' (loading a saved folder's ``modules.json``)."""
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_globals.get("__name__") or ""
        if name.startswith("sentence_transformers"):
            return True
        if not name.startswith(("btok_model", "importlib", "_frozen_importlib")):
            return False
        frame = frame.f_back
    return False


if not _imported_by_sentence_transformers():
    warn_deprecated(
        "btok_model.st is deprecated: import from btok_model.sentence_transformers_module (BTokEmbedding, "
        "save_sentence_transformer, write_sentence_transformers_files)"
    )
