"""Kernel settings of a model: which :func:`btok_kernels.condensation_attention` path its attention takes.

A :class:`KernelSettings` is part of a BTok model's settings (``BTokModel.from_backbone(...,
kernel=KernelSettings(backend="triton", fused_dq=True))``, saved in ``btok_config.json``). The
model puts it on the transformers config of every one of its modules
(:func:`set_kernel_settings`): the attention function of ``attn_implementation="btok_triton"``
receives each attention module, reads its ``module.config`` (the text config in the decoder
layers, the vision config in a vision tower) and passes the settings to every kernel call
(:func:`kernel_settings`). A field left None takes the ``BTOK_*`` environment variable's value
at call time (``BTOK_BACKEND``, ``BTOK_FUSED_DQ``, ``BTOK_AUTOTUNE``, ``BTOK_PADDING_MODE``),
else the kernel's default: the environment only fills unset fields.

The settings ride on the config as a plain dict under :data:`CONFIG_KEY` (a config attribute
is what transformers hands the attention function), so a backbone's ``config.json`` carries them
too when they are not all unset.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

from torch import nn

from btok_kernels import BACKENDS

from .boundaries import PADDING_MODES

__all__ = ["CONFIG_KEY", "KernelSettings", "kernel_settings", "set_kernel_settings"]

CONFIG_KEY = "btok_kernel"


@dataclass(frozen=True)
class KernelSettings:
    """How ``attn_implementation="btok_triton"`` runs the condensation kernel for one model.

    Attributes:
        backend: the ``backend=`` of :func:`~btok_kernels.condensation_attention` (``"auto"``,
            ``"triton"``, ``"cuda"``, ``"sdpa"``, ``"reference"``); None: ``"auto"``, which the
            environment variable ``BTOK_BACKEND`` may override.
        fused_dq: the Triton backward computes dQ inside the dK/dV kernel (fp32 atomics); None:
            ``BTOK_FUSED_DQ``.
        autotune: the Triton kernels time candidate tiles per shape bucket; None: ``BTOK_AUTOTUNE``.
        padding_mode: how a padded batch runs (``"auto"``, ``"segments"``, ``"unpad"``; see
            :func:`btok_model.backend.boundaries.padding_layout`); None: ``BTOK_PADDING_MODE``.
            A ``btok_padding_mode=`` forward keyword still wins for that call.
    """

    backend: str | None = None
    fused_dq: bool | None = None
    autotune: bool | None = None
    padding_mode: str | None = None

    def __post_init__(self):
        for name, allowed in (("backend", BACKENDS), ("padding_mode", PADDING_MODES)):
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise ValueError(f"kernel setting {name} must be None or one of {allowed}, got {value!r}")
        for name in ("fused_dq", "autotune"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise ValueError(f"kernel setting {name} must be None or a bool, got {value!r}")

    @classmethod
    def from_value(cls, value: KernelSettings | Mapping | None) -> KernelSettings:
        """``value`` as settings: itself, a dict of the fields (unknown keys refused), or None (all unset)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(f"kernel settings must be a KernelSettings, a dict or None, got {type(value).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown kernel settings {unknown}; known: {sorted(known)}")
        return cls(**value)

    def to_dict(self) -> dict:
        return asdict(self)


def set_kernel_settings(model: nn.Module, settings: KernelSettings) -> None:
    """Put ``settings`` on the transformers config of every module of ``model`` (the top config,
    the text config, a vision tower's config), where the attention function reads them; unset
    settings remove the entry."""
    configs = {id(c): c for m in model.modules() if (c := getattr(m, "config", None)) is not None}
    for config in configs.values():
        if settings == KernelSettings():
            if hasattr(config, CONFIG_KEY):
                delattr(config, CONFIG_KEY)
        else:
            setattr(config, CONFIG_KEY, settings.to_dict())


def kernel_settings(module: nn.Module) -> KernelSettings:
    """The settings an attention module's config carries (all unset when it carries none)."""
    return KernelSettings.from_value(getattr(getattr(module, "config", None), CONFIG_KEY, None))
