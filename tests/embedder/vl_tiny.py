"""Tiny offline Qwen2-VL / Qwen2.5-VL fixtures for the multimodal BTok tests.

Nothing is downloaded. The tokenizer is :func:`btok_tiny.char_tokenizer` plus Qwen's four
vision tokens; the image processor is transformers' real ``Qwen2VLImageProcessor`` (its PIL
backend without torchvision) for images of 28..84 px (patch 14, 2x2 merge: 1..6 image
tokens); the models are random 2-layer text models (as in ``btok_tiny``) with a 2-block
vision tower. transformers' Qwen2-VL video processor needs torchvision, which this machine
cannot install beside its torch build, so :class:`FrameVideoProcessor` produces the video
processor's output (``pixel_values_videos`` / ``video_grid_thw``) from the real image
processor, frame by frame; a test checks it against the image processor.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from btok_tiny import char_tokenizer, widened
from transformers import (
    BatchFeature,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
)

from btok_model import BTokModel

VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
VISION_START, VISION_END, IMAGE_TOKEN, VIDEO_TOKEN = 48, 49, 50, 51  # after the 48 character-tokenizer ids
PATCH, MERGE, TEMPORAL = 14, 2, 2


def vl_tokenizer():
    tokenizer = char_tokenizer()
    tokenizer.add_tokens(VISION_TOKENS, special_tokens=True)
    assert tokenizer.convert_tokens_to_ids(VISION_TOKENS) == [VISION_START, VISION_END, IMAGE_TOKEN, VIDEO_TOKEN]
    return tokenizer


def image_processor():
    """The real Qwen2-VL image processor, sized for tiny images (at most 4 x 6 patches of 14 px)."""
    return Qwen2VLImageProcessor(
        min_pixels=28 * 28, max_pixels=56 * 84, patch_size=PATCH, merge_size=MERGE, temporal_patch_size=TEMPORAL
    )


class FrameVideoProcessor:
    """The Qwen2-VL video processor's output, built with the real image processor.

    Qwen2-VL flattens each patch as ``[C, temporal_patch_size, p, p]``: consecutive frames
    share a patch. The image processor repeats a still image over the temporal axis; this
    processes every frame as an image and takes temporal slot ``j`` of frame ``2t + j``.
    """

    merge_size, temporal_patch_size = MERGE, TEMPORAL

    def __init__(self):
        self.image_processor = image_processor()

    def __call__(self, videos, return_tensors="pt"):
        pixels, grids = [], []
        for frames in videos:
            if len(frames) % TEMPORAL:
                raise ValueError(f"a video needs a multiple of {TEMPORAL} frames, got {len(frames)}")
            out = [self.image_processor(images=[f], return_tensors="pt") for f in frames]
            grid = out[0]["image_grid_thw"][0]
            patches = [o["pixel_values"].view(-1, 3, TEMPORAL, PATCH * PATCH) for o in out]
            for t in range(len(frames) // TEMPORAL):
                pair = [patches[TEMPORAL * t + j][:, :, j] for j in range(TEMPORAL)]
                pixels.append(torch.stack(pair, 2).flatten(1))
            grids.append(torch.tensor([len(frames) // TEMPORAL, int(grid[1]), int(grid[2])]))
        return BatchFeature({"pixel_values_videos": torch.cat(pixels), "video_grid_thw": torch.stack(grids)})


TEXT = dict(
    vocab_size=64,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    pad_token_id=0,
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
    """A random fp32 ``Qwen2VLForConditionalGeneration`` (tied LM head, as Qwen2-VL-2B) or
    ``Qwen2_5_VLForConditionalGeneration`` (untied, as Qwen2.5-VL-7B; window attention)."""
    torch.manual_seed(seed)
    if family == "qwen2_vl":
        vision = dict(VISION_COMMON, depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2)
        config = Qwen2VLConfig(
            text_config=dict(TEXT, tie_word_embeddings=True),
            vision_config=vision,
            tie_word_embeddings=True,
            **TOKEN_IDS,
        )
        model = Qwen2VLForConditionalGeneration(config)
    elif family == "qwen2_5_vl":
        vision = dict(
            VISION_COMMON,
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=64,
            window_size=56,
            fullatt_block_indexes=[1],
            tokens_per_second=2,
        )
        config = Qwen2_5_VLConfig(
            text_config=dict(TEXT, tie_word_embeddings=False),
            vision_config=vision,
            tie_word_embeddings=False,
            **TOKEN_IDS,
        )
        model = Qwen2_5_VLForConditionalGeneration(config)
    else:
        raise ValueError(family)
    return widened(model)


def processor(video: bool = True) -> SimpleNamespace:
    """The processor's parts (the Qwen2-VL processor class itself needs torchvision)."""
    return SimpleNamespace(image_processor=image_processor(), video_processor=FrameVideoProcessor() if video else None)


def tiny_vl_btok(family: str = "qwen2_vl", seed: int = 0, attn: str = "btok_triton", video: bool = True, **kwargs):
    """A BTokModel on a tiny random VL backbone with the real image processor (and the
    frame-built video processor when ``video``)."""
    kwargs.setdefault("processor", processor(video))
    return BTokModel.from_backbone(
        tiny_vl_backbone(family, seed), tokenizer=vl_tokenizer(), attn_implementation=attn, **kwargs
    )


def image(height: int, width: int, seed: int):
    """A random RGB ``PIL.Image``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def frames(n: int, height: int, width: int, seed: int) -> list:
    return [image(height, width, seed + i) for i in range(n)]
