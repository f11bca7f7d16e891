"""btok_model: the ``attn_implementation="btok_triton"`` backend for transformers.

    import btok_model   # registers "btok_triton"; nothing else happens at import
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="btok_triton")
    out = model(input_ids=packed_ids, position_ids=pos, btok_layout=layout)

``btok_layout`` (a :class:`btok_kernels.CondensationLayout`) applies the condensation
mask to a packed ``[1, T]`` batch; without it the backend gives the same results as
``"sdpa"``.
"""

from .attention import btok_attention_forward
from .errors import UnsupportedModelFeatureError
from .masking import btok_mask
from .registration import ATTN_IMPLEMENTATION, is_registered, register

__all__ = [
    "ATTN_IMPLEMENTATION",
    "UnsupportedModelFeatureError",
    "btok_attention_forward",
    "btok_mask",
    "is_registered",
    "register",
]

register()
