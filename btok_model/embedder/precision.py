"""The one place that decides the compute dtype: bfloat16 where the device computes it natively.

bfloat16 halves memory and runs at full speed on CUDA GPUs with bf16 support and on CPUs
with AVX512-BF16 or AMX-BF16. On any other CPU torch emulates it: issue 15 reports the
WordNet recipe at 201 s per step in bfloat16 against 10-16 s in float32 on a 2-core AMD EPYC
without AVX-512. So :func:`choose_dtype` picks bfloat16 only where it is native, and says
why when it picks float32. An explicit dtype always wins over it (:func:`resolve_dtype`).

Who uses it: ``BTokModel.from_backbone`` / ``PooledEmbedder.from_backbone`` when loading a
backbone by name without ``dtype`` (:func:`load_dtype`), ``python -m btok_model.train`` (weights
and bf16 mixed precision: :func:`training_precision`), ``python -m btok_model.evaluate`` and
``examples/wordnet_demo.py``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

__all__ = [
    "DtypeChoice",
    "TrainingPrecision",
    "choose_dtype",
    "default_device",
    "load_dtype",
    "native_cpu_bf16",
    "parse_dtype",
    "resolve_dtype",
    "training_precision",
]

logger = logging.getLogger("btok_model")

# oneDNN ISA limits below AVX512_CORE_BF16: with one of these, oneDNN never issues a bf16 dot product.
_ONEDNN_ISAS_WITHOUT_BF16 = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")
# ATen kernel levels without AVX-512 (what ATEN_CPU_CAPABILITY may force on x86).
_ATEN_LEVELS_WITHOUT_BF16 = ("default", "avx2")
_X86_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
SLOW_BF16 = (
    "bfloat16 would be emulated: a WordNet training step took 12-20x longer than in float32 on a 2-core AMD EPYC "
    "without AVX-512 (issue 15)"
)


@dataclass(frozen=True)
class DtypeChoice:
    """A dtype and the reason for it, in a few words (printed by the command-line tools)."""

    dtype: torch.dtype
    reason: str

    @property
    def line(self) -> str:
        """One line for a log: ``"float32: <reason>"``."""
        return f"{str(self.dtype).removeprefix('torch.')}: {self.reason}"


def native_cpu_bf16(cpuinfo: str = "/proc/cpuinfo", environ=None) -> tuple[bool, str]:
    """Whether this CPU computes bfloat16 matmuls natively, and why (a few words).

    Reads the CPU flags from ``cpuinfo`` (Linux): x86 ``avx512_bf16`` or ``amx_bf16``, arm64
    ``bf16``. ``ONEDNN_MAX_CPU_ISA`` (or its old name ``DNNL_MAX_CPU_ISA``) below
    ``AVX512_CORE_BF16`` and ``ATEN_CPU_CAPABILITY=default|avx2`` stop torch from using those
    instructions, so they count as "not native". Where the flags cannot be read (not Linux),
    the answer is False. Tests monkeypatch this function.

    Args:
        cpuinfo: the file listing the CPU flags.
        environ: the environment (default ``os.environ``).
    """
    environ = os.environ if environ is None else environ
    for name in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        isa = environ.get(name, "").strip().upper()
        if isa in _ONEDNN_ISAS_WITHOUT_BF16:
            return False, f"{name}={isa} keeps oneDNN off the bfloat16 instructions"
    level = environ.get("ATEN_CPU_CAPABILITY", "").strip().lower()
    if level in _ATEN_LEVELS_WITHOUT_BF16:
        return False, f"ATEN_CPU_CAPABILITY={level} keeps torch off AVX-512"
    try:
        with open(cpuinfo) as f:
            text = f.read()
    except OSError:
        return False, f"cannot read the CPU flags ({cpuinfo})"
    words = set(text.split())
    found = [flag for flag in _X86_BF16_FLAGS if flag in words]
    if found:
        return True, f"this CPU has {'/'.join(found)}"
    if "Features" in text and "bf16" in words:  # arm64 lists its extensions under "Features"
        return True, "this CPU has bf16 (arm64)"
    return False, f"this CPU has no native bfloat16 (no {' or '.join(_X86_BF16_FLAGS)} in {cpuinfo})"


def default_device() -> torch.device:
    """Where btok computes by default: CUDA when available (the Trainer, ``evaluate``), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def choose_dtype(device: torch.device | str | None = None) -> DtypeChoice:
    """bfloat16 where ``device`` computes it natively, else float32, with the reason.

    Args:
        device: the compute device (default :func:`default_device`).
    """
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return DtypeChoice(torch.bfloat16, "the GPU computes bfloat16 natively")
        return DtypeChoice(torch.float32, "this GPU has no native bfloat16")
    if device.type == "cpu":
        native, why = native_cpu_bf16()
        if native:
            return DtypeChoice(torch.bfloat16, f"{why}, native bfloat16")
        return DtypeChoice(torch.float32, f"{why}; {SLOW_BF16}")
    return DtypeChoice(torch.float32, f"no bfloat16 check for device type {device.type!r}")


def parse_dtype(value: torch.dtype | str, what: str = "dtype") -> torch.dtype | str:
    """A ``torch.dtype`` from a dtype or its name (``"bfloat16"``, ``"torch.float32"``); ``"auto"``
    (transformers: the checkpoint's own dtype) passes through.

    Raises:
        ValueError: naming ``what``, for a name that is not a floating dtype.
    """
    if isinstance(value, torch.dtype) or value == "auto":
        return value
    dtype = getattr(torch, str(value).removeprefix("torch."), None) if isinstance(value, str) else None
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(
            f"{what} must be a floating torch dtype name (float32, bfloat16, float16) or 'auto', got {value!r}"
        )
    return dtype


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device | str | None = None) -> DtypeChoice:
    """The explicit ``dtype`` when given (it always wins), else :func:`choose_dtype` for ``device``."""
    if dtype is None:
        return choose_dtype(device)
    dtype = parse_dtype(dtype)
    return DtypeChoice(dtype, "given explicitly" if dtype != "auto" else "the checkpoint's own dtype")


def load_dtype(dtype: torch.dtype | str | None) -> torch.dtype | str:
    """The dtype a backbone loads in: ``dtype`` when given, else :func:`choose_dtype`'s (logged
    when it is float32 for lack of native bfloat16)."""
    choice = resolve_dtype(dtype)
    if dtype is None and choice.dtype == torch.float32:
        logger.info("loading the backbone in %s", choice.line)
    return choice.dtype


@dataclass(frozen=True)
class TrainingPrecision:
    """The precision of a training run (:func:`training_precision`).

    Attributes:
        dtype: the weights' dtype (or ``"auto"``: the checkpoint's).
        bf16: bf16 mixed precision (autocast).
        lines: what was decided and why, one line each, for the log.
    """

    dtype: torch.dtype | str
    bf16: bool
    lines: tuple[str, ...]


def training_precision(
    dtype: torch.dtype | str | None,
    *,
    full_finetuning: bool,
    bf16: bool,
    bf16_from: str = "flag",
    what: str = "dtype",
    device: torch.device | str | None = None,
) -> TrainingPrecision:
    """The weights' dtype and bf16 mixed precision of a training run, decided together.

    The weights: ``dtype`` when given, else :func:`choose_dtype`'s, except float32 for full
    fine-tuning (AdamW steps below bfloat16's resolution would be lost). bf16 mixed precision on
    a device without native bfloat16: kept with a warning when the user asked for it
    (``bf16_from="flag"``), turned off when it came from a preset or a default.

    Args:
        dtype: the dtype asked for, or None.
        full_finetuning: every weight trains (no LoRA).
        bf16: bf16 mixed precision asked for.
        bf16_from: where ``bf16`` came from: ``"flag"``, ``"preset"`` or ``"default"``.
        what: how errors name ``dtype`` (``"--torch-dtype"``).
        device: the compute device (default :func:`default_device`).

    Raises:
        ValueError: ``dtype`` is not a floating dtype name (naming ``what``).
    """
    native = choose_dtype(device)
    lines = []
    if dtype is not None:
        dtype = parse_dtype(dtype, what)
        lines.append(f"weights: {str(dtype).removeprefix('torch.')} ({what})")
    elif native.dtype == torch.bfloat16 and full_finetuning:
        dtype = torch.float32
        lines.append(f"weights: float32 (full fine-tuning keeps float32 weights; {native.reason}: use --bf16)")
    else:
        dtype = native.dtype
        lines.append(f"weights: {native.line}")
    if bf16 and native.dtype != torch.bfloat16:
        if bf16_from == "flag":
            lines.append(f"warning: --bf16 on a device without native bfloat16 ({native.reason})")
        else:
            bf16 = False
            lines.append(f"bf16 mixed precision off (asked by the {bf16_from}): {native.reason}")
    return TrainingPrecision(dtype, bf16, tuple(lines))
