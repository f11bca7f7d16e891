"""The CUDA C++ backend: its loader, argument checks and build logic (everywhere), and its
kernels against a float64 oracle (on a CUDA device, with the extension built).

The kernel tests follow tests/ops/test_condensation.py's rule (flash-attention's): the
relative L2 error against the fp64 oracle is at most twice that of a plain PyTorch
implementation in the same dtype, plus a small floor, and never above a ceiling per dtype.
They need a CUDA device; that is their only skip condition: on a CUDA machine a missing
extension fails them, with the loader's reason.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import runpy
from pathlib import Path

import pytest
import torch

from btok_kernels import CondensationLayout, condensation_attention
from btok_kernels.condensation import cuda
from tests.helpers.cuda_kernels import CUDA_EDGE_LAYOUTS, check_cuda_kernels, cuda_random_layout
from tests.helpers.layouts import make_inputs
from tests.helpers.numerics import CEILING, DTYPE_IDS, rel_err
from tests.helpers.oracle import dense_attention

ROOT = Path(__file__).resolve().parents[2]
HAS_CUDA = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")


@pytest.fixture
def fresh_loader(monkeypatch):
    """The loader with its cache cleared before and after (it remembers its first answer)."""
    cuda._load.cache_clear()
    yield monkeypatch
    cuda._load.cache_clear()


# --------------------------------------------------------------------------------------
# loader, checks and build logic: every machine
# --------------------------------------------------------------------------------------
def test_missing_extension_says_why(fresh_loader):
    fresh_loader.setattr(importlib.util, "find_spec", lambda name, *a: None)
    fresh_loader.setattr(torch.version, "cuda", None)
    fresh_loader.setenv("BTOK_SKIP_CUDA_BUILD", "1")
    assert not cuda.is_available()
    with pytest.raises(cuda.CUDABackendUnavailable) as info:
        cuda.require_extension()
    msg = str(info.value)
    assert "backend='cuda'" in msg and "btok_kernels._cuda was not built" in msg
    assert "CPU-only build" in msg and "BTOK_SKIP_CUDA_BUILD=1 is set" in msg
    assert "pip install --no-deps --no-build-isolation -e ." in msg
    assert isinstance(info.value, NotImplementedError)  # what callers caught before the backend existed


def test_extension_that_does_not_load_says_why(fresh_loader, tmp_path):
    bogus = tmp_path / "_cuda.so"
    bogus.write_bytes(b"not a shared library")
    spec = importlib.machinery.ModuleSpec(cuda.EXTENSION, None, origin=str(bogus))
    fresh_loader.setattr(importlib.util, "find_spec", lambda name, *a: spec)
    with pytest.raises(cuda.CUDABackendUnavailable, match=r"_cuda\.so does not load"):
        cuda.require_extension()


def test_loading_again_registers_the_fakes_once(fresh_loader, tmp_path):
    """A second load (the loader's cache cleared) must not register the fake implementations
    again: torch refuses a second registration."""
    spec = importlib.machinery.ModuleSpec(cuda.EXTENSION, None, origin=str(tmp_path / "_cuda.so"))
    registered = []
    fresh_loader.setattr(importlib.util, "find_spec", lambda name, *a: spec)
    fresh_loader.setattr(torch.ops, "load_library", lambda path: None)
    fresh_loader.setattr(torch.library, "register_fake", lambda name: lambda fn: registered.append(name) or fn)
    fresh_loader.setattr(cuda, "_FAKES", [])
    assert cuda.is_available()
    cuda._load.cache_clear()
    assert cuda.is_available()
    assert registered == ["btok_cuda::fwd", "btok_cuda::bwd"]


def test_this_machine_reports_its_state():
    """Without a CUDA build of torch the extension cannot exist; with one and a GPU, the
    kernel tests below need it (and fail with this reason if it is missing)."""
    if torch.version.cuda is None:
        assert not cuda.is_available()
        with pytest.raises(cuda.CUDABackendUnavailable, match="CPU-only build"):
            cuda.require_extension()
    elif HAS_CUDA:
        cuda.require_extension()


def test_public_function_reports_the_missing_extension(fresh_loader):
    """condensation_attention(backend="cuda") on a machine without the extension (simulated
    here where it exists): the reason, before any kernel runs."""
    fresh_loader.setattr(importlib.util, "find_spec", lambda name, *a: None)
    layout = CondensationLayout.from_lengths([3], 1, [2])
    x = torch.zeros(layout.total_tokens, 1, 16, dtype=torch.float16)
    with pytest.raises(cuda.CUDABackendUnavailable, match=r"btok_kernels\._cuda was not built"):
        condensation_attention(x, x, x, layout, backend="cuda")


def test_auto_takes_cuda_only_without_triton(fresh_loader):
    from btok_kernels.condensation import ops

    cuda_device = torch.device("cuda", 0)  # resolving the backend touches no device
    fresh_loader.delenv("BTOK_BACKEND", raising=False)
    fresh_loader.setattr(ops, "_triton_importable", lambda: True)
    assert ops._resolve_backend("auto", cuda_device) == "triton"
    assert ops._resolve_backend("auto", torch.device("cpu")) == "sdpa"
    fresh_loader.setattr(ops, "_triton_importable", lambda: False)
    fresh_loader.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(cuda.CUDABackendUnavailable):  # "cuda" chosen, and it says why it cannot run
        ops._resolve_backend("auto", cuda_device)
    assert ops._resolve_backend("auto", torch.device("cpu")) == "sdpa"


def _rows(total, heads, d, dtype=torch.float16, device="cpu"):
    return torch.zeros(total, heads, d, dtype=dtype, device=device)


@pytest.mark.parametrize(
    "q,k,match",
    [
        (_rows(4, 2, 16, torch.float32), _rows(4, 1, 16, torch.float32), r"dtypes .*float16.*got torch.float32"),
        (_rows(4, 2, 12), _rows(4, 1, 12), "multiples of 8 up to 256, got 12"),
        (_rows(4, 2, 264), _rows(4, 1, 264), "multiples of 8 up to 256, got 264"),
        (_rows(4, 2, 16), _rows(4, 1, 16), "needs CUDA tensors, got q on cpu"),
    ],
    ids=["fp32", "head_dim_12", "head_dim_264", "cpu_tensors"],
)
def test_launchers_check_their_inputs(q, k, match):
    layout = CondensationLayout.from_lengths([2], 1, [1])
    args = (layout.cu_seqlens, layout.btok_start, layout.target_start, 0.25)
    with pytest.raises(ValueError, match=match):
        cuda.condensation_fwd_cuda(q, k, k, *args)
    with pytest.raises(ValueError, match=match):
        cuda.condensation_bwd_cuda(q, q, k, k, q, torch.zeros(2, 4), *args)


def test_fake_implementations_match_the_ops_outputs():
    """What torch.compile sees: the shapes and dtypes the C++ ops return (contiguous)."""
    q, k = _rows(7, 6, 32, torch.bfloat16), _rows(7, 2, 32, torch.bfloat16)
    out, lse = cuda._fwd_fake(q[:, ::2], k, k, None, None, None, 0.1)
    assert out.shape == (7, 3, 32) and out.dtype == torch.bfloat16 and out.is_contiguous()
    assert lse.shape == (3, 7) and lse.dtype == torch.float32
    dq, dk, dv = cuda._bwd_fake(q, q, k, k, q, lse, None, None, None, 0.1, False)
    assert dq.shape == q.shape and dk.shape == dv.shape == k.shape and dk.dtype == torch.bfloat16


@pytest.fixture
def setup_py():
    return runpy.run_path(str(ROOT / "setup.py"))  # defines the functions; setup() runs only as __main__


def test_setup_skips_with_one_line(setup_py, monkeypatch, capsys):
    monkeypatch.setenv("BTOK_SKIP_CUDA_BUILD", "1")
    assert setup_py["cuda_extension_kwargs"]() == {}
    monkeypatch.delenv("BTOK_SKIP_CUDA_BUILD")
    monkeypatch.setattr(torch.version, "cuda", None)
    assert setup_py["cuda_extension_kwargs"]() == {}
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("btok: not building the CUDA extension") for line in lines)
    assert "BTOK_SKIP_CUDA_BUILD=1" in lines[0] and "CPU-only build" in lines[1]


def test_setup_without_nvcc_skips(setup_py, monkeypatch, capsys):
    from torch.utils import cpp_extension

    monkeypatch.delenv("BTOK_SKIP_CUDA_BUILD", raising=False)
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", None)
    assert setup_py["cuda_extension_kwargs"]() == {}
    assert "nvcc was not found" in capsys.readouterr().err


@pytest.mark.parametrize("arch_list", [None, "9.0"], ids=["default_archs", "TORCH_CUDA_ARCH_LIST"])
def test_setup_builds_the_extension_with_cuda_torch_and_nvcc(setup_py, arch_list, monkeypatch):
    from torch.utils import cpp_extension

    monkeypatch.delenv("BTOK_SKIP_CUDA_BUILD", raising=False)
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", "/usr/local/cuda")
    if arch_list is None:
        monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    else:
        monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", arch_list)
    kwargs = setup_py["cuda_extension_kwargs"]()
    (ext,) = kwargs["ext_modules"]
    assert ext.name == "btok_kernels._cuda" and kwargs["cmdclass"]["build_ext"] is cpp_extension.BuildExtension
    assert all((ROOT / src).is_file() for src in ext.sources)
    # every translation unit of csrc/ but the host-only test helpers
    built = {p.relative_to(ROOT).as_posix() for p in (ROOT / "csrc").rglob("*") if p.suffix in (".cu", ".cpp")}
    assert set(ext.sources) == {s for s in built if not s.startswith("csrc/host/")}
    nvcc = ext.extra_compile_args["nvcc"]
    archs = [f for f in nvcc if "arch=" in f]
    if arch_list is None:
        assert archs == ["-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=[sm_90,compute_90]"]
    else:
        assert archs == []  # cpp_extension turns TORCH_CUDA_ARCH_LIST into flags itself


# --------------------------------------------------------------------------------------
# the kernels against the fp64 oracle: CUDA devices
# --------------------------------------------------------------------------------------
@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("name", list(CUDA_EDGE_LAYOUTS))
def test_cuda_edge_layouts(name, dtype):
    layout = CondensationLayout.from_lengths(*CUDA_EDGE_LAYOUTS[name], device="cuda")
    check_cuda_kernels(layout, hq=4, hkv=2, d=64, dtype=dtype)


@needs_gpu
@pytest.mark.parametrize("seed", range(8))
def test_cuda_random_layouts(seed):
    layout = CondensationLayout.from_lengths(*cuda_random_layout(seed), device="cuda")
    dtype = (torch.bfloat16, torch.float16)[seed % 2]
    d = (64, 128, 96, 256)[seed % 4]
    check_cuda_kernels(layout, hq=6, hkv=2, d=d, dtype=dtype, seed=seed)


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=DTYPE_IDS.get)
def test_cuda_realistic_image_batch(dtype):
    """An mmeb_image_2B-shaped pack: 16 sequences, query 256-1280, 16 BToks, target 32-256,
    Hq 12, Hkv 2, head dim 128."""
    g = torch.Generator().manual_seed(0)
    query = torch.randint(256, 1281, (16,), generator=g).tolist()
    target = torch.randint(32, 257, (16,), generator=g).tolist()
    layout = CondensationLayout.from_lengths(query, 16, target, device="cuda")
    check_cuda_kernels(layout, hq=12, hkv=2, d=128, dtype=dtype)


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=DTYPE_IDS.get)
@pytest.mark.parametrize("logits", [-30.0, 70.0, "mixed"], ids=["negative", "positive", "mixed"])
def test_cuda_extreme_logits(logits, dtype):
    """Logits far below 0 (exp underflows in fp16 without the max shift), far above 0 (exp
    overflows fp32 without it) or of both signs, on tiles that mix query, BTok and target
    rows: target rows visit masked cut blocks first, where their running max must stay -inf."""
    layout = CondensationLayout.from_lengths([137, 40, 20], [16, 3, 2], [129, 71, 30], device="cuda")
    check_cuda_kernels(layout, hq=2, hkv=1, d=64, dtype=dtype, logits=logits)


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=DTYPE_IDS.get)
def test_cuda_peaked_softmax(dtype):
    """Gaussian q scaled by 8: scores spread over about +-40 within each row."""
    layout = CondensationLayout.from_lengths([237, 4], [16, 2], [129, 11], device="cuda")
    check_cuda_kernels(layout, hq=2, hkv=1, d=128, dtype=dtype, q_scale=8.0)


@needs_gpu
@pytest.mark.parametrize("hq,hkv", [(6, 6), (6, 3), (6, 1)], ids=["gqa1", "gqa2", "gqa6"])
@pytest.mark.parametrize("d", [8, 64, 80, 96, 128, 192, 256], ids=lambda d: f"d{d}")
def test_cuda_gqa_and_head_dims(hq, hkv, d):
    layout = CondensationLayout.from_lengths([190, 2, 70], [16, 1, 4], [130, 7, 0], device="cuda")
    check_cuda_kernels(layout, hq=hq, hkv=hkv, d=d, dtype=torch.bfloat16, seed=d)


@needs_gpu
@pytest.mark.parametrize("d", [64, 128, 256], ids=lambda d: f"d{d}")
@pytest.mark.parametrize("lens", [[1, 63, 111, 1025], [300]], ids=["unaligned", "one"])
def test_cuda_bidirectional(lens, d):
    """causal=False: every row attends its whole sequence (b = 0, t = len)."""
    layout = CondensationLayout.causal([0, *torch.tensor(lens).cumsum(0).tolist()], device="cuda")
    check_cuda_kernels(layout, hq=4, hkv=2, d=d, dtype=torch.float16, causal=False)


@needs_gpu
def test_cuda_backward_is_deterministic():
    layout = CondensationLayout.from_lengths([700, 90], [16, 4], [200, 30], device="cuda")
    _, (q, k, v, do) = make_inputs(layout, 12, 2, 128, torch.bfloat16)
    args = (layout.cu_seqlens, layout.btok_start, layout.target_start, 0.1)
    out, lse = cuda.condensation_fwd_cuda(q, k, v, *args)
    first = cuda.condensation_bwd_cuda(do, q, k, v, out, lse, *args)
    for _ in range(3):
        again = cuda.condensation_bwd_cuda(do, q, k, v, out, lse, *args)
        assert all(torch.equal(a, b) for a, b in zip(first, again))


@needs_gpu
def test_cuda_strided_and_misaligned_inputs():
    """q, k, v as views of a fused qkv projection, and one starting off a 16-byte boundary."""
    layout = CondensationLayout.from_lengths([100, 7], [4, 2], [51, 0], device="cuda")
    total, hq, hkv, d = layout.total_tokens, 4, 2, 64
    qkv = torch.randn(total, hq + 2 * hkv, d, device="cuda", dtype=torch.float16)
    q, k, v = qkv[:, :hq], qkv[:, hq : hq + hkv], qkv[:, hq + hkv :]
    odd = torch.randn(total * hq * d + 1, device="cuda", dtype=torch.float16)[1:].view(total, hq, d)
    odd.copy_(q)
    args = (layout.cu_seqlens, layout.btok_start, layout.target_start, 0.125)
    want, lse_want = cuda.condensation_fwd_cuda(q.contiguous(), k.contiguous(), v.contiguous(), *args)
    for q_in in (q, odd):
        out, lse = cuda.condensation_fwd_cuda(q_in, k, v, *args)
        assert torch.equal(out, want) and torch.equal(lse, lse_want)


@needs_gpu
def test_cuda_empty_pack():
    layout = CondensationLayout.from_lengths([0, 0], 0, [0, 0], device="cuda")
    q, k = _rows(0, 2, 16, device="cuda"), _rows(0, 1, 16, device="cuda")
    args = (layout.cu_seqlens, layout.btok_start, layout.target_start, 0.25)
    out, lse = cuda.condensation_fwd_cuda(q, k, k, *args)
    dq, dk, dv = cuda.condensation_bwd_cuda(q, q, k, k, out, lse, *args)
    assert out.shape == (0, 2, 16) and lse.shape == (2, 0)
    assert dq.shape == (0, 2, 16) and dk.shape == (0, 1, 16) and dv.shape == (0, 1, 16)


@needs_gpu
@pytest.mark.parametrize(
    "change,match",
    [
        (lambda a: a.update(q=a["q"].float(), k=a["k"].float(), v=a["v"].float()), "must be float16 or bfloat16"),
        (lambda a: a.update(k=a["k"][:, :, :8].contiguous(), v=a["v"][:, :, :8].contiguous()), "k must have shape"),
        (lambda a: a.update(cu_seqlens=a["cu_seqlens"].long()), "cu_seqlens must have dtype int32"),
        (lambda a: a.update(btok_start=a["btok_start"].cpu()), "btok_start must be on q's device"),
        (lambda a: a.update(target_start=a["target_start"][:1]), "target_start must be a contiguous 1-D tensor of 2"),
        (lambda a: a.update(q=a["q"].transpose(1, 2)), "q must have a contiguous last dim"),
        (lambda a: a.update(softmax_scale=float("nan")), "softmax_scale must be a positive finite number"),
    ],
    ids=[
        "fp32",
        "head_dims_differ",
        "cu_seqlens_int64",
        "btok_start_on_cpu",
        "target_start_short",
        "strided_last_dim",
        "nan_scale",
    ],
)
def test_cuda_ops_check_arguments(change, match):
    """The C++ ops' TORCH_CHECKs, called directly (the launchers would fix or refuse first)."""
    cuda.require_extension()
    layout = CondensationLayout.from_lengths([5, 3], 2, [4, 1], device="cuda")
    args = dict(
        q=_rows(layout.total_tokens, 4, 16, device="cuda"),
        k=_rows(layout.total_tokens, 2, 16, device="cuda"),
        v=_rows(layout.total_tokens, 2, 16, device="cuda"),
        cu_seqlens=layout.cu_seqlens,
        btok_start=layout.btok_start,
        target_start=layout.target_start,
        softmax_scale=0.25,
    )
    change(args)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.btok_cuda.fwd(*args.values())


@needs_gpu
def test_cuda_ops_pass_opcheck():
    """The registered ops against their fake implementations, schemas and autograd
    registration (torch.library.opcheck), as torch.compile relies on them."""
    cuda.require_extension()
    layout = CondensationLayout.from_lengths([70, 9], [16, 2], [33, 0], device="cuda")
    _, (q, k, v, do) = make_inputs(layout, 4, 2, 64, torch.bfloat16)
    args = (layout.cu_seqlens, layout.btok_start, layout.target_start, 0.125, True)
    out, lse = torch.ops.btok_cuda.fwd(q, k, v, *args)
    torch.library.opcheck(torch.ops.btok_cuda.fwd.default, (q, k, v, *args))
    torch.library.opcheck(torch.ops.btok_cuda.bwd.default, (do, q, k, v, out, lse, *args))


@needs_gpu
def test_cuda_ops_under_torch_compile():
    """One graph, no break: the compiled call equals the eager one bitwise."""
    cuda.require_extension()
    layout = CondensationLayout.from_lengths([70, 9], [16, 2], [33, 0], device="cuda")
    _, (q, k, v, _) = make_inputs(layout, 4, 2, 64, torch.float16)

    def attend(q, k, v):
        return torch.ops.btok_cuda.fwd(q, k, v, layout.cu_seqlens, layout.btok_start, layout.target_start, 0.125)

    compiled = torch.compile(attend, fullgraph=True)
    for got, want in zip(compiled(q, k, v), attend(q, k, v)):
        assert torch.equal(got, want)


@needs_gpu
@pytest.mark.parametrize("bidirectional", [False, True], ids=["causal", "bidirectional"])
def test_cuda_public_function_autograd_lse_and_compile(bidirectional):
    """condensation_attention(backend="cuda"): forward, LSE and autograd against the oracle,
    and the same under torch.compile (fullgraph: the custom op is one node)."""
    if bidirectional:
        layout = CondensationLayout.bidirectional([0, 50, 177], device="cuda")
    else:
        layout = CondensationLayout.from_lengths([140, 3], [16, 2], [90, 0], device="cuda")
    exact, (q, k, v, do) = make_inputs(layout, 4, 2, 64, torch.bfloat16)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    out, lse = condensation_attention(q, k, v, layout, backend="cuda", return_lse=True, softmax_scale=0.1)
    grads = torch.autograd.grad(out, (q, k, v), do)
    eq, ek, ev = (x.detach().requires_grad_() for x in exact[:3])
    ref, lse_ref = dense_attention(eq, ek, ev, layout, 0.1, return_lse=True, causal=not bidirectional)
    refs = (ref, *torch.autograd.grad(ref, (eq, ek, ev), exact[3]))
    assert rel_err(lse, lse_ref) <= 1e-4 and not lse.requires_grad
    for got, want in zip((out, *grads), refs):
        assert rel_err(got, want) <= CEILING[torch.bfloat16]

    def attend(q, k, v):
        return condensation_attention(q, k, v, layout, backend="cuda", softmax_scale=0.1)

    o_c = torch.compile(attend, fullgraph=True)(q, k, v)
    g_c = torch.autograd.grad(o_c, (q, k, v), do)  # the compiled backward
    assert torch.equal(o_c, out) and all(torch.equal(a, b) for a, b in zip(g_c, grads))
