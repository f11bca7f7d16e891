"""The one exception type the transformers backend raises for model features it cannot honour."""

__all__ = ["UnsupportedModelFeatureError"]


class UnsupportedModelFeatureError(NotImplementedError):
    """A model feature that ``attn_implementation="btok_triton"`` cannot compute exactly.

    Raised instead of returning a silently different result. The message names the
    feature (sliding window, logit softcapping, attention dropout, a custom 4D mask, ...)
    and says which ``attn_implementation`` to use instead.
    """
