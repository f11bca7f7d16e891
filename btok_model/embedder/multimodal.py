"""Images and video for Qwen2-VL / Qwen2.5-VL / Qwen3-VL backbones: inputs, the processor, M-RoPE positions.

An input is a str or a dict ``{"text": str | None, "image": ..., "video": ..., "fps": ...,
"placement": ..., "trailing_newline": ...}``. :class:`MultimodalCollator` writes its prompt as the
authors' transforms do (the vision blocks on their own line before the text by default, or at the
end of its line), tokenises it as the model's processor does, and takes the pixels from the
model's own image and video processors. A batch packs into ONE row: the pixel inputs follow the
order of their placeholder tokens, and the ``[3, 1, T]`` positions restart per sequence from the
model's own ``get_rope_index`` (a target's at ``S`` + its own rope index, ``S`` the token count of
``[input | BToks]``, as the authors' second pass gives them). A target generated from an input with
an image or video holds its blocks and pixels: the target rows see them, no vision token is scored.

What differs between the families is one :class:`VisionFamily` each; the installed transformers'
Qwen3-VL video layout is :func:`qwen3_vl_video_layout`'s answer, which a saved model records
(``video_layout``) and :func:`check_video_layout` compares on load.

The rules in full (values, prompt, packed row, torchvision): docs/multimodal.md; the target
positions and the two-pass equality: docs/design.md.
"""

from __future__ import annotations

import copy
import functools
import inspect
import os
import types
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..datasets.schema import FLAT_IMAGE_KEYS, example_input
from .collate import (
    EXAMPLE_KEYS,
    IMAGE_KEYS,
    BTokCollator,
    ExampleError,
    check_input_dict,
    describe_value,
    input_name,
)
from .media import MEDIA_BATCH_KEYS, Media, concat_media

__all__ = [
    "DEFAULT_FPS",
    "VISION_FAMILIES",
    "VISION_MODEL_NAMES",
    "VISION_MODEL_TYPES",
    "MultimodalCollator",
    "RopeIndex",
    "VisionFamily",
    "VisionTokens",
    "check_processor",
    "is_vision_model",
    "load_image",
    "patch_seconds",
    "processor_parts",
    "qwen3_vl_video_layout",
    "vision_family",
]
# Flat image key (the JSONL training format) -> the input field it gives the image of.
_FLAT_FIELDS = {key: field for field, key in FLAT_IMAGE_KEYS.items()}
DEFAULT_FPS = 2.0


@dataclass(frozen=True)
class VisionFamily:
    """What one supported vision-language family does its own way (the rest is shared).

    Attributes:
        model_type: the transformers ``model_type``.
        name: how messages name the family.
        timestamped_video: a video is one block per temporal patch, each after its time in
            text (Qwen3-VL; docs/multimodal.md), not one run of video tokens.
    """

    model_type: str
    name: str
    timestamped_video: bool = False

    @property
    def video_layout(self) -> str | None:
        """How this family's videos are laid out under the installed transformers
        (:func:`qwen3_vl_video_layout`), None where it does not vary (one run of video tokens)."""
        return qwen3_vl_video_layout() if self.timestamped_video else None

    def expand_video(
        self,
        seq: list[int],
        grid: torch.Tensor,
        seconds: Sequence[float],
        merge_size: int,
        tokens: VisionTokens,
        text_ids,
    ) -> None:
        """Replace, in place, the one video placeholder of ``seq`` (inside its
        ``vision_start, video, vision_end`` block) with the video's ids, as the installed
        processor does.

        Args:
            seq: token ids holding exactly one video block.
            grid: int64 ``[3]``, the video's ``(t, h, w)`` patch grid.
            seconds: the time of each of its ``t`` temporal patches (:func:`patch_seconds`).
            merge_size: the processor's spatial merge size (``merge_size**2`` patches a token).
            tokens: the model's vision tokens.
            text_ids: ``list[str] -> list[list[int]]``, ids without special tokens.
        """
        t, h, w = (int(x) for x in grid)
        at = seq.index(tokens.video)
        if not self.timestamped_video:
            seq[at : at + 1] = [tokens.video] * (t * h * w // merge_size**2)
            return
        frame = [tokens.vision_start] + [tokens.video] * (h * w // merge_size**2) + [tokens.vision_end]
        ids = [i for stamp in text_ids([f"<{s:.1f} seconds>" for s in seconds]) for i in stamp + frame]
        if self.video_layout == "frames":
            seq[at - 1 : at + 2] = ids  # the frames replace the block, its outer pair included
        else:
            seq[at : at + 1] = ids


# The layouts a Qwen3-VL video can have: its outer <|vision_start|> ... <|vision_end|> pair kept
# around the timestamped frame blocks ("wrapped", transformers 5.17 to 5.24) or replaced by them
# ("frames", 4.57 and 5.25: two tokens fewer a video); docs/multimodal.md.
VIDEO_LAYOUTS = ("wrapped", "frames")


@functools.cache
def qwen3_vl_video_layout() -> str:
    """``"wrapped"`` or ``"frames"``: whether the installed transformers' ``Qwen3VLProcessor``
    keeps a video's outer ``<|vision_start|>...<|vision_end|>`` pair around its timestamped
    frames (5.17 to 5.24) or replaces the pair with them (4.57, 5.25).

    Asked of the class itself, once per process: its text replacement runs on a bare instance
    (no tokenizer, no video processor, so no torchvision) with a marker for the frames. Where
    the class no longer works that way, warns once and answers ``"frames"``, the newest
    layout known.
    """
    wrapper = "<|vision_start|><|video_pad|><|vision_end|>"
    try:
        from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

        probe = object.__new__(Qwen3VLProcessor)
        probe.image_token, probe.video_token = "<|image_pad|>", "<|video_pad|>"
        probe.vision_start_token, probe.vision_end_token = "<|vision_start|>", "<|vision_end|>"
        (text,), _ = probe.get_text_with_replacements(["A" + wrapper + "B"], [], ["@"])
    except Exception as e:  # noqa: BLE001 (any failure means: this transformers works otherwise)
        text = f"{type(e).__name__}: {e}"
    layouts = {"A<|vision_start|>@<|vision_end|>B": "wrapped", "A@B": "frames"}
    if text not in layouts:
        import transformers

        warnings.warn(
            f"cannot tell how transformers {transformers.__version__} lays out a Qwen3-VL video (its processor "
            f"gave {text!r}); btok assumes the outer <|vision_start|>/<|vision_end|> pair is replaced by the "
            "frames, as transformers 5.25 does",
            stacklevel=2,
        )
    return layouts.get(text, "frames")


def check_video_layout(recorded: str | None, family: VisionFamily | None, where: str) -> None:
    """Warn when a model saved with Qwen3-VL video prompts laid out as ``recorded`` is loaded
    under a transformers that lays them out otherwise (its video embeddings then differ from
    the ones it was trained or evaluated with). Nothing for other families or unrecorded folders."""
    current = family.video_layout if family is not None else None
    if recorded is None or current is None or recorded == current:
        return
    import transformers

    warnings.warn(
        f"{where} was saved with Qwen3-VL video prompts laid out {recorded!r} (the outer vision pair "
        f"{'kept' if recorded == 'wrapped' else 'replaced'}); transformers {transformers.__version__} lays them out "
        f"{current!r}: btok follows the installed processor, so video embeddings differ from the saved model's; "
        "install a transformers version that lays them out as saved to reproduce them (5.17 to 5.24: 'wrapped', "
        "5.25 on: 'frames')",
        stacklevel=3,
    )


VISION_FAMILIES = {
    family.model_type: family
    for family in (
        VisionFamily("qwen2_vl", "Qwen2-VL"),
        VisionFamily("qwen2_5_vl", "Qwen2.5-VL"),
        VisionFamily("qwen3_vl", "Qwen3-VL", timestamped_video=True),
    )
}
VISION_MODEL_TYPES = tuple(VISION_FAMILIES)
# How messages list the supported vision-language backbones.
VISION_MODEL_NAMES = ", ".join(family.name for family in VISION_FAMILIES.values())


def vision_family(model_or_config) -> VisionFamily | None:
    """The :class:`VisionFamily` of a transformers model (or its config), None for other models."""
    config = getattr(model_or_config, "config", model_or_config)
    return VISION_FAMILIES.get(getattr(config, "model_type", None))


def is_vision_model(model_or_config) -> bool:
    """Whether a transformers model (or its config) is a supported vision-language model
    (:data:`VISION_MODEL_TYPES`: Qwen2-VL, Qwen2.5-VL, Qwen3-VL)."""
    return vision_family(model_or_config) is not None


def check_processor(model, processor) -> None:
    """Refuse a processor for a text-only backbone (the one check of ``processor=``).

    Raises:
        ValueError: ``processor`` is not None and ``model`` (a transformers model) is not a
            vision-language model.
    """
    if processor is not None and not is_vision_model(model):
        raise ValueError(f"processor= is for {VISION_MODEL_NAMES} backbones; {type(model).__name__} is text-only")


def patch_seconds(num_frames: int, fps: float, temporal_patch_size: int) -> tuple[float, ...]:
    """The time of each temporal patch of ``num_frames`` frames sampled at ``fps``.

    Frame ``i`` is at ``i / fps``; a patch's time is the mean of its first and last frame's,
    a last patch short of frames repeating the last frame (the frames the video processor pads
    it with). transformers' ``Qwen3VLProcessor`` computes its timestamps so, in this order.
    """
    last = num_frames - 1
    return tuple(
        (start / fps + min(start + temporal_patch_size - 1, last) / fps) / 2
        for start in range(0, num_frames, temporal_patch_size)
    )


@dataclass(frozen=True)
class VisionTokens:
    """The vision token ids of the model's config, and their strings in the tokenizer."""

    vision_start: int
    vision_end: int
    image: int
    video: int
    strings: tuple[str, str, str, str]

    @classmethod
    def from_model(cls, config, tokenizer) -> VisionTokens:
        ids = [getattr(config, name, None) for name in ("vision_start_token_id", "vision_end_token_id")]
        ids += [getattr(config, "image_token_id", None), getattr(config, "video_token_id", None)]
        if any(i is None for i in ids):
            raise ValueError(f"the model config lacks vision token ids (vision start/end, image, video): {ids}")
        strings = tuple(tokenizer.convert_ids_to_tokens(ids))
        if any(s is None for s in strings) or tokenizer.convert_tokens_to_ids(list(strings)) != ids:
            raise ValueError(
                f"the tokenizer does not hold the model's vision tokens (ids {ids} -> {strings}): pass the model's own "
                "tokenizer / processor"
            )
        return cls(*ids, strings=strings)


class _ConfigHost:
    """Stands in for the model in its own ``get_rope_index``: the config and the model
    class's methods, bound to this object (the rope index reads nothing else)."""

    def __init__(self, owner: type, config):
        self._owner, self.config = owner, config

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        attr = getattr(self._owner, name)
        if not inspect.isfunction(attr):
            raise AttributeError(f"{self._owner.__name__}.{name} is not a method the rope index can use here")
        return types.MethodType(attr, self)


class RopeIndex:
    """The backbone's own 3D rope index (``get_rope_index``), usable without the model.

    The collator must stay model-free (DataLoader workers pickle it) while positions must
    come from the model's own function; that function depends only on the config, so this
    keeps the model class and a copy of its config and runs the class's function on them.

    Args:
        model: the Qwen2-VL / Qwen2.5-VL / Qwen3-VL model (``...ForConditionalGeneration``,
            or its inner model) whose ``get_rope_index`` gives the positions.
    """

    def __init__(self, model: nn.Module):
        # The inner model (Qwen2VLModel) defines the rope index and the vision-position helper it calls.
        inner = next((m for m in model.modules() if hasattr(type(m), "get_vision_position_ids")), None)
        if inner is None or not callable(getattr(type(inner), "get_rope_index", None)):
            raise ValueError(f"{type(model).__name__} has no get_rope_index (not one of {VISION_MODEL_NAMES})")
        self.owner = type(inner)
        self.config = copy.deepcopy(inner.config)
        self.takes_seconds = "second_per_grid_ts" in inspect.signature(self.owner.get_rope_index).parameters

    def __call__(
        self,
        input_ids: torch.Tensor,
        mm_token_type_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        image_grid_thw: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
        second_per_grid_ts: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """int64 ``[3, B, S]`` positions of a padded batch (0 at padding).

        Args:
            input_ids, mm_token_type_ids (0 text, 1 image, 2 video), attention_mask:
                int64 ``[B, S]``.
            image_grid_thw, video_grid_thw: int64 ``[n, 3]`` in row-major token order.
            second_per_grid_ts: fp32 ``[n_videos]`` (Qwen2.5-VL; the others' rope index
                takes none).
        """
        kwargs = dict(
            input_ids=input_ids,
            mm_token_type_ids=mm_token_type_ids,
            image_grid_thw=image_grid_thw,
            video_grid_thw=video_grid_thw,
            attention_mask=attention_mask,
        )
        if self.takes_seconds:
            kwargs["second_per_grid_ts"] = second_per_grid_ts
        return self.owner.get_rope_index(_ConfigHost(self.owner, self.config), **kwargs)[0]


def processor_parts(processor) -> tuple[object | None, object | None, object | None]:
    """``(tokenizer, image_processor, video_processor)`` of a processor (a ``ProcessorMixin``
    such as ``Qwen2VLProcessor`` or ``Qwen3VLProcessor``), or ``(None, processor, None)`` for
    an image processor."""
    if processor is None:
        return None, None, None
    if hasattr(processor, "image_processor") or hasattr(processor, "tokenizer"):
        return (
            getattr(processor, "tokenizer", None),
            getattr(processor, "image_processor", None),
            getattr(processor, "video_processor", None),
        )
    if callable(processor) and hasattr(processor, "merge_size"):
        return None, processor, None
    raise TypeError(
        f"processor must be the model's processor (e.g. Qwen3VLProcessor) or its image processor, got "
        f"{type(processor).__name__}"
    )


def load_image(value, name: str):
    """``value`` as an image the processor takes: a path is opened (RGB), others pass as they are.

    Raises:
        ExampleError: naming ``name``, for a missing or unreadable file or an unknown type.
    """
    if isinstance(value, (str, os.PathLike)):
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(value) as image:
                return image.convert("RGB")
        except FileNotFoundError:
            raise ExampleError(f"{name}: image file {os.fspath(value)!r} does not exist") from None
        except (UnidentifiedImageError, OSError) as err:
            raise ExampleError(f"{name}: cannot read image file {os.fspath(value)!r} ({err})") from None
    if _is_pil(value) or isinstance(value, torch.Tensor) or type(value).__name__ == "ndarray":
        return value
    raise ExampleError(
        f"{name}: an image must be a PIL.Image, a path or an [H, W, C] array, got {describe_value(value)}"
    )


def _is_pil(value) -> bool:
    return any(cls.__module__.startswith("PIL.") and cls.__name__ == "Image" for cls in type(value).__mro__)


@dataclass
class _Item:
    """One input being encoded: its text and media, and where it came from."""

    text: str | None
    image: object | None
    video: object | None
    fps: float
    name: str
    placement: str = "own_line"
    trailing_newline: str = "ensure_single"


class MultimodalCollator(BTokCollator):
    """:class:`~btok_model.embedder.collate.BTokCollator` for Qwen2-VL / Qwen2.5-VL / Qwen3-VL:
    inputs may carry an image and/or a video (docs/multimodal.md). Picklable, no model
    inside.

    Args:
        tokenizer: the model's tokenizer, holding the BTok and vision tokens.
        btok_ids: the K BTok ids.
        vision_tokens: the model's vision token ids.
        rope_index: the model's rope index (its config also gives the :class:`VisionFamily`).
        image_processor: the model's image processor, or None (then an image raises).
        video_processor: the model's video processor, or None (then a video raises).
        no_video_reason: why there is no video processor (said when a video comes).
        **kwargs: as for :class:`~btok_model.embedder.collate.BTokCollator`.
    """

    def __init__(
        self,
        tokenizer,
        btok_ids: Sequence[int],
        *,
        vision_tokens: VisionTokens,
        rope_index: RopeIndex,
        image_processor=None,
        video_processor=None,
        no_video_reason: str | None = None,
        **kwargs,
    ):
        super().__init__(tokenizer, btok_ids, **kwargs)
        self.family = vision_family(rope_index.config)
        if self.family is None:
            raise ValueError(f"model_type {rope_index.config.model_type!r} is not one of {VISION_MODEL_TYPES}")
        self.vision_tokens = vision_tokens
        self.rope_index = rope_index
        self.image_processor = image_processor
        self.video_processor = video_processor
        self.no_video_reason = no_video_reason

    # -- examples and inputs ----------------------------------------------------------------
    def _merge_flat_media(self, i: int, ex: dict) -> dict:
        """``{"query": q, "query_image": path}`` -> ``{"query": {"text": q, "image": path}}``
        (:func:`~btok_model.datasets.schema.example_input`)."""
        flat = [k for k in ex if k in _FLAT_FIELDS]
        other = [k for k in ex if k in IMAGE_KEYS and k not in _FLAT_FIELDS]
        if other:
            raise ExampleError(
                f"example {i}, field {other[0]!r}: not a known field; give an image as {sorted(_FLAT_FIELDS)} or "
                "inside an input: {'text': ..., 'image': ..., 'video': ...}"
            )
        target_media = [k for k in ex if k.startswith("target_") and k not in EXAMPLE_KEYS]
        if target_media:
            raise ExampleError(f"example {i}, field {target_media[0]!r}: targets are text only (no image or video)")
        if not flat:
            return ex
        ex = dict(ex)
        for key in flat:
            field = _FLAT_FIELDS[key]
            try:
                value = example_input(ex, field)
            except ValueError as err:
                raise ExampleError(f"example {i}: {err}") from None
            if ex.pop(key) is not None:
                ex[field] = value
        return ex

    @property
    def unscored_ids(self) -> frozenset[int]:
        """The vision tokens: a target shows an image or video, never scores it."""
        t = self.vision_tokens
        return frozenset((t.vision_start, t.vision_end, t.image, t.video))

    def _prompts(self, values: list, where: list[tuple[int, str | None]]) -> tuple[list[str], list[Media | None]]:
        """The prompt of each input (its vision blocks on their own line before the text)
        and its processed image / video."""
        items = [self._item(value, input_name(i, field)) for value, (i, field) in zip(values, where)]
        image_media = self._process_images(items)
        video_media = self._process_videos(items)
        media = []
        for k in range(len(items)):
            image, video = image_media.get(k), video_media.get(k)
            media.append(
                None if image is None and video is None else Media(**{**vars(image or Media()), **_present(video)})
            )
        return [self._prompt(item) for item in items], media

    def _prompt_ids(self, prompts, media, where, special_tokens: bool = True) -> list[list[int]]:
        """Ids of the prompts, each vision placeholder expanded as the processor expands it (an
        image: one token per merged patch; a video: its family's :meth:`VisionFamily.expand_video`);
        a text holding a vision token of its own raises."""
        ids = self._text_ids(prompts, where, special_tokens)
        tokens = self.vision_tokens
        for seq, m, (i, field) in zip(ids, media, where):
            grids = ((tokens.image, m and m.image_grid_thw), (tokens.video, m and m.video_grid_thw))
            blocks = sum(grid is not None for _, grid in grids)
            expected = {tokens.vision_start: blocks, tokens.vision_end: blocks}
            expected.update({token: int(grid is not None) for token, grid in grids})
            if any(seq.count(token) != count for token, count in expected.items()):
                raise ExampleError(
                    f"{input_name(i, field)}: the text contains a vision token ({', '.join(tokens.strings)}); "
                    "give images and videos as 'image' / 'video'"
                )
            if m is not None and m.image_grid_thw is not None:
                at = seq.index(tokens.image)
                seq[at : at + 1] = [tokens.image] * (int(m.image_grid_thw.prod()) // self.image_processor.merge_size**2)
            if m is not None and m.video_grid_thw is not None:
                self.family.expand_video(
                    seq,
                    m.video_grid_thw[0],
                    m.video_seconds,
                    self.video_processor.merge_size,
                    tokens,
                    self._plain_batch,
                )
        return ids

    def _item(self, value, name: str) -> _Item:
        if not isinstance(value, dict):
            return _Item(self._input_text(value, name), None, None, DEFAULT_FPS, name)
        check_input_dict(value, name)
        image, video = value.get("image"), value.get("video")
        text = value.get("text")
        if image is None and video is None:
            return _Item(self._input_text(text, name), None, None, DEFAULT_FPS, name)
        if text is not None and text != "":
            text = self._input_text(text, name)
        fps = value.get("fps", DEFAULT_FPS)
        if video is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0):
            raise ExampleError(f"{name}: fps must be a number > 0, got {describe_value(fps)}")
        if image is not None:
            if self.image_processor is None:
                raise ExampleError(
                    f"{name}: this BTok model has no image processor; pass the model's processor to "
                    "BTokModel.from_backbone(..., processor=...)"
                )
            image = load_image(image, name)
        if video is not None:
            if self.video_processor is None:
                reason = f" ({self.no_video_reason})" if self.no_video_reason else ""
                raise ExampleError(f"{name}: this BTok model has no video processor{reason}")
            video = _check_video(video, name)
        layout = {k: value[k] for k in ("placement", "trailing_newline") if k in value}
        return _Item(text or None, image, video, float(fps), name, **layout)

    def _prompt(self, item: _Item) -> str:
        """The prompt of an input with its vision blocks placed (docs/multimodal.md, "The input,
        in full"); a text-only input as it is."""
        start, end, image, video = self.vision_tokens.strings
        blocks = (start + image + end if item.image is not None else "") + (
            start + video + end if item.video is not None else ""
        )
        if not blocks:
            return item.text
        text, final = item.text or "", ""
        if item.trailing_newline == "ensure_single":
            text, final = "\n".join(line.rstrip(" \t") for line in text.split("\n")).strip(), "\n"
        if item.placement == "inline_end":
            text = text.rstrip()
            return (text + " " + blocks if text else blocks) + final
        return blocks + ("\n" + text if text else "") + final

    def _process_images(self, items: list[_Item]) -> dict[int, Media]:
        """``{item index: Media with its pixel_values and image_grid_thw}``, one processor call."""
        which = [k for k, item in enumerate(items) if item.image is not None]
        if not which:
            return {}
        try:
            out = self.image_processor(images=[items[k].image for k in which], return_tensors="pt")
        except Exception as err:  # name the example: the processor's own message says only what failed
            raise ExampleError(f"{_names(items, which)}: the image processor failed: {err}") from err
        grids = out["image_grid_thw"].long()
        pixels = torch.split(out["pixel_values"], grids.prod(-1).tolist())
        return {k: Media(pixel_values=p, image_grid_thw=g[None]) for k, p, g in zip(which, pixels, grids)}

    def _process_videos(self, items: list[_Item]) -> dict[int, Media]:
        """``{item index: Media with its video patches, grid and seconds per temporal patch}``."""
        which = [k for k, item in enumerate(items) if item.video is not None]
        if not which:
            return {}
        # The frames come sampled: a video processor that samples by default (Qwen3-VL's) keeps them all.
        sampling = {"do_sample_frames": False} if getattr(self.video_processor, "do_sample_frames", None) else {}
        try:
            out = self.video_processor(videos=[items[k].video for k in which], return_tensors="pt", **sampling)
        except Exception as err:
            raise ExampleError(f"{_names(items, which)}: the video processor failed: {err}") from err
        grids = out["video_grid_thw"].long()
        pixels = torch.split(out["pixel_values_videos"], grids.prod(-1).tolist())
        temporal = self.video_processor.temporal_patch_size
        media = {}
        for k, p, g in zip(which, pixels, grids):
            seconds = patch_seconds(len(items[k].video), items[k].fps, temporal)
            if len(seconds) != int(g[0]):
                raise ExampleError(
                    f"{items[k].name}: the video processor made {int(g[0])} temporal patches of "
                    f"{len(items[k].video)} frames, expected {len(seconds)} (it must not drop or add frames)"
                )
            media[k] = Media(
                pixel_values_videos=p,
                video_grid_thw=g[None],
                second_per_grid_ts=torch.tensor([temporal / items[k].fps], dtype=torch.float32),
                video_seconds=seconds,
            )
        return media

    # -- packing --------------------------------------------------------------------------
    def pack_sequences(self, sequences, media=None, *, targets=None) -> dict:
        """As :meth:`BTokCollator.pack_sequences`, with ``position_ids`` int64 ``[3, 1, T]``
        and the keys of :data:`MEDIA_BATCH_KEYS` that the batch has (images in row order).

        Positions, per sequence: ``[input | BToks]`` gets the model's rope index of that part
        alone; a target gets ``S`` + the model's rope index of the target alone, ``S`` the
        token count of ``[input | BToks]`` (the authors' continuation positions; for a text
        input ``S`` is the last BTok's position + 1, after an image or video it is more). A
        part without vision tokens has ``0, 1, ...`` on all three axes.
        """
        inputs = self._inputs_of(sequences, media, "pack_sequences")
        batch = self._pack_ids(inputs, targets)
        n, k = len(inputs), self.num_btoks
        media = media or [None] * n
        targets = targets or [None] * n
        positions = batch["position_ids"][0].expand(3, -1).clone()  # [3, T]: 0, 1, ... per sequence
        # The parts with vision tokens: (first token in the row, length, offset, media)
        parts = []
        for s, (start, m, target) in enumerate(zip(batch["btok_layout"].host_cu_seqlens, media, targets)):
            head = len(inputs[s]) + k
            if m is not None:
                parts.append((start, head, 0, m))
            if target is not None and target.media is not None:
                parts.append((start + head, len(target.ids), head, target.media))
        if parts:
            # As right-padded rows: one rope-index call for all.
            starts, lens, offsets = (torch.tensor([p[j] for p in parts], dtype=torch.long) for j in range(3))
            valid = torch.arange(int(lens.max())) < lens[:, None]  # [n, S]
            index = (starts[:, None] + torch.arange(valid.shape[1]))[valid]  # their tokens in the row
            ids = torch.zeros(valid.shape, dtype=torch.long)
            ids[valid] = batch["input_ids"][0, index]
            rope = self._rope(ids, valid, [p[3] for p in parts]) + offsets[:, None]
            positions[:, index] = rope[:, valid]
        batch["position_ids"] = positions[:, None]
        row_media = [m for pair in zip(media, (t.media if t is not None else None for t in targets)) for m in pair]
        batch.update(concat_media(row_media, MEDIA_BATCH_KEYS))
        return batch

    def pad_sequences(self, sequences, media=None) -> dict:
        """As :meth:`BTokCollator.pad_sequences`, with ``position_ids`` int64 ``[3, B, S]``
        and the keys of :data:`MEDIA_BATCH_KEYS` that the batch has (images in row order)."""
        batch = super().pad_sequences(sequences)
        media = media or [None] * len(sequences)
        batch["position_ids"] = self.rope_positions(batch["input_ids"], batch["attention_mask"], media)
        batch.update(concat_media(media, MEDIA_BATCH_KEYS))
        return batch

    def rope_positions(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, media: list) -> torch.Tensor:
        """int64 ``[3, B, S]`` positions of a padded batch (any padding side), one entry of
        ``media`` per row (None: text only, positions ``0, 1, ...`` on all three axes)."""
        mask = attention_mask.bool()
        text = (mask.long().cumsum(-1) - 1).clamp_min(0)
        positions = text.expand(3, -1, -1).clone()
        rows = [s for s, m in enumerate(media) if m is not None]
        if rows:
            rows_t = torch.tensor(rows, dtype=torch.long)
            positions[:, rows_t] = self._rope(input_ids[rows_t], mask[rows_t], [media[s] for s in rows])
        return positions.masked_fill(~mask, 0)

    def _rope(self, input_ids: torch.Tensor, valid: torch.Tensor, media: list[Media]) -> torch.Tensor:
        """The model's rope index of padded rows that hold vision tokens: ``[3, n, S]``."""
        tokens = self.vision_tokens
        types_ = (input_ids == tokens.image).long() + 2 * (input_ids == tokens.video).long()
        types_ = types_ * valid
        grids = concat_media(media, ("image_grid_thw", "video_grid_thw", "second_per_grid_ts"))
        return self.rope_index(
            input_ids * valid,
            types_,
            valid.long(),
            image_grid_thw=grids.get("image_grid_thw"),
            video_grid_thw=grids.get("video_grid_thw"),
            second_per_grid_ts=grids.get("second_per_grid_ts"),
        )


def _present(media: Media | None) -> dict:
    return {} if media is None else {k: v for k, v in vars(media).items() if v is not None}


def _names(items: list[_Item], which: list[int]) -> str:
    names = [items[k].name for k in which]
    return names[0] if len(names) == 1 else f"one of {', '.join(names)}"


def _check_video(video, name: str):
    """A video as the video processor takes it: a list of >= 1 frames, or an ``[F, ...]`` array."""
    if isinstance(video, (list, tuple)):
        if not video:
            raise ExampleError(f"{name}: the video has no frames")
        return list(video)
    if (isinstance(video, torch.Tensor) or type(video).__name__ == "ndarray") and video.ndim == 4:
        if video.shape[0] < 1:
            raise ExampleError(f"{name}: the video has no frames")
        return video
    raise ExampleError(
        f"{name}: a video must be a list of frames or an [F, H, W, C] array, got {describe_value(video)}"
    )
