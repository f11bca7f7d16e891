"""The BTok model layer: BToks, packed collation, losses and :class:`BTokModel`.

* :mod:`.backbone` -- the one backbone loader (name, folder, GGUF, instance; text or
  vision-language), the collator factory and the save shared by every embedder.
* :mod:`.precision` -- the one dtype decision (bfloat16 where the device computes it natively).
* :mod:`.tokens` -- adding the BTok tokens, initialising and training their rows (PEFT).
* :mod:`.collate` -- examples -> one packed batch; texts -> BTok inputs.
* :mod:`.multimodal` -- images and video for Qwen2-VL / Qwen2.5-VL: the processor, M-RoPE positions.
* :mod:`.losses` -- InfoNCE, the generative loss, the cross-rank gather.
* :mod:`.masks` -- the condensation mask for backends other than ``"btok_triton"``.
* :mod:`.modeling` -- :class:`BTokModel`, :class:`BTokOutput`.
* :mod:`.twopass` -- the authors' two-pass formulation (reference and benchmark peer).
"""

from .collate import BTokCollator, EncodedExample, ExampleError
from .config import BTokConfig
from .modeling import BTokModel, BTokOutput, pool_btok_states
from .multimodal import Media, MultimodalCollator
from .twopass import TwoPassOutput, two_pass_forward

__all__ = [
    "BTokCollator",
    "BTokConfig",
    "BTokModel",
    "BTokOutput",
    "EncodedExample",
    "ExampleError",
    "Media",
    "MultimodalCollator",
    "TwoPassOutput",
    "pool_btok_states",
    "two_pass_forward",
]
