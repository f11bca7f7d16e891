"""The benchmark workloads match DESIGN.md, the FLOP formula counts the kept pairs, the shared
masks agree with each other, and the CPU configuration of mask_attn.py runs end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    Padder,
    dense_condensation_mask,
    flex_mask_mod,
    packed_dense_mask,
    padded_dense_mask,
)
from benchmarks.workloads import (  # noqa: E402
    attention_flops,
    design_workloads,
    kept_pairs,
    sweep_workloads,
)
from btok_kernels import CondensationLayout  # noqa: E402


def test_design_workloads_match_design_md():
    wl = {w.name: w for w in design_workloads()}
    assert wl["image_2B"].total_tokens == 12_784
    assert wl["video_2B"].total_tokens == 15_073
    assert wl["image_7B"].total_tokens == 12_784
    assert wl["long_8k"].total_tokens == 8_192
    assert (wl["image_2B"].num_heads, wl["image_2B"].num_kv_heads) == (12, 2)
    assert (wl["image_7B"].num_heads, wl["image_7B"].num_kv_heads) == (28, 4)
    assert wl["image_2B"].query_lens == wl["image_7B"].query_lens
    for w in wl.values():
        assert w.num_btoks == 16 and w.head_dim == 128
    img, vid = wl["image_2B"], wl["video_2B"]
    assert img.num_seqs == 16 and all(256 <= q <= 1280 for q in img.query_lens)
    assert all(32 <= t <= 256 for t in img.target_lens)
    assert vid.num_seqs == 4 and all(3072 <= q <= 4096 for q in vid.query_lens)
    assert all(128 <= t <= 512 for t in vid.target_lens)


def test_sweep_keeps_target_an_eighth_and_hidden_size():
    for w in sweep_workloads([1024, 16384], [64, 128]):
        (length,) = w.seqlens
        assert w.target_lens == (length // 8,) and w.num_btoks == 16
        assert w.num_heads * w.head_dim == 1536 and w.num_heads % w.num_kv_heads == 0


@pytest.mark.parametrize("lens", [((5, 2, 3), (1, 0, 4), (2, 1, 0)), ((1,), (0,), (0,)), ((0, 7), (3, 1), (2, 2))],
                         ids=["three", "single", "empty_query"])
def test_kept_pairs_and_flops_by_brute_force(lens):
    query, btoks, target = lens
    layout = CondensationLayout.from_lengths(list(query), list(btoks), list(target))
    brute = 0
    for length, b, t in zip(layout.seqlens, layout.host_btok_start, layout.host_target_start):
        for i in range(length):
            for j in range(length):
                brute += (j <= i) and not (i >= t and j < b)
    ours = kept_pairs(layout.seqlens, layout.host_btok_start, layout.host_target_start)
    assert ours == brute == layout.num_kept_pairs()
    assert attention_flops(brute, num_heads=3, head_dim=8, mode="fwd") == 4 * 8 * 3 * brute
    assert attention_flops(brute, 3, 8, "fwd_bwd") == 3.5 * attention_flops(brute, 3, 8, "fwd")


def test_dense_packed_padded_and_flex_masks_agree():
    layout = CondensationLayout.from_lengths([3, 0, 5], [2, 1, 2], [2, 3, 0])
    packed = packed_dense_mask(layout)[0, 0]
    padded = padded_dense_mask(layout)[:, 0]
    mask_mod = flex_mask_mod(layout)
    t = layout.total_tokens
    qi, kj = torch.arange(t)[:, None], torch.arange(t)[None, :]
    flex = mask_mod(0, 0, qi.expand(t, t), kj.expand(t, t))
    assert torch.equal(flex, packed)
    for s, (start, length, b, tt) in enumerate(zip(layout.host_cu_seqlens, layout.seqlens,
                                                   layout.host_btok_start, layout.host_target_start)):
        want = dense_condensation_mask(length, b, tt)
        assert torch.equal(packed[start : start + length, start : start + length], want)
        assert torch.equal(padded[s, :length, :length], want)
        assert not padded[s, :length, length:].any()  # real rows never see padding
    assert int(packed.sum()) == layout.num_kept_pairs()
    assert padded.any(-1).all()  # no fully masked row, padding included
    x = torch.randn(t, 2, 4)
    assert torch.equal(Padder(layout).unpad(Padder(layout).pad(x)), x)


def test_mask_attn_cpu_configuration_runs(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "mask_attn.py"), "--device", "cpu", "--workloads", "cpu",
           "--cpu-reps", "1", "--out-dir", str(tmp_path), "--stem", "t", "--no-plot"]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    data = json.loads((tmp_path / "t.json").read_text())
    assert data["meta"]["torch"] == torch.__version__ and data["meta"]["date_utc"]
    rows = {r["peer"]: r for r in data["rows"]}
    assert {"btok_reference", "flex_triton", "sdpa_dense_padded", "eager_dense_padded"} <= set(rows)
    for name in ("btok_reference", "sdpa_dense_padded", "eager_dense_padded"):
        r = rows[name]
        assert r["status"] == "ok", r
        assert r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0
        assert r["fwd_err_out"] < 1e-3 and r["fwd_bwd_err_dq"] < 1e-3
        assert r["fwd_bwd_peak_mib"] is None  # not measured on CPU
    assert rows["flex_triton"]["fwd_ms"] > 0 and "no backward on CPU" in rows["flex_triton"]["note"]
    assert (tmp_path / "t.csv").read_text().startswith("workload,")
    assert "btok_reference" in res.stdout


def test_model_step_cpu_configuration_runs(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "model_step.py"), "--device", "cpu", "--cpu-reps", "1",
           "--out-dir", str(tmp_path), "--stem", "m"]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    rows = {r["row"]: r for r in json.loads((tmp_path / "m.json").read_text())["rows"]}
    assert rows["sdpa"]["status"] == "ok" and rows["sdpa"]["step_ms"] > 0
    btok = rows["btok_triton"]
    assert btok["status"] == "ok" and btok["step_ms"] > 0, btok
    assert btok["err_loss"] < 1e-4 and btok["err_grad"] < 1e-3, btok  # packed + layout == padded dense mask


@pytest.mark.interpret
def test_mask_attn_btok_triton_row_passes_its_check(device):
    """The btok_triton row (the real kernels; the interpreter on CPU) passes mask_attn's own
    error check in bf16, so the benchmark's check cannot be what fails it on a GPU."""
    from benchmarks import mask_attn
    from benchmarks.workloads import packed_workload

    wl = packed_workload("tiny", 3, (20, 60), (3, 12), seed=0, num_heads=4, num_kv_heads=2, head_dim=32,
                         num_btoks=4, group="cpu")
    args = mask_attn.parse_args(["--device", device, "--dtype", "bf16", "--cpu-reps", "1", "--rep-ms", "5",
                                 "--warmup-ms", "1"])
    case = mask_attn.Case(wl, torch.device(device), torch.bfloat16, seed=0)
    peer = mask_attn.Peer("btok_triton", True, mask_attn._btok("triton"))
    row = mask_attn.measure(case, peer, args)
    assert row["status"] == "ok", row
    for key in ("fwd_err_out", "fwd_bwd_err_out", "fwd_bwd_err_dq", "fwd_bwd_err_dk"):
        assert row[key] < 2e-2, (key, row[key])
    assert row["fwd_ms"] > 0 and row["fwd_bwd_ms"] > 0


def test_backend_overhead_cpu_configuration_runs(tmp_path):
    """The transformers backend and the bare kernel give the same output on the same inputs,
    and the script writes its rows (the timings themselves are only meaningful on a GPU)."""
    from benchmarks import backend_overhead

    assert backend_overhead.main(["--device", "cpu", "--cpu-reps", "1", "--out-dir", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "backend_overhead_cpu.json").read_text())["rows"]
    assert [r["mode"] for r in rows] == ["fwd", "fwd_bwd"]
    for r in rows:
        assert r["max_err"] < 1e-6 and r["kernel_ms"] > 0 and r["backend_ms"] > 0


# ----------------------------------------------------------------------------------------
# mask_attn.measure: environment, FAILED rows, errors while timing; report.py on such rows
# ----------------------------------------------------------------------------------------
def _tiny_case_and_args(extra=()):
    from benchmarks import mask_attn
    from benchmarks.workloads import packed_workload

    wl = packed_workload("tiny", 2, (12, 24), (2, 6), seed=0, num_heads=2, num_kv_heads=1, head_dim=8,
                         num_btoks=2, group="cpu")
    args = mask_attn.parse_args(["--device", "cpu", "--dtype", "fp32", "--cpu-reps", "1", *extra])
    return mask_attn.Case(wl, torch.device("cpu"), torch.float32, seed=0), args


def _reference_peer(wrap, btok=None):
    """btok's reference path, its output passed through ``wrap(out, grad)``."""
    from benchmarks import mask_attn

    base = (btok or mask_attn._btok)("reference")

    def prepare(case, grad, args):
        run = base(case, grad, args)
        call = run.fn
        run.fn = lambda: wrap(call(), grad)
        return run

    return prepare


def test_btok_with_env_sets_the_variable_in_the_backward_too(monkeypatch):
    """BTOK_FUSED_DQ / BTOK_AUTOTUNE are read by the backward as well: the measuring code
    keeps the peer's variable set through the check, the timed backward and after."""
    from benchmarks import mask_attn

    var = "BTOK_FUSED_DQ"
    monkeypatch.delenv(var, raising=False)
    seen = {"fwd": [], "bwd": []}

    class Record(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            seen["fwd"].append(os.environ.get(var))
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            seen["bwd"].append(os.environ.get(var))
            return g

    real = mask_attn._btok  # _btok_with_env's base, "triton", becomes the reference path
    monkeypatch.setattr(mask_attn, "_btok", lambda backend: _reference_peer(lambda out, grad: Record.apply(out), real))
    case, args = _tiny_case_and_args()
    peer = mask_attn.Peer("btok_env", True, mask_attn._btok_with_env(var, "test"))
    row = mask_attn.measure(case, peer, args)
    assert row["status"] == "ok", row
    assert row["fwd_ms"] > 0 and row["fwd_bwd_ms"] > 0
    assert seen["fwd"] and set(seen["fwd"]) == {"1"}
    assert seen["bwd"] and set(seen["bwd"]) == {"1"}, seen["bwd"]  # the error check's and the timed backwards
    assert var not in os.environ  # restored


def test_failed_row_has_no_timing_and_stays_failed(monkeypatch):
    from benchmarks import mask_attn

    def wrong_fwd_then_raise(out, grad):
        if grad:
            raise RuntimeError("CUDA out of memory (simulated)")
        return out * 2  # fails the error check

    case, args = _tiny_case_and_args()
    row = mask_attn.measure(case, mask_attn.Peer("p", True, _reference_peer(wrong_fwd_then_raise)), args)
    assert row["status"] == "FAILED", row  # the later mode's error does not downgrade it
    assert "fwd: FAILED" in row["note"] and "fwd_bwd: ERROR RuntimeError" in row["note"]
    assert row["fwd_err_out"] > args.tol
    assert not [k for k in row if mask_attn.is_timing_key(k)], row

    # the forward passes, the forward+backward fails: the forward's timings go too
    def wrong_bwd(out, grad):
        return out * 2 if grad else out

    row = mask_attn.measure(case, mask_attn.Peer("q", True, _reference_peer(wrong_bwd)), args)
    assert row["status"] == "FAILED" and row["fwd_err_out"] < args.tol, row
    assert not [k for k in row if mask_attn.is_timing_key(k)], row


def test_add_speedups_skips_failed_rows():
    from benchmarks import mask_attn

    def row(peer, status, ms):
        return {"workload": "w", "peer": peer, "status": status, "fwd_ms": ms, "fwd_bwd_ms": ms}

    rows = [row(mask_attn.FLEX_PEER, "ok", 2.0), row("a", "ok", 1.0), row("b", "FAILED", 1.0)]
    mask_attn._add_speedups(rows)
    assert rows[1]["fwd_x_flex"] == 2.0 and "fwd_x_flex" not in rows[2]
    rows = [row(mask_attn.FLEX_PEER, "FAILED", 2.0), row("a", "ok", 1.0)]
    mask_attn._add_speedups(rows)
    assert not any("fwd_x_flex" in r or "fwd_bwd_x_flex" in r for r in rows)


def test_error_while_timing_is_an_error_row(monkeypatch):
    """An exception in bench / peak_memory_mib (an OOM) makes the row "error", not a crash."""
    from benchmarks import mask_attn

    def oom(*a, **k):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(mask_attn, "peak_memory_mib", oom)  # after bench, the last call of the timing
    case, args = _tiny_case_and_args()
    row = mask_attn.measure(case, mask_attn.Peer("p", True, _reference_peer(lambda out, grad: out)), args)
    assert row["status"] == "error", row
    assert "fwd: ERROR RuntimeError: CUDA out of memory" in row["note"]
    assert row["fwd_err_out"] < args.tol and "fwd_ms" not in row


def test_accepted_kwargs_follow_the_signature():
    from benchmarks.mask_attn import _accepted_kwargs

    def fa4(q, k, v, cu_seqlens_q=None, cu_seqlens_k=None, softmax_scale=None, causal=False):
        pass

    def fa2(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale=None, causal=False):
        pass

    kw = {"cu_seqlens_q": 1, "cu_seqlens_k": 1, "max_seqlen_q": 2, "max_seqlen_k": 2, "softmax_scale": 0.5,
          "causal": True}
    got, dropped = _accepted_kwargs(fa4, kw)
    assert got == {"cu_seqlens_q": 1, "cu_seqlens_k": 1, "softmax_scale": 0.5, "causal": True}
    assert dropped == ["max_seqlen_q", "max_seqlen_k"]
    assert _accepted_kwargs(fa2, kw) == (kw, [])
    assert _accepted_kwargs(lambda q, k, v, **rest: None, kw) == (kw, [])


def test_mask_attn_writes_rows_after_each_workload(tmp_path, monkeypatch):
    """A run cut short (an outer timeout) keeps the rows of the workloads it finished."""
    from benchmarks import mask_attn

    calls = []

    def measure(case, peer, args):
        if case.wl.name != "cpu_pack":
            raise KeyboardInterrupt  # killed during the second workload
        calls.append(peer.name)
        return {"workload": case.wl.name, "group": case.wl.group, "peer": peer.name, "exact": True,
                "status": "ok", "fwd_ms": 1.0}

    monkeypatch.setattr(mask_attn, "measure", measure)
    with pytest.raises(KeyboardInterrupt):
        mask_attn.main(["--device", "cpu", "--workloads", "cpu,sweep", "--sweep-lengths", "256", "--head-dims", "64",
                        "--peers", "btok_reference", "--out-dir", str(tmp_path), "--stem", "t", "--no-plot"])
    data = json.loads((tmp_path / "t.json").read_text())
    assert [r["peer"] for r in data["rows"]] == calls == ["btok_reference"]
    assert data["meta"]["workloads_done"] == 1


def test_report_shows_no_timing_of_failed_or_error_rows():
    from benchmarks import report

    def row(wl, peer, status, ms):
        return {"workload": wl, "group": "design", "peer": peer, "exact": True, "status": status, "note": "",
                "fwd_ms": ms, "fwd_tflops": 999.0, "fwd_bwd_ms": ms, "fwd_bwd_tflops": 999.0,
                "fwd_bwd_peak_mib": 1.0, "mask_build_ms": 0.01, "fwd_x_flex": 9.0, "fwd_bwd_x_flex": 9.0,
                "fwd_err_out": 0.5}

    rows = [row("image_2B", "btok_triton", "FAILED", 0.1), row("image_2B", "flex_triton", "ok", 2.0),
            row("long_8k", "btok_triton", "error", 0.1)]
    table = report.attention_table(rows)
    failed = next(line for line in table.splitlines() if "btok_triton" in line and "image_2B" in line)
    assert "0.100" not in failed and "999" not in failed and "9.00" not in failed and "FAILED" in failed
    errored = next(line for line in table.splitlines() if "long_8k" in line)
    assert "0.100" not in errored and "999" not in errored
    targets = report.targets(rows, None)
    assert "yes" not in targets, targets  # nothing met by a FAILED / error row
    image = next(line for line in targets.splitlines() if line.startswith("| image_2B"))
    assert "| — ms |" in image and "flex_triton 2.000" in image
