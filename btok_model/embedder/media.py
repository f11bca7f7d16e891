"""The processed image and video of an input, and how a batch's media join into the backbone's pixel inputs.

A vision-language collator (:mod:`.multimodal`) fills a :class:`Media` per input from the
model's processor; a text collator carries None. Packing and padding concatenate them in row
order into the keys of :data:`MEDIA_BATCH_KEYS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["MEDIA_BATCH_KEYS", "Media", "concat_media"]

# Batch keys the backbone's forward takes besides input_ids / position_ids.
MEDIA_BATCH_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw")


@dataclass
class Media:
    """The processed image and video of one input (CPU tensors; None where absent).

    Attributes:
        pixel_values: float ``[P, C * t * p * p]``, the image's patches.
        image_grid_thw: int64 ``[1, 3]``, its patch grid.
        pixel_values_videos: float ``[Pv, C * t * p * p]``, the video's patches.
        video_grid_thw: int64 ``[1, 3]``.
        second_per_grid_ts: fp32 ``[1]``, seconds per temporal patch of the video.
        video_seconds: the time of each temporal patch (:func:`~.multimodal.patch_seconds`).
    """

    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None
    pixel_values_videos: torch.Tensor | None = None
    video_grid_thw: torch.Tensor | None = None
    second_per_grid_ts: torch.Tensor | None = None
    video_seconds: tuple[float, ...] | None = None


def concat_media(media: Sequence[Media | None], keys: Sequence[str]) -> dict[str, torch.Tensor]:
    """``{key: cat(the media's tensors along dim 0)}`` for each key some entry has, in order."""
    out = {}
    for key in keys:
        parts = [getattr(m, key) for m in media if m is not None and getattr(m, key) is not None]
        if parts:
            out[key] = torch.cat(parts)
    return out
