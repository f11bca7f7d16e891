"""btok_model: Bottleneck-Token embedders on transformers models, in two layers.

* :mod:`btok_model.backend` -- ``attn_implementation="btok_triton"``: the condensation kernel
  as a transformers attention backend (registered when this package is imported).
* :mod:`btok_model.embedder` -- the BTok model layer: BToks, packed collation, losses and
  :class:`BTokModel` (``from btok_model import BTokModel``).

    import btok_model   # registers "btok_triton"; nothing else happens at import
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="btok_triton")
    out = model(input_ids=packed_ids, position_ids=pos, btok_layout=layout)

``btok_layout`` (a :class:`btok_kernels.CondensationLayout`) applies the condensation
mask to a packed ``[1, T]`` batch; without it the backend gives the same results as
``"sdpa"``.
"""

from .backend import (
    ATTN_IMPLEMENTATION,
    KernelSettings,
    UnsupportedModelFeatureError,
    btok_attention_forward,
    btok_mask,
    is_registered,
    register,
)
from .embedder import BTokConfig, BTokModel, BTokOutput, ExampleError, PooledEmbedder

__all__ = [
    "ATTN_IMPLEMENTATION",
    "BTokConfig",
    "BTokModel",
    "BTokOutput",
    "ExampleError",
    "KernelSettings",
    "PooledEmbedder",
    "UnsupportedModelFeatureError",
    "btok_attention_forward",
    "btok_mask",
    "is_registered",
    "register",
]

register()
