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
