from .naive import condensation_bwd_naive, condensation_fwd_naive
from .ops import BACKENDS, condensation_attention

__all__ = ["BACKENDS", "condensation_attention", "condensation_fwd_naive", "condensation_bwd_naive"]
