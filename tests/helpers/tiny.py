"""Tiny offline models, tokenizers, processors and images for the tests; nothing is downloaded.

Every model is a random fp32 model built from a real transformers config: text model 2 layers,
hidden 64, head dim 16, GQA 4/2 (:data:`TINY_TEXT_CONFIG`), weights drawn wider than the default
init (:func:`widened`) so that a wrong mask cannot hide under a tolerance. Two sets, each named
for its use:

- BTok models speak the character tokenizer (:func:`char_tokenizer`: 48 ids, any lower-case
  text; :func:`vl_tokenizer` adds the vision tokens, ids 48..51), vocabulary 64:
  :func:`tiny_backbone` / :func:`tiny_btok` (Llama, Qwen2), :func:`tiny_vl_backbone` /
  :func:`tiny_vl_btok` (Qwen2-VL, Qwen2.5-VL, Qwen3-VL: patch 14 or 16, the real
  ``Qwen2VLImageProcessor``), :func:`save_backbone` (a backbone folder as a user has one).
- Attention-backend models take random ids (:func:`random_ids`: 1..89), vocabulary 96, vision
  tokens 93..95, patch 2: :func:`backend_model` of every family the backend supports, and the
  comparisons of tests/backend (:func:`forward_backward`, :func:`model_backends`).

transformers' video processors need torchvision, which this machine cannot install beside its
torch build, so :class:`FrameVideoProcessor` produces the video processor's output from the real
image processor, frame by frame (a test checks it against the image processor).
"""

from __future__ import annotations

import string
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    BatchFeature,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
)
from transformers.video_utils import VideoMetadata

from btok_model import BTokModel
from tests.helpers.oracle import dense_mask

# -- every model: the text model, the weights ------------------------------------------------------
# The text model of every tiny model (a vocabulary size added per use).
TINY_TEXT_CONFIG = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    pad_token_id=0,
)


def widened(model):
    """``model`` in fp32 with wider random weights than the default init: the outputs then
    depend strongly on the attention pattern and the positions, so a wrong mask cannot hide
    under a tolerance."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.08)
    return model.float()


# -- BTok models: the character tokenizer, text backbones, examples --------------------------------
CHARS = string.ascii_lowercase + string.digits + " .,?!'-\n"
SPECIAL = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]


def char_tokenizer() -> PreTrainedTokenizerFast:
    """A fresh character-level tokenizer (48 ids: 4 special + 44 characters)."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL + list(CHARS))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>")
    tokenizer.add_tokens(["<|im_start|>", "<|im_end|>"], special_tokens=True)
    return tokenizer


def tiny_backbone(family: str = "llama", seed: int = 0, vocab_size: int | None = 64, **overrides) -> torch.nn.Module:
    """A random fp32 causal LM: ``"llama"`` ties its LM head to the embedding, ``"qwen2"`` does not."""
    common = dict(TINY_TEXT_CONFIG, vocab_size=vocab_size or len(char_tokenizer()), **overrides)
    torch.manual_seed(seed)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common, head_dim=16, tie_word_embeddings=True))
    elif family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common, tie_word_embeddings=False))
    else:
        raise ValueError(family)
    return widened(model)


def tiny_btok(family: str = "llama", seed: int = 0, attn: str = "btok_triton", **kwargs) -> BTokModel:
    """A BTokModel on a tiny random backbone (kwargs go to ``from_backbone``)."""
    vocab_size = kwargs.pop("vocab_size", 64)
    backbone = tiny_backbone(family, seed, vocab_size=vocab_size)
    return BTokModel.from_backbone(backbone, tokenizer=char_tokenizer(), attn_implementation=attn, **kwargs)


def save_backbone(folder, **overrides):
    """Saves :func:`tiny_backbone` (``vocab_size=None``: exactly the tokenizer's vocabulary; ``overrides``:
    config fields) and the character tokenizer to ``folder``, as a user's backbone folder; returns it."""
    tiny_backbone(vocab_size=None, **overrides).save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    return folder


EXAMPLES = [
    {"query": "what is a cat?", "positive": "a small furry animal", "negatives": ["a red fruit", "a tall tree"]},
    {"query": "capital of france", "positive": "paris", "target": "paris is the capital of france."},
    {"query": "opposite of hot", "positive": "cold", "target": None, "negatives": ["warm"]},
    {"query": "2 + 2", "positive": "four", "target": "it is 4"},
]


def snapshot(model: BTokModel) -> dict[str, torch.Tensor]:
    """A copy of every backbone parameter, by name."""
    return {n: p.detach().clone() for n, p in model.backbone.named_parameters()}


def adamw_step(model: BTokModel, examples: list[dict]) -> set[str]:
    """One AdamW step (lr 1e-2, weight decay 0.1) on ``examples``; returns the names of the
    backbone parameters that require gradients."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    model(**model.collate(examples)).loss.backward()
    opt.step()
    return {n for n, p in model.backbone.named_parameters() if p.requires_grad}


# -- BTok vision-language models: tokenizer, processors, backbones, images -------------------------
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


VL_TEXT_CONFIG = dict(
    TINY_TEXT_CONFIG,
    vocab_size=64,
    bos_token_id=None,
    eos_token_id=None,
    rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[2, 3, 3]),
)
VL_TOKEN_IDS = dict(
    image_token_id=IMAGE_TOKEN,
    video_token_id=VIDEO_TOKEN,
    vision_start_token_id=VISION_START,
    vision_end_token_id=VISION_END,
)
VL_VISION_COMMON = dict(in_channels=3, patch_size=PATCH, spatial_merge_size=MERGE, temporal_patch_size=TEMPORAL)


def tiny_vl_backbone(family: str = "qwen2_vl", seed: int = 0) -> torch.nn.Module:
    """A random fp32 ``Qwen2VLForConditionalGeneration`` (tied LM head, as Qwen2-VL-2B),
    ``Qwen2_5_VLForConditionalGeneration`` (untied, as Qwen2.5-VL-7B; window attention) or
    ``Qwen3VLForConditionalGeneration`` (tied, as Qwen3-VL-2B; interleaved M-RoPE, q/k norms,
    patch 16, learned vision positions, deepstack: the first vision block's merged output is
    added to the first text layer's output at the vision tokens)."""
    merged = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64)
    if family == "qwen2_vl":
        config_class, model_class, tied, text = Qwen2VLConfig, Qwen2VLForConditionalGeneration, True, {}
        vision = dict(VL_VISION_COMMON, depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2)
    elif family == "qwen2_5_vl":
        config_class, model_class, tied, text = Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, False, {}
        vision = dict(VL_VISION_COMMON, **merged, window_size=56, fullatt_block_indexes=[1], tokens_per_second=2)
    elif family == "qwen3_vl":
        config_class, model_class, tied = Qwen3VLConfig, Qwen3VLForConditionalGeneration, True
        # 8 rotary frequencies: height on 1 and 4, width on 2 and 5, time on the rest (interleaved)
        rope = dict(rope_type="default", rope_theta=10000.0, mrope_section=[4, 2, 2], mrope_interleaved=True)
        text = dict(head_dim=16, rope_parameters=rope)
        # deepstack not [0, 1]: a feature added after the last text layer reaches only the vision
        # tokens' final states, which no BTok loss reads (its merger would get no gradient).
        vision = dict(
            VL_VISION_COMMON, **merged, patch_size=QWEN3_PATCH, num_position_embeddings=16, deepstack_visual_indexes=[0]
        )
    else:
        raise ValueError(family)
    config = config_class(
        text_config=dict(VL_TEXT_CONFIG, **text, tie_word_embeddings=tied),
        vision_config=vision,
        tie_word_embeddings=tied,
        **VL_TOKEN_IDS,
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


# -- attention-backend models: every family, random ids, and their comparisons ---------------------
BACKEND_VOCAB = 96
# Qwen2-VL / Qwen3-VL special tokens, outside the random ids
BACKEND_IMAGE_TOKEN, BACKEND_VISION_START, BACKEND_VISION_END = 93, 94, 95
# The vision-language models: they take [text; 3 M-RoPE rows] packed positions.
BACKEND_VL_MODELS = ("qwen2_vl", "qwen3_vl")

BACKEND_TEXT_CONFIG = dict(TINY_TEXT_CONFIG, vocab_size=BACKEND_VOCAB)
BACKEND_VISION_COMMON = dict(in_channels=3, patch_size=2, temporal_patch_size=2, spatial_merge_size=2)
BACKEND_VL_TOKEN_IDS = dict(
    image_token_id=BACKEND_IMAGE_TOKEN,
    vision_start_token_id=BACKEND_VISION_START,
    vision_end_token_id=BACKEND_VISION_END,
)


def _backend_llama():
    return LlamaForCausalLM(LlamaConfig(**BACKEND_TEXT_CONFIG, head_dim=16))


def _backend_mistral():
    # A sliding window longer than every test sequence: exact, so the backend accepts it.
    return MistralForCausalLM(MistralConfig(**BACKEND_TEXT_CONFIG, head_dim=16, sliding_window=64))


def _backend_qwen2():
    return Qwen2ForCausalLM(Qwen2Config(**BACKEND_TEXT_CONFIG))


def _backend_qwen3():
    return Qwen3ForCausalLM(Qwen3Config(**BACKEND_TEXT_CONFIG, head_dim=16))


def _backend_qwen2_vl():
    text = dict(
        BACKEND_TEXT_CONFIG, rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[2, 3, 3])
    )
    vision = dict(BACKEND_VISION_COMMON, depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2)
    return Qwen2VLForConditionalGeneration(
        Qwen2VLConfig(text_config=text, vision_config=vision, **BACKEND_VL_TOKEN_IDS)
    )


def _backend_qwen3_vl():
    # Interleaved M-RoPE over 8 frequencies, q/k norms; both vision blocks feed both text layers (deepstack).
    rope = dict(rope_type="default", rope_theta=10000.0, mrope_section=[4, 2, 2], mrope_interleaved=True)
    vision = dict(
        BACKEND_VISION_COMMON,
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=64,
        num_position_embeddings=16,
        deepstack_visual_indexes=[0, 1],
    )
    text = dict(BACKEND_TEXT_CONFIG, head_dim=16, rope_parameters=rope)
    return Qwen3VLForConditionalGeneration(
        Qwen3VLConfig(text_config=text, vision_config=vision, **BACKEND_VL_TOKEN_IDS)
    )


_BACKEND_BUILDERS = {
    "llama": _backend_llama,
    "mistral": _backend_mistral,
    "qwen2": _backend_qwen2,
    "qwen3": _backend_qwen3,
    "qwen2_vl": _backend_qwen2_vl,
    "qwen3_vl": _backend_qwen3_vl,
}


def backend_model(name: str, seed: int = 0) -> torch.nn.Module:
    """A tiny random model of family ``name`` (a key of ``_BACKEND_BUILDERS``) for the attention-backend
    tests, in eval mode, fp32, on the CPU."""
    torch.manual_seed(seed)
    # wider random weights than the default init: a wrong mask cannot hide under the tolerance
    return widened(_BACKEND_BUILDERS[name]()).eval()


def random_ids(lengths: list[int], seed: int = 1) -> list[torch.Tensor]:
    """One random token-id sequence per length (ids 1..89: no pad id, no special tokens)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 90, (n,), generator=g) for n in lengths]


def pad_batch(seqs: list[torch.Tensor], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids [B, S], attention_mask [B, S])`` padded with id 0 on ``side``."""
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for r, s in enumerate(seqs):
        sl = slice(width - len(s), width) if side == "left" else slice(0, len(s))
        ids[r, sl], mask[r, sl] = s, 1
    return ids, mask


def forward_backward(model, impl: str, weight_seed: int = 7, weights: torch.Tensor | None = None, **inputs):
    """Logits and parameter gradients of a fixed random linear loss on the valid logits.

    The loss weighs each logit of a real token by a fixed random number (``weights``, by
    default drawn from ``weight_seed``), so every logit row and every parameter gradient is
    checked. Returns ``(logits, {name: grad})``.
    """
    model.set_attn_implementation(impl)
    model.zero_grad(set_to_none=True)
    logits = model(**inputs).logits
    if weights is None:
        weights = torch.randn(logits.shape, generator=torch.Generator().manual_seed(weight_seed))
    weights = weights.to(logits.device)
    valid = inputs.get("attention_mask")
    if valid is not None:
        weights = weights * valid[..., None]
    (logits * weights).sum().backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), grads


def dense_condensation_mask(query_len: int, num_btoks: int, length: int, dtype=torch.float32) -> torch.Tensor:
    """Additive ``[1, 1, L, L]`` mask of one ``[query | BToks | target]`` sequence, for "eager"."""
    allowed = dense_mask(length, query_len, query_len + num_btoks)
    return torch.where(allowed, 0.0, torch.finfo(dtype).min).to(dtype)[None, None]


def model_backends(models: list[str], triton: list[str]) -> list:
    """``(model name, kernel backend)`` cases for ``@pytest.mark.parametrize("name,kernel_backend",
    ..., indirect=["kernel_backend"])``: every model on the CPU default backend, the models
    in ``triton`` also through the Triton kernels (interpreted: seconds per model)."""
    cases = [pytest.param(name, "auto", id=f"{name}-auto") for name in models]
    return cases + [pytest.param(name, "triton", id=f"{name}-triton", marks=pytest.mark.interpret) for name in triton]
