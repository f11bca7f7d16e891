"""The model-level benchmarks on their tiny CPU configurations: the BTok training step
(btok_step.py: four formulations, each checked against a wider-dtype two-pass reference,
a wrong mask caught), encode() throughput (encode.py: BTok vs last-token pooling, the
token-count prediction), the CPU peak-memory probe and the report's sections."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import btok_step, encode, model_step, report, steps
from btok_kernels import CondensationLayout
from tests.helpers.step_benchmarks import tiny_step_argv

ROOT = Path(__file__).resolve().parents[2]


def _plain_causal(model, batch, device):
    """The btok_triton row on a layout without the cut (btok_start 0, the same target rows):
    targets see their query, which the condensation mask forbids (and the model, which pools
    the K tokens where the layout starts the BToks, pools other tokens)."""
    layout = batch.layout
    t = list(layout.host_target_start)
    wrong = CondensationLayout.from_lengths([0] * len(t), t, [n - s for n, s in zip(layout.seqlens, t)], device=device)
    assert list(wrong.host_target_start) == t and not any(wrong.host_btok_start)
    collated = dataclasses.replace(batch.collated, btok_layout=wrong)

    def loss():
        out = model(collated)
        return {"loss": out.loss, "contrastive": out.contrastive_loss, "generative": out.generative_loss}

    return steps.Prepared(loss, notes=["targets attend their query"])


def _forward_only(prepare):
    """A row that cannot run its backward here: ``Skip`` with ``prepare``'s forward to check."""

    def skipped(model, batch, device):
        raise steps.Skip("no backward here", forward=prepare(model, batch, device).loss)

    return skipped


def test_btok_step_rows_agree_with_the_reference_and_a_wrong_mask_fails(tmp_path, monkeypatch, one_torch_thread):
    extra = [
        steps.Row("no_cut", "btok_triton", _plain_causal),
        steps.Row("fwd_ok", "sdpa", _forward_only(btok_step._single_pass(None))),
        steps.Row("fwd_no_cut", "btok_triton", _forward_only(_plain_causal)),
    ]
    monkeypatch.setattr(btok_step, "ROWS", [*btok_step.ROWS, *extra])
    rows = "btok_triton,two_pass_sdpa,sdpa_dense,no_cut,fwd_ok,fwd_no_cut"
    out = btok_step.main(tiny_step_argv(tmp_path, "--rows", rows, "--stem", "s"))
    rows = {r["row"]: r for r in out["rows"]}
    # (flex_attention's row compiles its forward on the CPU, 10-20 s: the dry run of run_gpu.sh covers it)
    assert list(rows) == ["btok_triton", "two_pass_sdpa", "sdpa_dense", "no_cut", "fwd_ok", "fwd_no_cut"]
    assert json.loads((tmp_path / "s.json").read_text())["rows"] == json.loads(json.dumps(out["rows"]))
    meta = out["meta"]
    wl = btok_step.all_workloads()["tiny"]
    tokens = wl.total_tokens + sum(wl.target_lens) + wl.num_seqs * wl.num_btoks  # + the positives
    assert meta["reference"].startswith("float64") and meta["tokens"] == rows["btok_triton"]["tokens"] == tokens
    for name in ("btok_triton", "two_pass_sdpa", "sdpa_dense"):
        r = rows[name]
        assert r["status"] == "ok" and r["step_ms"] > 0, r
        # fp32 rows against the float64 reference, within fp32 rounding (an exact match is fine: some
        # CPUs give one; that the comparison bites is shown by the no_cut rows below, same code path)
        errs = [r[f"err_{e}"] for e in btok_step.ERRORS]
        assert all(0 <= e < 1e-5 for e in errs) and 0 <= r["err_grad"] < 1e-5 and 0 <= r["err_grad_btok"] < 1e-5, (
            name,
            errs,
        )
        assert r["generative"] > 0 and r["contrastive"] > 0
    dense = rows["sdpa_dense"]
    assert dense["mask_build_ms"] > 0 and dense["step_ex_mask_ms"] == dense["step_ms"] - dense["mask_build_ms"]
    assert rows["btok_triton"]["x_two_pass_sdpa"] == rows["two_pass_sdpa"]["step_ms"] / rows["btok_triton"]["step_ms"]
    assert rows["btok_triton"]["x_sdpa_dense_ex_mask"] == dense["step_ex_mask_ms"] / rows["btok_triton"]["step_ms"]
    # a skipped row's forward is still checked against the reference (values only)
    ok, bad = rows["fwd_ok"], rows["fwd_no_cut"]
    assert ok["status"] == "skipped" and "forward only: its losses match" in ok["note"], ok
    assert 0 <= ok["err_contrastive"] < 1e-5 and "err_grad" not in ok and "step_ms" not in ok
    assert bad["status"] == "FAILED" and "forward only: FAILED" in bad["note"] and bad["err_generative"] > 1e-3
    wrong = rows["no_cut"]
    assert wrong["status"] == "FAILED" and "FAILED check" in wrong["note"], wrong
    # the embeddings do not see targets; the generative loss and the gradients do
    assert wrong["err_contrastive"] > 1e-3 and wrong["err_generative"] > 1e-3 and wrong["err_grad"] > 1e-3, wrong
    assert "step_ms" not in wrong and "x_two_pass_sdpa" not in wrong


def test_btok_batch_is_the_workload_plus_its_positives():
    from benchmarks.model_setup import CPU_TINY, build_btok_model
    from benchmarks.workloads import all_workloads

    wl = all_workloads()["tiny"]
    model, num_words = build_btok_model(CPU_TINY, 1, 0, wl.num_btoks)
    batch = btok_step.make_batch(model, wl, num_words, seed=0)
    layout, c = batch.layout, batch.collated
    n, k = wl.num_seqs, wl.num_btoks
    assert layout.seqlens == wl.seqlens + [t + k for t in wl.target_lens]
    assert list(layout.host_btok_start[:n]) == list(wl.query_lens)
    assert list(layout.host_target_start[:n]) == [q + k for q in wl.query_lens]
    assert c["positive_index"].tolist() == list(range(n)) and c.btok_positions().shape == (2 * n, k)
    ids = c["input_ids"][0]
    assert (ids[c.btok_positions()] == torch.tensor(model.btok_token_ids)).all()
    # every target token but the unscored prefix is scored
    assert c["num_target_tokens"] == sum(t - batch.unscored for t in wl.target_lens) == int((c["labels"] != -100).sum())
    other = build_btok_model(CPU_TINY, 1, 0, wl.num_btoks + 1)[0]
    with pytest.raises(ValueError, match="K=3 BToks, the workload tiny K=2"):
        btok_step.make_batch(other, wl, num_words, seed=0)


def test_predicted_tokens_by_hand():
    # padded: sorted 8, 5 | 3 -> 2 * (8 + K) + 1 * (3 + K)
    assert encode.predicted_tokens([5, 3, 8], 2, 2, "padded") == 2 * 10 + 5
    assert encode.predicted_tokens([5, 3, 8], 0, 2, "padded") == 2 * 8 + 3
    assert encode.predicted_tokens([5, 3, 8], 2, 2, "packed") == 16 + 6
    assert encode.predicted_tokens([5, 3, 8], 2, 8, "padded") == 3 * 10


def test_encode_benchmark_checks_and_compares_the_methods(tmp_path, one_torch_thread):
    out = encode.main(
        [
            "--device",
            "cpu",
            "--workloads",
            "short",
            "--texts",
            "7",
            "--batch-size",
            "3",
            "--reps",
            "1",
            "--layers",
            "1",
            "--check-texts",
            "4",
            "--out-dir",
            str(tmp_path),
            "--stem",
            "e",
        ]
    )
    rows = out["rows"]
    assert [(r["mode"], r["method"]) for r in rows] == [(m, x) for m in encode.MODES for x in encode.METHODS]
    assert json.loads((tmp_path / "e.json").read_text())["rows"] == json.loads(json.dumps(rows))
    lengths = encode.WORKLOADS["short"].draw(False, False, 0, 7)
    for r in rows:
        assert r["status"] == "ok" and r["ms"] > 0 and r["input_tokens"] == sum(lengths), r
        assert r["tokens_per_s"] == pytest.approx(sum(lengths) / (r["ms"] / 1e3))
        # fp32 against the float64 one-text-at-a-time reference: within fp32 rounding (exact on some
        # CPUs); the next test shows the same check failing a wrong reference
        assert 0 <= r["err"] < 1e-5, r
    for i in (0, 3):  # the btok row of each mode, then last_token, then pooled_embedder
        btok, last, pooled = rows[i : i + 3]
        assert btok["predicted_ratio"] == btok["processed_tokens"] / last["processed_tokens"] > 1
        assert btok["time_ratio"] == btok["ms"] / last["ms"] and btok["time_ratio_pooled"] == btok["ms"] / pooled["ms"]
        assert btok["code_overhead"] == pytest.approx(btok["time_ratio"] / btok["predicted_ratio"] - 1)
    assert rows[0]["predicted_ratio"] == (sum(lengths) + 4 * 7) / sum(lengths)


def test_encode_benchmark_fails_a_wrong_reference(tmp_path, one_torch_thread, monkeypatch):
    """The check that passes above bites: a reference off by a rotation of its rows fails every row."""
    real = encode.reference_embeddings
    monkeypatch.setattr(
        encode, "reference_embeddings", lambda *a, **k: {m: e.roll(1, dims=0) for m, e in real(*a, **k).items()}
    )
    out = encode.main(
        [
            "--device",
            "cpu",
            "--workloads",
            "short",
            "--texts",
            "4",
            "--batch-size",
            "2",
            "--reps",
            "1",
            "--layers",
            "1",
            "--check-texts",
            "4",
            "--modes",
            "packed",
            "--out-dir",
            str(tmp_path),
            "--stem",
            "e",
        ]
    )
    assert out["rows"] and all(r["status"] == "FAILED" and "ms" not in r for r in out["rows"]), out["rows"]
    assert all("FAILED check" in r["note"] and r["err"] > 1e-2 for r in out["rows"])


def test_direct_last_token_equals_the_library_baseline():
    """The decisive baseline pools exactly what PooledEmbedder pools (last text token),
    packed and padded, and differs from the BTok embedding."""
    from benchmarks.model_setup import CPU_TINY, build_btok_model, word_texts
    from btok_model.embedder import PooledConfig, PooledEmbedder

    model, num_words = build_btok_model(CPU_TINY, 1, 0, 3)
    texts = word_texts([5, 17, 1, 9, 12], num_words, seed=1)
    direct = encode.DirectLastToken(model)
    pooled = PooledEmbedder(model.backbone, model.tokenizer, PooledConfig(pooling="last"))
    for mode, attn in encode.MODES.items():
        encode.set_attention(model, attn)
        got = direct.encode(texts, 2, mode == "packed")
        assert got.dtype == torch.float32 and got.shape == (5, CPU_TINY["hidden_size"])
        torch.testing.assert_close(got, pooled.encode(texts, batch_size=2), rtol=1e-5, atol=1e-6)
        assert (got - model.encode(texts, batch_size=2, packed=mode == "packed")).norm() > 0.1


def test_cpu_peak_rss_sees_a_freed_allocation():
    """A 64 MiB tensor freed inside the call still counts; nothing earlier calls cached does
    (a subprocess: the probe changes malloc for the rest of its process)."""
    code = """
import torch
from benchmarks.harness import CpuPeakRss
probe = CpuPeakRss()
assert probe.start() is None
def fn():
    x = torch.ones(16 << 20)  # 64 MiB
    del x
    y = torch.ones(4 << 20)  # 16 MiB
    del y
print(" ".join(f"{probe.measure(fn):.1f}" for _ in range(3)), f"{probe.measure(lambda: None):.1f}")
"""
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    *peaks, idle = map(float, res.stdout.split())
    assert all(63 < p < 70 for p in peaks) and idle < 2, res.stdout


def test_report_has_the_model_sections(tmp_path, capsys):
    mask = tmp_path / "m.json"
    mask.write_text(json.dumps({"meta": {"device": "cuda", "gpu": "H100", "torch": "x"}, "rows": []}))
    step = tmp_path / "s.json"
    step_rows = [
        {
            "row": "btok_triton",
            "status": "ok",
            "step_ms": 10.0,
            "peak_gib": 5.0,
            "x_two_pass_sdpa": 2.0,
            "x_sdpa_dense": 1.5,
            "x_sdpa_dense_ex_mask": 1.4,
            "x_flex_attention": 1.3,
            "x_flex_attention_ex_mask": 1.1,
        },
        {"row": "two_pass_sdpa", "status": "ok", "step_ms": 20.0, "peak_gib": 6.0},
        {"row": "sdpa_dense", "status": "ok", "step_ms": 15.0, "peak_gib": 7.0, "mask_build_ms": 1.0},
        {"row": "flex_attention", "status": "FAILED", "step_ms": 13.0, "peak_gib": 4.0, "mask_build_ms": 2.0},
    ]
    step.write_text(
        json.dumps({"meta": {"device": "cuda", "gpu": "H100", "layers": 4, "workload": "image_2B"}, "rows": step_rows})
    )
    enc = tmp_path / "e.json"
    enc.write_text(
        json.dumps(
            {
                "meta": {"device": "cuda", "gpu": "H100", "num_btoks": 4},
                "rows": [
                    {
                        "workload": "long",
                        "mode": "packed",
                        "method": "btok",
                        "status": "ok",
                        "ms": 101.0,
                        "time_ratio": 1.005,
                        "predicted_ratio": 1.004,
                        "code_overhead": 0.001,
                        "within_1pct": True,
                        "texts_per_s": 10.0,
                        "tokens_per_s": 7000.0,
                    },
                    {"workload": "long", "mode": "packed", "method": "last_token", "status": "ok", "ms": 100.5},
                ],
            }
        )
    )
    report.main([str(mask), "--btok-step", str(step), "--encode", str(enc)])
    md = capsys.readouterr().out
    assert "### BTok training step (s.json)" in md and "### encode() throughput (e.json)" in md
    line = next(x for x in md.splitlines() if x.startswith("| model step (BTok) ×flex_attention"))
    assert "**no**" not in line and "yes" not in line, line  # a FAILED peer: nothing to compare with
    line = next(x for x in md.splitlines() if x.startswith("| model step (BTok) ×two_pass_sdpa"))
    assert "2.00" in line and "yes" in line, line
    line = next(x for x in md.splitlines() if x.startswith("| model step (BTok) peak memory"))
    assert "**no**" not in line and "5.00" in line, line  # lower than both timed peers; FAILED flex ignored
    line = next(x for x in md.splitlines() if x.startswith("| inference within 1%"))
    assert "long packed 1.0050" in line and "yes" in line, line


def test_a_run_cut_short_keeps_its_rows(tmp_path, monkeypatch, one_torch_thread):
    """The JSON is written before the first row and after each one (an outer timeout keeps them)."""
    real = steps.run_row
    done = []

    def run_row(row, *args, **kwargs):
        if done:
            raise KeyboardInterrupt  # killed during the second row
        done.append(row.name)
        return real(row, *args, **kwargs)

    monkeypatch.setattr(steps, "run_row", run_row)
    with pytest.raises(KeyboardInterrupt):
        btok_step.main(tiny_step_argv(tmp_path, "--stem", "k"))
    data = json.loads((tmp_path / "k.json").read_text())
    assert [r["row"] for r in data["rows"]] == done == ["btok_triton"] and data["rows"][0]["status"] == "ok"
    assert data["meta"]["reference"] and data["meta"]["wall_s"] > 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--texts", "0"], "--texts must be >= 1, got 0"),
        (["--reps", "0"], "--reps must be >= 1, got 0"),
        (["--modes", "packed,nope"], "--modes must name some of"),
    ],
)
def test_encode_refuses_bad_options(argv, message):
    with pytest.raises(SystemExit, match=message):
        encode.parse_args(["--device", "cpu", *argv])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--layers", "0"], "--layers must be >= 1, got 0"),
        (["--cpu-reps", "0"], "--cpu-reps must be >= 1, got 0"),
        (["--workload", "nope"], "unknown workload 'nope'"),
        (["--rows", "btok_triton,nope"], r"unknown rows \['nope'\]"),
    ],
)
@pytest.mark.parametrize("bench", [btok_step, model_step], ids=["btok_step", "model_step"])
def test_model_benchmarks_refuse_bad_options(bench, argv, message):
    with pytest.raises(SystemExit, match=message):
        bench.parse_args(["--device", "cpu", *argv])
