"""condensation_attention: argument errors, torch.compile, custom-op registration, memory."""

from __future__ import annotations

import pytest
import torch

from btok_kernels import CondensationLayout, condensation_attention
from tests.helpers.dispatch_modes import LargestTensor
from tests.helpers.numerics import rel_err


def _qkv(total, hq=4, hkv=2, d=16, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(total, h, d, generator=g, dtype=dtype).to(device) for h in (hq, hkv, hkv))


LAYOUT = CondensationLayout.from_lengths([5, 3], 2, [4, 1])  # 17 tokens


@pytest.mark.parametrize(
    "change,exc,match",
    [
        (
            lambda q, k, v: (q[0], k, v, LAYOUT, {}),
            ValueError,
            r"q must be 3-D \[total_tokens, heads, head_dim\], got shape \(4, 16\)",
        ),
        (lambda q, k, v: (q, k.half(), v, LAYOUT, {}), ValueError, "q, k and v must share one dtype"),
        (lambda q, k, v: (q, k[:, :, :8], v[:, :, :8], LAYOUT, {}), ValueError, r"k must have shape \[17, Hkv, 16\]"),
        (lambda q, k, v: (q, k, v[:, :1], LAYOUT, {}), ValueError, "k and v must have the same shape"),
        (
            lambda q, k, v: (q[:, :3], k, v, LAYOUT, {}),
            ValueError,
            r"query heads \(3\) must be a multiple of the number of KV heads \(2\)",
        ),
        (lambda q, k, v: (q[:16], k[:16], v[:16], LAYOUT, {}), ValueError, r"q has 16 tokens but the layout packs 17"),
        (lambda q, k, v: (q, k, v, [0, 17], {}), TypeError, "layout must be a CondensationLayout, got list"),
        (
            lambda q, k, v: (q, k, v, LAYOUT, dict(backend="flash")),
            ValueError,
            r"backend must be one of \('auto', 'triton', 'cuda', 'sdpa', 'reference'\), got 'flash'",
        ),
        # fp32: refused by the CUDA kernels where the extension is built, else the extension is missing
        (lambda q, k, v: (q, k, v, LAYOUT, dict(backend="cuda")), (NotImplementedError, ValueError), "backend='cuda'"),
        (
            lambda q, k, v: (q, k, v, LAYOUT, dict(softmax_scale=-1.0)),
            ValueError,
            "softmax_scale must be a positive finite number, got -1.0",
        ),
        (
            lambda q, k, v: (q.double(), k.double(), v.double(), LAYOUT, dict(backend="triton")),
            ValueError,
            "backend='triton' supports dtypes",
        ),
        (
            lambda q, k, v: (q[..., :12], k[..., :12], v[..., :12], LAYOUT, dict(backend="triton")),
            ValueError,
            "multiples of 8 up to 256, got 12",
        ),
        (
            lambda q, k, v: (q.int(), k.int(), v.int(), LAYOUT, dict(backend="reference")),
            ValueError,
            "must be floating point, got torch.int32",
        ),
        (
            lambda q, k, v: (q, k, v, LAYOUT.to("meta"), {}),
            ValueError,
            r"layout is on meta but q is on \S+; move it once with layout.to\(q.device\)",
        ),
    ],
    ids=[
        "q_2d",
        "dtype_mismatch",
        "head_dim_mismatch",
        "kv_shape",
        "gqa_ratio",
        "token_count",
        "layout_type",
        "bad_backend",
        "cuda_backend",
        "bad_scale",
        "triton_fp64",
        "triton_head_dim",
        "int_inputs",
        "layout_device",
    ],
)
def test_argument_errors(change, exc, match, device):
    q, k, v = _qkv(17, device=device)
    q, k, v, layout, kwargs = change(q, k, v)
    if layout is LAYOUT:
        layout = LAYOUT.to(device)
    with pytest.raises(exc, match=match):
        condensation_attention(q, k, v, layout, **kwargs)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(fused_dq=1), "fused_dq must be a bool or None, got 1"),
        (dict(autotune="yes"), "autotune must be a bool or None, got 'yes'"),
        (dict(gqa_split=0), "gqa_split must be a positive int or None, got 0"),
        (dict(gqa_split=3), r"gqa_split=3 must divide the GQA group size Hq // Hkv = 2"),
        (dict(tiles={"bwd": {}}), "tiles: unknown kernel 'bwd'"),
        (dict(tiles={"fwd": {"BLOCK_K": 16}}), "tiles\\['fwd'\\]: unknown field 'BLOCK_K'"),
        (dict(tiles={"dq": {"BLOCK_M": 48}}), "must be a power of two >= 16, got 48"),
        (dict(tiles={"dq": {"num_warps": 0}}), "must be a positive int, got 0"),
    ],
    ids=[
        "fused_dq_int",
        "autotune_str",
        "split_0",
        "split_not_divisor",
        "tiles_kernel",
        "tiles_field",
        "tiles_block",
        "tiles_warps",
    ],
)
def test_option_errors(kwargs, match, device):
    q, k, v = _qkv(17, device=device)
    with pytest.raises(ValueError, match=match):
        condensation_attention(q, k, v, LAYOUT.to(device), backend="reference", **kwargs)


def test_option_environment_variables_are_checked(monkeypatch, device):
    q, k, v = _qkv(17, device=device)
    monkeypatch.setenv("BTOK_FUSED_DQ", "yes")
    with pytest.raises(ValueError, match="environment variable BTOK_FUSED_DQ must be 0 or 1, got 'yes'"):
        condensation_attention(q, k, v, LAYOUT.to(device))
    # an explicit argument is not overridden: the variable is not even read
    condensation_attention(q, k, v, LAYOUT.to(device), fused_dq=False)


class LauncherSpy:
    """Records the keyword options each launcher call receives, and calls through."""

    def __init__(self, monkeypatch):
        from btok_kernels.condensation import parallel

        self.calls = {}
        for name in ("condensation_fwd_triton", "condensation_bwd_triton"):
            real = getattr(parallel, name)
            monkeypatch.setattr(parallel, name, self._wrap(name, real))

    def _wrap(self, name, real):
        def spy(*args, **kwargs):
            self.calls.setdefault(name, []).append(kwargs)
            return real(*args, **kwargs)

        return spy


@pytest.mark.interpret
@pytest.mark.parametrize("source", ["env", "kwargs"])
def test_backward_runs_with_the_forward_options(source, monkeypatch, device):
    """Options come from the arguments, else from the environment at the forward call; the
    backward gets the same ones (and the layout's causality) even when the environment
    changed in between."""
    spy = LauncherSpy(monkeypatch)
    tiles = {"fwd": {"BLOCK_M": 32}, "dkdv": {"BLOCK_N": 32}, "dq": {"BLOCK_N": 32}}
    if source == "env":
        layout = CondensationLayout.from_lengths([9, 4], [2, 1], [6, 3], device=device)
    else:
        layout = CondensationLayout.bidirectional([0, 15, 26], device=device)
    q, k, v = (x.requires_grad_() for x in _qkv(layout.total_tokens, hq=4, hkv=1, device=device))
    if source == "env":
        monkeypatch.setenv("BTOK_FUSED_DQ", "1")
        monkeypatch.setenv("BTOK_AUTOTUNE", "0")
        out = condensation_attention(q, k, v, layout, backend="triton", gqa_split=2, tiles=tiles)
        monkeypatch.setenv("BTOK_FUSED_DQ", "0")
        monkeypatch.setenv("BTOK_AUTOTUNE", "1")
    else:  # explicit arguments win over the environment, in the forward and the backward
        monkeypatch.setenv("BTOK_FUSED_DQ", "0")
        monkeypatch.setenv("BTOK_AUTOTUNE", "1")
        out = condensation_attention(
            q, k, v, layout, backend="triton", fused_dq=True, autotune=False, gqa_split=2, tiles=tiles
        )
    dq, dk, dv = torch.autograd.grad(out.square().sum(), (q, k, v))
    (fwd,), (bwd,) = spy.calls["condensation_fwd_triton"], spy.calls["condensation_bwd_triton"]
    causal = layout.is_causal
    assert fwd == dict(causal=causal, autotune=False, tiles=tiles)
    assert bwd == dict(causal=causal, autotune=False, tiles=tiles, gqa_split=2, fused_dq=True)
    leaves = [x.detach().requires_grad_() for x in (q, k, v)]
    ref = condensation_attention(*leaves, layout, backend="reference")
    assert rel_err(out, ref) < 1e-5
    for got, want in zip((dq, dk, dv), torch.autograd.grad(ref.square().sum(), leaves)):
        assert rel_err(got, want) < 1e-5


def test_triton_on_cpu_without_interpreter_is_refused(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q, k, v = _qkv(17)
    with pytest.raises(ValueError, match="backend='triton' needs CUDA tensors"):
        condensation_attention(q, k, v, LAYOUT, backend="triton")


def test_custom_ops_pass_opcheck():
    """Schema, fake (meta) implementation and autograd registration of both custom ops."""
    q, k, v = _qkv(17)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    options = (False, False, 0, [0] * 12)  # fused_dq, autotune, gqa_split, tiles
    args = (q, k, v, LAYOUT.cu_seqlens, LAYOUT.btok_start, LAYOUT.target_start, True, 0.25, "reference", *options)
    torch.library.opcheck(torch.ops.btok.condensation_fwd.default, args)
    out, lse = torch.ops.btok.condensation_fwd(*args)
    bwd_args = (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out.detach(), lse) + args[3:]
    torch.library.opcheck(torch.ops.btok.condensation_bwd.default, bwd_args)


class TinyAttentionBlock(torch.nn.Module):
    def __init__(self, hidden=32, hq=4, hkv=2, d=8):
        super().__init__()
        self.hq, self.hkv, self.d = hq, hkv, d
        self.qkv = torch.nn.Linear(hidden, (hq + 2 * hkv) * d)
        self.o = torch.nn.Linear(hq * d, hidden)

    def forward(self, x, layout, backend):
        q, k, v = self.qkv(x).view(x.shape[0], -1, self.d).split([self.hq, self.hkv, self.hkv], dim=1)
        out = condensation_attention(q, k, v, layout, backend=backend)
        return self.o(out.reshape(x.shape[0], -1)).square().mean()


@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=pytest.mark.interpret)])
def test_compiles_without_graph_break(backend, device):
    """fullgraph=True fails on any graph break; the loss and the gradients must match eager."""
    torch.manual_seed(0)
    block = TinyAttentionBlock().to(device)
    layout = LAYOUT.to(device)
    x = torch.randn(layout.total_tokens, 32, device=device)
    loss = block(x, layout, backend)
    grads = torch.autograd.grad(loss, list(block.parameters()))
    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    loss_c = compiled(x, layout, backend)
    grads_c = torch.autograd.grad(loss_c, list(block.parameters()))
    assert rel_err(loss_c, loss) < 1e-6
    for g, gc in zip(grads, grads_c):
        assert rel_err(gc, g) < 1e-5


# 64-row tiles keep the interpreter's program count small on a long sequence
_BIG_TILES = {name: dict(BLOCK_M=64, BLOCK_N=64) for name in ("fwd", "dkdv", "dq")}


@pytest.mark.parametrize(
    "backend,length", [("reference", 4096), pytest.param("triton", 512, marks=pytest.mark.interpret)]
)
def test_memory_stays_linear(backend, length, device):
    """No tensor of the forward or backward may grow like L^2 on one long sequence: the
    largest one must stay below L * L / 4 elements (a dense mask or score matrix is L^2)."""
    hq, hkv, d = 2, 1, 16
    layout = CondensationLayout.from_lengths([length - 64 - 16], 16, [64], device=device)
    q, k, v = _qkv(length, hq, hkv, d, device=device)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    tiles = _BIG_TILES if backend == "triton" else None
    with LargestTensor() as probe:
        out = condensation_attention(q, k, v, layout, backend=backend, tiles=tiles)
        out.sum().backward()
    assert probe.max_numel < length * length / 4, f"a tensor of {probe.max_numel} elements was allocated"
    assert probe.max_numel >= length * hq * d  # the probe saw the outputs
