"""Tiny offline Qwen2-VL / Qwen2.5-VL / Qwen3-VL fixtures for the multimodal BTok tests.

Nothing is downloaded. The tokenizer is :func:`tests.helpers.tiny_models.char_tokenizer` plus Qwen's four
vision tokens (and ``<``, ``>`` for Qwen3-VL's frame timestamps, ``<0.2 seconds>``); the
image processor is transformers' real ``Qwen2VLImageProcessor`` (its PIL backend without
torchvision; Qwen3-VL uses it too) for images of 28..96 px (patch 14, or Qwen3-VL's 16, 2x2
merge: 1..6 image tokens); the models are random 2-layer text models (as in :mod:`tests.helpers.tiny_models`)
with a 2-block vision tower. transformers' video processors need torchvision, which this
machine cannot install beside its torch build, so :class:`FrameVideoProcessor` produces the
video processor's output (``pixel_values_videos`` / ``video_grid_thw``) from the real image
processor, frame by frame; a test checks it against the image processor.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from transformers import (
    BatchFeature,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
)
from transformers.video_utils import VideoMetadata

from btok_model import BTokModel
from tests.helpers.tiny_models import TINY_TEXT_CONFIG, char_tokenizer, widened

VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
VISION_START, VISION_END, IMAGE_TOKEN, VIDEO_TOKEN = 48, 49, 50, 51  # after the 48 character-tokenizer ids
PATCH, MERGE, TEMPORAL = 14, 2, 2
QWEN3_PATCH = 16  # Qwen3-VL's patch size
# Qwen3-VL's timestamps (<0.2 seconds>) need "<" and ">": plain tokens after the vision tokens.
TIMESTAMP_CHARS = ["<", ">"]


def vl_tokenizer(family: str = "qwen2_vl"):
    """The character tokenizer with the vision tokens (ids 48..51), and for ``"qwen3_vl"``
    ``<`` and ``>`` (52, 53)."""
    tokenizer = char_tokenizer()
    tokenizer.add_tokens(VISION_TOKENS, special_tokens=True)
    assert tokenizer.convert_tokens_to_ids(VISION_TOKENS) == [VISION_START, VISION_END, IMAGE_TOKEN, VIDEO_TOKEN]
    if family == "qwen3_vl":
        tokenizer.add_tokens(TIMESTAMP_CHARS)
    return tokenizer


def image_processor(patch: int = PATCH):
    """The real Qwen2-VL image processor (Qwen3-VL's too), sized for tiny images: at most
    4 x 6 patches of ``patch`` px."""
    side = patch * MERGE
    return Qwen2VLImageProcessor(
        min_pixels=side * side,
        max_pixels=6 * side * side,
        patch_size=patch,
        merge_size=MERGE,
        temporal_patch_size=TEMPORAL,
    )


class FrameVideoProcessor:
    """The Qwen2-VL video processor's output, built with the real image processor.

    Qwen2-VL and Qwen3-VL flatten each patch as ``[C, temporal_patch_size, p, p]``:
    consecutive frames share a patch. The image processor repeats a still image over the
    temporal axis; this processes every frame as an image and takes temporal slot ``j`` of
    frame ``2t + j``.
    """

    merge_size, temporal_patch_size = MERGE, TEMPORAL

    def __init__(self, patch: int = PATCH):
        self.image_processor = image_processor(patch)
        self.patch = patch

    def __call__(self, videos, return_tensors="pt"):
        pixels, grids = [], []
        for frames in videos:
            if len(frames) % TEMPORAL:
                raise ValueError(f"a video needs a multiple of {TEMPORAL} frames, got {len(frames)}")
            out = [self.image_processor(images=[f], return_tensors="pt") for f in frames]
            grid = out[0]["image_grid_thw"][0]
            patches = [o["pixel_values"].view(-1, 3, TEMPORAL, self.patch * self.patch) for o in out]
            for t in range(len(frames) // TEMPORAL):
                pair = [patches[TEMPORAL * t + j][:, :, j] for j in range(TEMPORAL)]
                pixels.append(torch.stack(pair, 2).flatten(1))
            grids.append(torch.tensor([len(frames) // TEMPORAL, int(grid[1]), int(grid[2])]))
        return BatchFeature({"pixel_values_videos": torch.cat(pixels), "video_grid_thw": torch.stack(grids)})


class Qwen3FrameVideoProcessor(FrameVideoProcessor):
    """Qwen3-VL's video processor's output (patch 16), as :class:`FrameVideoProcessor`.

    Like transformers' ``Qwen3VLVideoProcessor`` it samples frames unless told
    ``do_sample_frames=False`` (here: raises, since resampling would change the frames),
    refuses fewer frames than a temporal patch, pads an odd number of frames with the last
    one, and returns ``video_metadata`` when asked (what ``Qwen3VLProcessor`` reads its
    timestamps from).
    """

    do_sample_frames = True

    def __init__(self):
        super().__init__(QWEN3_PATCH)

    def __call__(self, videos, return_tensors="pt", do_sample_frames=None, video_metadata=None, return_metadata=False):
        if do_sample_frames is not False:
            raise ValueError("Qwen3VLVideoProcessor would resample these frames: pass do_sample_frames=False")
        if any(len(v) < TEMPORAL for v in videos):
            raise ValueError(f"t:{min(len(v) for v in videos)} must be larger than temporal_factor:{TEMPORAL}")
        videos = [list(v) + list(v[-1:]) * (len(v) % TEMPORAL) for v in videos]
        out = super().__call__(videos, return_tensors)
        if return_metadata:
            out["video_metadata"] = [VideoMetadata(**m) for m in video_metadata]
        return out


TEXT = dict(
    TINY_TEXT_CONFIG,
    vocab_size=64,
    bos_token_id=None,
    eos_token_id=None,
    rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[2, 3, 3]),
)
TOKEN_IDS = dict(
    image_token_id=IMAGE_TOKEN,
    video_token_id=VIDEO_TOKEN,
    vision_start_token_id=VISION_START,
    vision_end_token_id=VISION_END,
)
VISION_COMMON = dict(in_channels=3, patch_size=PATCH, spatial_merge_size=MERGE, temporal_patch_size=TEMPORAL)


def tiny_vl_backbone(family: str = "qwen2_vl", seed: int = 0) -> torch.nn.Module:
    """A random fp32 ``Qwen2VLForConditionalGeneration`` (tied LM head, as Qwen2-VL-2B),
    ``Qwen2_5_VLForConditionalGeneration`` (untied, as Qwen2.5-VL-7B; window attention) or
    ``Qwen3VLForConditionalGeneration`` (tied, as Qwen3-VL-2B; interleaved M-RoPE, q/k norms,
    patch 16, learned vision positions, deepstack: the first vision block's merged output is
    added to the first text layer's output at the vision tokens)."""
    merged = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64)
    if family == "qwen2_vl":
        config_class, model_class, tied, text = Qwen2VLConfig, Qwen2VLForConditionalGeneration, True, {}
        vision = dict(VISION_COMMON, depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2)
    elif family == "qwen2_5_vl":
        config_class, model_class, tied, text = Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, False, {}
        vision = dict(VISION_COMMON, **merged, window_size=56, fullatt_block_indexes=[1], tokens_per_second=2)
    elif family == "qwen3_vl":
        config_class, model_class, tied = Qwen3VLConfig, Qwen3VLForConditionalGeneration, True
        # 8 rotary frequencies: height on 1 and 4, width on 2 and 5, time on the rest (interleaved)
        rope = dict(rope_type="default", rope_theta=10000.0, mrope_section=[4, 2, 2], mrope_interleaved=True)
        text = dict(head_dim=16, rope_parameters=rope)
        # deepstack not [0, 1]: a feature added after the last text layer reaches only the vision
        # tokens' final states, which no BTok loss reads (its merger would get no gradient).
        vision = dict(
            VISION_COMMON, **merged, patch_size=QWEN3_PATCH, num_position_embeddings=16, deepstack_visual_indexes=[0]
        )
    else:
        raise ValueError(family)
    config = config_class(
        text_config=dict(TEXT, **text, tie_word_embeddings=tied),
        vision_config=vision,
        tie_word_embeddings=tied,
        **TOKEN_IDS,
    )
    torch.manual_seed(seed)
    return widened(model_class(config))


def processor(video: bool = True, family: str = "qwen2_vl") -> SimpleNamespace:
    """The processor's parts (transformers' processor classes need torchvision): the image
    processor and the frame-built video processor (Qwen3-VL's when ``family`` is ``"qwen3_vl"``)."""
    if family == "qwen3_vl":
        return SimpleNamespace(
            image_processor=image_processor(QWEN3_PATCH), video_processor=Qwen3FrameVideoProcessor() if video else None
        )
    return SimpleNamespace(image_processor=image_processor(), video_processor=FrameVideoProcessor() if video else None)


def tiny_vl_btok(family: str = "qwen2_vl", seed: int = 0, attn: str = "btok_triton", video: bool = True, **kwargs):
    """A BTokModel on a tiny random VL backbone with the real image processor (and the
    frame-built video processor when ``video``)."""
    kwargs.setdefault("processor", processor(video, family))
    return BTokModel.from_backbone(
        tiny_vl_backbone(family, seed), tokenizer=vl_tokenizer(family), attn_implementation=attn, **kwargs
    )


def image(height: int, width: int, seed: int):
    """A random RGB ``PIL.Image``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def frames(n: int, height: int, width: int, seed: int) -> list:
    return [image(height, width, seed + i) for i in range(n)]
