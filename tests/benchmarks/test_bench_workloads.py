"""The benchmarks: workloads as documented, the FLOP formula over the kept pairs, the peers'
masks and the fp64 oracle against independent definitions, the measuring rules (FAILED
rows keep no timing, errors become rows), outputs that never overwrite, and the command
lines end to end on their tiny CPU configurations."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import mask_attn, measure, model_step, oracle, report, table, targets
from benchmarks.harness import run_stem, write_outputs
from benchmarks.peers import PEERS, Case, Padder, Peer, padded_dense_mask
from benchmarks.workloads import (
    Workload,
    attention_flops,
    design_workloads,
    packed_workload,
    sweep_workloads,
    tile_counts,
)
from btok_kernels import CondensationLayout, condensation_mask, sequence_mask
from btok_kernels.mask import condensation_mask_mod
from tests.helpers.numerics import rel_err
from tests.helpers.oracle import dense_attention, dense_layout_mask
from tests.helpers.step_benchmarks import tiny_step_argv

ROOT = Path(__file__).resolve().parents[2]


def test_design_workloads_match_the_readme():
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


@pytest.mark.parametrize(
    "lens", [((5, 2, 3), 2, (2, 1, 0)), ((1,), 0, (0,)), ((0, 7), 3, (2, 2))], ids=["three", "single", "empty_query"]
)
def test_kept_pairs_and_flops_by_brute_force(lens):
    query, btoks, target = lens
    wl = Workload("t", query, btoks, target, num_heads=3, num_kv_heads=1, head_dim=8)
    brute = int(dense_layout_mask(wl.layout()).sum())
    assert wl.kept_pairs() == brute
    assert wl.flops("fwd") == attention_flops(brute, num_heads=3, head_dim=8, mode="fwd") == 4 * 8 * 3 * brute
    assert wl.flops("fwd_bwd") == 3.5 * wl.flops("fwd")


def test_tile_counts_by_brute_force():
    wl = packed_workload("t", 2, (20, 40), (5, 9), seed=3, num_heads=1, num_kv_heads=1, head_dim=8, num_btoks=3)
    full = partial = 0
    for length, q in zip(wl.seqlens, wl.query_lens):
        mask = sequence_mask(length, q, q + wl.num_btoks)
        for r in range(0, length, 8):
            for c in range(0, length, 8):
                kept = int(mask[r : r + 8, c : c + 8].sum())
                full += kept == 64
                partial += 0 < kept < 64
    assert tile_counts(wl, 8, 8) == (full, partial)


def test_peer_masks_agree_with_the_package_mask():
    layout = CondensationLayout.from_lengths([3, 0, 5], [2, 1, 2], [2, 3, 0])
    packed = condensation_mask(layout)
    padded = padded_dense_mask(layout)[:, 0]
    t = layout.total_tokens
    qi, kj = torch.arange(t)[:, None], torch.arange(t)[None, :]
    assert torch.equal(condensation_mask_mod(layout)(0, 0, qi.expand(t, t), kj.expand(t, t)), packed)
    for s, (_start, length, b, tt) in enumerate(
        zip(layout.host_cu_seqlens, layout.seqlens, layout.host_btok_start, layout.host_target_start)
    ):
        assert torch.equal(padded[s, :length, :length], sequence_mask(length, b, tt))
        assert not padded[s, :length, length:].any()  # real rows never see padding
    assert int(packed.sum()) == layout.num_kept_pairs()
    assert padded.any(-1).all()  # no fully masked row, padding included
    x = torch.randn(t, 2, 4)
    assert torch.equal(Padder(layout).unpad(Padder(layout).pad(x)), x)


def test_oracle_matches_dense_autograd(monkeypatch):
    """The benchmarks' fp64 oracle (row blocks, hand-written backward) equals dense
    attention differentiated by autograd; blocks smaller than the sequences on purpose."""
    monkeypatch.setattr(oracle, "ROW_BLOCK", 7)
    layout = CondensationLayout.from_lengths([20, 0, 3], [4, 2, 0], [9, 5, 6])
    g = torch.Generator().manual_seed(0)
    q, k, v, do = (torch.randn(layout.total_tokens, h, 8, generator=g, dtype=torch.float64) for h in (6, 2, 2, 6))
    got = oracle.oracle(q, k, v, do, layout, 0.3)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    out = dense_attention(q, k, v, layout, 0.3)
    want = dict(zip(("dq", "dk", "dv"), torch.autograd.grad(out, (q, k, v), do)), out=out)
    for name in ("out", "dq", "dk", "dv"):
        assert rel_err(got[name], want[name]) < 1e-13, name


def test_run_stems_never_overwrite(tmp_path):
    first = run_stem(tmp_path, "x", "run")
    write_outputs([{"a": 1}], {"m": 1}, first)
    second = run_stem(tmp_path, "x", "run")
    assert first.name == "run" and second.name == "run-2"
    write_outputs([{"a": 2}], {"m": 2}, second)
    assert json.loads((tmp_path / "run.json").read_text())["rows"] == [{"a": 1}]
    assert (tmp_path / "run-2.csv").read_text().splitlines() == ["a", "2"]
    assert run_stem(tmp_path, "x").name.startswith("x_")  # default: the UTC time


# ----------------------------------------------------------------------------------------
# the command lines, end to end (tiny configurations)
# ----------------------------------------------------------------------------------------
def _cpu_env():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def test_mask_attn_tiny_runs_every_cpu_peer(tmp_path):
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "mask_attn.py"),
        "--tiny",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--cpu-clock",
        "thread",
        "--out-dir",
        str(tmp_path),
        "--stem",
        "t",
        "--no-plot",
    ]
    res = subprocess.run(cmd, cwd=ROOT, env=_cpu_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    data = json.loads((tmp_path / "t.json").read_text())
    meta = data["meta"]
    assert meta["torch"] == torch.__version__ and meta["date_utc"] and meta["tiny"]
    assert (meta["cpu_threads"], meta["cpu_clock"]) == (1, "thread")
    rows = {r["peer"]: r for r in data["rows"]}
    cpu_peers = {p.name for p in PEERS if p.available(torch.device("cpu")) is None}
    assert set(rows) == cpu_peers
    assert {"btok_sdpa", "btok_reference", "flex_triton", "sdpa_dense_padded", "eager_dense_padded"} <= cpu_peers
    for name, r in rows.items():
        assert r["status"] == "ok", r
        assert r["fwd_ms"] > 0 and r["fwd_peak_mib"] is None  # peak memory: not measured on CPU
        errors = [r["fwd_err_out"]] + (
            [] if name == "flex_triton" else [r[f"fwd_bwd_err_{x}"] for x in ("out", "dq", "dk", "dv")]
        )
        # against the fp64 oracle every fp32 row is within fp32 rounding (an exact match is fine: some
        # CPUs give one); test_failed_row_has_no_timing_and_stays_failed shows the check failing a wrong row
        assert all(0 <= e < 1e-4 for e in errors), (name, errors)
    assert "no backward on CPU" in rows["flex_triton"]["note"]
    assert (tmp_path / "t.csv").read_text().startswith("workload,")
    assert "btok_sdpa" in res.stdout


def test_thread_clock_needs_one_thread():
    threads = torch.get_num_threads()
    try:
        with pytest.raises(SystemExit, match="--cpu-clock thread times the calling thread only: it needs --threads 1"):
            mask_attn.parse_args(["--device", "cpu", "--threads", "2", "--cpu-clock", "thread"])
    finally:
        torch.set_num_threads(threads)


def test_mask_attn_runs_as_a_module():
    res = subprocess.run(
        [sys.executable, "-m", "benchmarks.mask_attn", "--help"],
        cwd=ROOT,
        env=_cpu_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0 and "--tiny" in res.stdout, res.stderr[-2000:]


def test_model_step_tiny_runs(tmp_path):
    out = model_step.main(tiny_step_argv(tmp_path, "--stem", "m"))
    rows = {r["row"]: r for r in out["rows"]}
    assert json.loads((tmp_path / "m.json").read_text())["rows"] == json.loads(json.dumps(out["rows"]))
    assert rows["sdpa"]["status"] == "ok" and rows["sdpa"]["step_ms"] > 0
    btok = rows["btok_triton"]
    assert btok["status"] == "ok" and btok["step_ms"] > 0, btok
    # packed + layout == the float64 padded dense-mask model, to fp32 rounding (exact on some CPUs;
    # the same check in benchmarks/steps.py fails btok_step's no_cut row, test_model_benchmarks)
    assert 0 <= btok["err_loss"] < 1e-5 and 0 <= btok["err_grad"] < 1e-4, btok
    assert rows["flex_attention"]["status"] == "skipped" and "no backward on CPU" in rows["flex_attention"]["note"]


def test_model_step_rows_are_extensible(tmp_path, monkeypatch):
    """A row is a name, an attn_implementation and a function that builds inputs and returns the step."""
    calls = []

    def prepare(model, batch, device):
        calls.append(batch.layout.num_seqs)
        base = model_step._padded_dense(model, batch, device)
        return model_step.Prepared(base.loss, None, ["the sdpa row under another name"])

    monkeypatch.setattr(model_step, "ROWS", [*model_step.ROWS, model_step.Row("sdpa_again", "sdpa", prepare)])
    out = model_step.main(tiny_step_argv(tmp_path, "--rows", "sdpa_again"))
    (row,) = out["rows"]
    assert row["row"] == "sdpa_again" and row["status"] == "ok" and row["err_loss"] < 1e-5, row
    assert calls == [3]


def test_backend_overhead_cpu_configuration_runs(tmp_path):
    """The transformers backend and the bare kernel give the same output on the same inputs."""
    from benchmarks import backend_overhead

    assert backend_overhead.main(["--device", "cpu", "--cpu-reps", "1", "--out-dir", str(tmp_path), "--stem", "b"]) == 0
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert [r["mode"] for r in rows] == ["fwd", "fwd_bwd"]
    for r in rows:
        assert r["max_err"] < 1e-6 and r["kernel_ms"] > 0 and r["backend_ms"] > 0


@pytest.mark.interpret
def test_btok_triton_row_passes_its_check(device):
    """The btok_triton row (the real kernels; the interpreter on CPU) passes the benchmark's
    own check against the fp64 oracle in bf16."""
    wl = packed_workload(
        "tiny", 2, (9, 30), (3, 9), seed=0, num_heads=4, num_kv_heads=2, head_dim=16, num_btoks=3, group="cpu"
    )
    args = mask_attn.parse_args(
        ["--device", device, "--dtype", "bf16", "--cpu-reps", "1", "--rep-ms", "5", "--warmup-ms", "1"]
    )
    case = Case(wl, torch.device(device), torch.bfloat16, seed=0)
    peer = next(p for p in PEERS if p.name == "btok_triton")
    row = measure.measure(case, peer, args)
    assert row["status"] == "ok", row
    for key in ("fwd_err_out", "fwd_bwd_err_out", "fwd_bwd_err_dq", "fwd_bwd_err_dk", "fwd_bwd_err_dv"):
        assert row[key] < 2e-2, (key, row[key])
    assert row["fwd_ms"] > 0 and row["fwd_bwd_ms"] > 0


# ----------------------------------------------------------------------------------------
# measuring rules: FAILED rows, errors while timing, speed-ups, report
# ----------------------------------------------------------------------------------------
def _tiny_case_and_args(extra=()):
    wl = packed_workload(
        "tiny", 2, (12, 24), (2, 6), seed=0, num_heads=2, num_kv_heads=1, head_dim=8, num_btoks=2, group="cpu"
    )
    args = mask_attn.parse_args(["--device", "cpu", "--dtype", "fp32", "--cpu-reps", "1", *extra])
    return Case(wl, torch.device("cpu"), torch.float32, seed=0), args


def _wrapped_peer(wrap):
    """btok's sdpa row, its output passed through ``wrap(out, grad)``."""
    base = next(p for p in PEERS if p.name == "btok_sdpa").prepare

    def prepare(case, grad, args):
        run = base(case, grad, args)
        call = run.fn
        run.fn = lambda: wrap(call(), grad)
        return run

    return prepare


def test_failed_row_has_no_timing_and_stays_failed():
    def wrong_fwd_then_raise(out, grad):
        if grad:
            raise RuntimeError("CUDA out of memory (simulated)")
        return out * 2  # fails the error check

    case, args = _tiny_case_and_args()
    row = measure.measure(case, Peer("p", True, _wrapped_peer(wrong_fwd_then_raise)), args)
    assert row["status"] == "FAILED", row  # the later mode's error does not downgrade it
    assert "fwd: FAILED" in row["note"] and "fwd_bwd: ERROR RuntimeError" in row["note"]
    assert row["fwd_err_out"] > args.tol
    assert not [k for k in row if measure.is_timing_key(k)], row

    def wrong_bwd(out, grad):  # the forward passes, the forward+backward fails: no timing at all
        return out * 2 if grad else out

    row = measure.measure(case, Peer("q", True, _wrapped_peer(wrong_bwd)), args)
    assert row["status"] == "FAILED" and row["fwd_err_out"] < args.tol, row
    assert not [k for k in row if measure.is_timing_key(k)], row


def test_rounds_alternate_the_rows_and_keep_the_median(monkeypatch):
    """--rounds: every row measured in each round, the order reversed every other round, each
    timing the median round; a row not "ok" in its first round is not measured again."""
    calls = []
    times = {"a": [3.0, 1.0, 2.0], "b": [5.0, 7.0, 6.0]}

    def fake(case, peer, args):
        calls.append(peer.name)
        if peer.name == "c":
            return {"peer": "c", "status": "FAILED"}
        ms = times[peer.name][sum(c == peer.name for c in calls) - 1]
        return {"peer": peer.name, "status": "ok", "fwd_ms": ms, "fwd_ms_min": ms / 2, "fwd_err_out": 1e-7}

    monkeypatch.setattr(measure, "measure", fake)
    case, args = _tiny_case_and_args(["--rounds", "3"])
    peers = [Peer(name, True, None) for name in "abc"]
    a, b, c = measure.measure_rounds(case, peers, args)
    assert calls == ["a", "b", "c", "b", "a", "a", "b"]
    assert (a["fwd_ms"], a["fwd_ms_min"], a["fwd_ms_rounds"]) == (2.0, 1.0, [3.0, 1.0, 2.0])
    assert b["fwd_ms"] == 6.0 and b["fwd_tflops"] == case.wl.flops("fwd") / 6e-3 / 1e12 and b["fwd_err_out"] == 1e-7
    assert c == {"peer": "c", "status": "FAILED"}
    with pytest.raises(SystemExit, match="--rounds must be >= 1"):
        mask_attn.parse_args(["--device", "cpu", "--rounds", "0"])


def test_error_while_timing_is_an_error_row(monkeypatch):
    """An exception in bench / peak_memory_mib (an OOM) makes the row "error", not a crash."""

    def oom(*a, **k):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(measure, "peak_memory_mib", oom)  # after bench, the last call of the timing
    case, args = _tiny_case_and_args()
    row = measure.measure(case, Peer("p", True, _wrapped_peer(lambda out, grad: out)), args)
    assert row["status"] == "error", row
    assert "fwd: ERROR RuntimeError: CUDA out of memory" in row["note"]
    assert row["fwd_err_out"] < args.tol and "fwd_ms" not in row


def test_add_speedups_skips_failed_rows():
    def row(peer, status, ms):
        return {"workload": "w", "peer": peer, "status": status, "fwd_ms": ms, "fwd_bwd_ms": ms}

    rows = [row("flex_triton", "ok", 2.0), row("a", "ok", 1.0), row("b", "FAILED", 1.0)]
    measure.add_speedups(rows)
    assert rows[1]["fwd_x_flex"] == 2.0 and "fwd_x_flex" not in rows[2]
    rows = [row("flex_triton", "FAILED", 2.0), row("a", "ok", 1.0)]
    measure.add_speedups(rows)
    assert not any("fwd_x_flex" in r or "fwd_bwd_x_flex" in r for r in rows)


def test_accepted_kwargs_follow_the_signature():
    from benchmarks.peers import accepted_kwargs

    def fa4(q, k, v, cu_seqlens_q=None, cu_seqlens_k=None, softmax_scale=None, causal=False):
        pass

    def fa2(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale=None, causal=False):
        pass

    kw = {
        "cu_seqlens_q": 1,
        "cu_seqlens_k": 1,
        "max_seqlen_q": 2,
        "max_seqlen_k": 2,
        "softmax_scale": 0.5,
        "causal": True,
    }
    got, dropped = accepted_kwargs(fa4, kw)
    assert got == {"cu_seqlens_q": 1, "cu_seqlens_k": 1, "softmax_scale": 0.5, "causal": True}
    assert dropped == ["max_seqlen_q", "max_seqlen_k"]
    assert accepted_kwargs(fa2, kw) == (kw, [])
    assert accepted_kwargs(lambda q, k, v, **rest: None, kw) == (kw, [])


def test_mask_attn_writes_rows_after_each_workload(tmp_path, monkeypatch):
    """A run cut short (an outer timeout) keeps the rows of the workloads it finished."""
    calls = []

    def fake_measure(case, peer, args):
        if case.wl.name != "tiny":
            raise KeyboardInterrupt  # killed during the second workload
        calls.append(peer.name)
        return {
            "workload": case.wl.name,
            "group": case.wl.group,
            "peer": peer.name,
            "exact": True,
            "status": "ok",
            "fwd_ms": 1.0,
        }

    monkeypatch.setattr(measure, "measure", fake_measure)  # what measure_rounds calls for each row
    with pytest.raises(KeyboardInterrupt):
        mask_attn.main(
            [
                "--device",
                "cpu",
                "--workloads",
                "tiny,cpu",
                "--peers",
                "btok_sdpa",
                "--out-dir",
                str(tmp_path),
                "--stem",
                "t",
                "--no-plot",
            ]
        )
    data = json.loads((tmp_path / "t.json").read_text())
    assert [r["peer"] for r in data["rows"]] == calls == ["btok_sdpa"]
    assert data["meta"]["workloads_done"] == 1


def _report_row(wl, peer, status, ms, exact=True):
    return {
        "workload": wl,
        "group": "design",
        "peer": peer,
        "exact": exact,
        "status": status,
        "note": "",
        "fwd_ms": ms,
        "fwd_tflops": 999.0,
        "fwd_bwd_ms": ms,
        "fwd_bwd_tflops": 999.0,
        "fwd_bwd_peak_mib": 1.0,
        "mask_build_ms": 0.01,
        "fwd_x_flex": 9.0,
        "fwd_bwd_x_flex": 9.0,
        "fwd_err_out": 0.5,
    }


def test_report_shows_no_timing_of_failed_or_error_rows():
    rows = [
        _report_row("image_2B", "btok_triton", "FAILED", 0.1),
        _report_row("image_2B", "flex_triton", "ok", 2.0),
        _report_row("long_8k", "btok_triton", "error", 0.1),
    ]
    md = table.attention_markdown(rows)
    failed = next(line for line in md.splitlines() if "btok_triton" in line and "image_2B" in line)
    assert "0.100" not in failed and "999" not in failed and "9.00" not in failed and "FAILED" in failed
    errored = next(line for line in md.splitlines() if "long_8k" in line)
    assert "0.100" not in errored and "999" not in errored
    text = table.format_table(table.attention_text_rows(rows), table.ATTENTION_COLUMNS)
    assert "0.100" not in text
    tg = targets.targets_markdown(rows, None)
    assert "yes" not in tg, tg  # nothing met by a FAILED / error row
    image = next(line for line in tg.splitlines() if line.startswith("| image_2B"))
    assert "| — ms |" in image and "flex_triton 2.000" in image


def test_cpu_target_compares_btok_sdpa_with_the_fastest_exact_peer():
    rows = [
        _report_row("cpu_pack", "btok_sdpa", "ok", 1.0),
        _report_row("cpu_pack", "btok_reference", "ok", 0.5),
        _report_row("cpu_pack", "sdpa_dense_padded", "ok", 2.0),
        _report_row("cpu_pack", "eager_dense_padded", "FAILED", 0.1),
        _report_row("cpu_pack", "sdpa_flash_causal", "ok", 0.2, exact=False),
    ]
    md = targets.cpu_targets_markdown(rows)
    fwd = next(line for line in md.splitlines() if "| fwd |" in line)
    # btok's own rows, FAILED rows and no-cut rows are not the peer to beat
    assert "sdpa_dense_padded 2.000" in fwd and "| 0.50 | yes |" in fwd, md


def test_report_cli_on_a_cpu_run(tmp_path, capsys):
    path = tmp_path / "r.json"
    path.write_text(
        json.dumps(
            {
                "meta": {"device": "cpu", "gpu": None, "torch": "x"},
                "rows": [
                    _report_row("cpu_pack", "btok_sdpa", "ok", 1.0),
                    _report_row("cpu_pack", "sdpa_dense_padded", "ok", 2.0),
                ],
            }
        )
    )
    report.main([str(path)])
    out = capsys.readouterr().out
    assert "### CPU target" in out and "sdpa_dense_padded 2.000" in out
