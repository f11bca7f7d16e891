"""The BTok model layer: BToks, packed collation, losses and :class:`BTokModel`.

* :mod:`.backbone` -- the one backbone loader (name, folder, GGUF, instance; text or
  vision-language), the collator factory and the save shared by every embedder.
* :mod:`.precision` -- the one dtype decision (bfloat16 where the device computes it natively).
* :mod:`.tokens` -- adding the BTok tokens, initialising and training their rows (PEFT).
* :mod:`.collate` -- examples -> one packed batch; texts -> BTok inputs.
* :mod:`.media` -- the processed image / video of an input, joined into the backbone's pixel inputs.
* :mod:`.multimodal` -- images and video for Qwen2-VL / Qwen2.5-VL / Qwen3-VL: the processor, M-RoPE positions.
* :mod:`.losses` -- InfoNCE, the generative loss, the cross-rank gather.
* :mod:`.peer_masks` -- the condensation mask for the peer backends (``eager``, ``sdpa``, ``flex_attention``).
* :mod:`.base` -- :class:`Embedder`, the base class both embedders share (forward, losses, save /
  load); :class:`BTokOutput`, :class:`BatchEmbeddings`.
* :mod:`.pooling` -- the pooled states of each input -> its embedding (mean, last, or K vectors).
* :mod:`.encode` -- the encode engine every caller uses (``Embedder.encode`` included): packed
  or padded batches, row blocks in length order, sharded across ranks under ``torchrun``,
  results in input order, a progress bar.
* :mod:`.packed_batch` -- :class:`BTokBatch`, the typed packed batch.
* :mod:`.btok` -- :class:`BTokModel`.
* :mod:`.pooled` -- :class:`PooledEmbedder`, the no-BTok baseline (last-token or mean pooling).
* :mod:`.btok_cache` -- ``[input | BToks]`` once, with a KV cache cut to the BToks' keys/values.
* :mod:`.twopass` -- the authors' two-pass formulation (reference and benchmark peer).
* :mod:`.generation` -- decoding the bottleneck: text generated from that cache.
"""

from .base import BatchEmbeddings, BTokOutput, Embedder
from .btok import BTokModel
from .collate import TARGET_SIDES, BTokCollator, EncodedExample, ExampleError, Target
from .config import BTokConfig, EmbedderConfig, PooledConfig
from .losses import LossWeights
from .media import Media
from .multimodal import MultimodalCollator
from .packed_batch import BTokBatch
from .pooled import PooledEmbedder
from .pooling import pool_btok_states
from .twopass import TwoPassOutput, two_pass_forward

__all__ = [
    "BTokBatch",
    "BatchEmbeddings",
    "Embedder",
    "EmbedderConfig",
    "LossWeights",
    "PooledConfig",
    "BTokCollator",
    "BTokConfig",
    "BTokModel",
    "BTokOutput",
    "EncodedExample",
    "ExampleError",
    "Media",
    "MultimodalCollator",
    "PooledEmbedder",
    "TARGET_SIDES",
    "Target",
    "TwoPassOutput",
    "pool_btok_states",
    "two_pass_forward",
]
