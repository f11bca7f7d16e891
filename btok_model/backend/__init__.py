"""The transformers attention backend ``attn_implementation="btok_triton"``.

It runs :func:`btok_kernels.condensation_attention` for every causal self-attention call of
a decoder (padded, packed, or a BTok batch with ``btok_layout=``) and keeps the contract of
``"sdpa"``: same signature, same results, no attention weights.
"""

from .attention import btok_attention_forward
from .errors import UnsupportedModelFeatureError
from .kernel_settings import KernelSettings
from .mask_interface import btok_mask
from .registration import ATTN_IMPLEMENTATION, is_registered, register

__all__ = [
    "ATTN_IMPLEMENTATION",
    "KernelSettings",
    "UnsupportedModelFeatureError",
    "btok_attention_forward",
    "btok_mask",
    "is_registered",
    "register",
]
