"""Comparing tensors: the relative L2 error, the assertions built on it, and per-dtype bounds."""

from __future__ import annotations

import torch

# The kernels' error rule (flash-attention's): the relative L2 error against the fp64 oracle
# is at most twice that of a plain PyTorch implementation in the same dtype plus FLOOR, and
# never above CEILING.
FLOOR = {torch.float64: 1e-13, torch.float32: 1e-6, torch.float16: 1e-4, torch.bfloat16: 1e-3}
CEILING = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}
DTYPE_IDS = {torch.float64: "fp64", torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Relative L2 error ``|actual - expected| / |expected|``, computed in fp64 (tensors of
    any shape and dtype; an all-zero ``expected`` divides by 1e-30)."""
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-30)).item()


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str) -> None:
    """``rel_err(actual, expected) <= tol`` and ``actual`` finite; ``what`` names it in the failure."""
    err = rel_err(actual, expected)
    assert err <= tol, f"{what}: relative L2 error {err:.3e} > {tol:.0e}"
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"


def assert_grads_close(actual: dict, expected: dict, tol: float) -> None:
    """The same parameter names, each gradient within ``tol`` (:func:`assert_close`)."""
    assert actual.keys() == expected.keys()
    for name in expected:
        assert_close(actual[name], expected[name], tol, f"grad of {name}")


def assert_tensors_close(actual: dict, expected: dict, tol: float, what: str = "") -> None:
    """The same non-empty set of names, each tensor finite and within ``tol`` relative L2 error."""
    assert actual.keys() == expected.keys(), f"{what}: {sorted(set(actual) ^ set(expected))}"
    assert expected, f"{what}: nothing to compare"
    for name in expected:
        assert torch.isfinite(actual[name]).all(), f"{what} {name}: non-finite"
        err = rel_err(actual[name], expected[name])
        assert err <= tol, f"{what} {name}: relative L2 error {err:.2e} > {tol:.0e}"
