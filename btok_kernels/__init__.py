"""btok_kernels: condensation-mask attention for Bottleneck-Token (BTok) training.

from btok_kernels import CondensationLayout, condensation_attention
"""

from .condensation import BACKENDS, condensation_attention, condensation_bwd_naive, condensation_fwd_naive
from .layout import CondensationLayout
from .mask import condensation_mask, sequence_mask

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "CondensationLayout",
    "condensation_attention",
    "condensation_fwd_naive",
    "condensation_bwd_naive",
    "condensation_mask",
    "sequence_mask",
]
