"""One peer on one case -> one row: check against the fp64 oracle first, then time.

Per mode (``fwd``, ``fwd_bwd``): the first call (which compiles, for compiled peers) is
the check -- relative L2 error of the output (and of dQ, dK, dV with the backward) against
:func:`benchmarks.oracle.oracle`; a row above ``args.tol`` is FAILED and keeps no timing
at all. Then median / p20 / p80 ms, TFLOP/s over the kept pairs and peak memory. On the CPU,
``--rounds`` repeats every row of a workload in alternating order and keeps the median round.
"""

from __future__ import annotations

import contextlib
import statistics
import time

import torch

from .harness import bench, peak_memory_mib, rel_l2
from .peers import FLEX_PEER, Case, Peer, Run, Skip

__all__ = ["MODES", "measure", "measure_rounds", "is_timing_key", "add_speedups"]

MODES = ("fwd", "fwd_bwd")
GRADS = ("dq", "dk", "dv")

# a worse status is never replaced by a milder one (a FAILED check stays FAILED when a later mode raises)
_STATUS_RANK = {"ok": 0, "skipped": 1, "error": 2, "FAILED": 3}


def _set_status(row: dict, status: str) -> None:
    if _STATUS_RANK[status] >= _STATUS_RANK.get(row["status"], 0):
        row["status"] = status


# timing-derived keys of the model-level rows (btok_step.py, encode.py) without a tell-tale suffix
_MODEL_TIMING_KEYS = (
    "time_ratio",
    "time_ratio_min",
    "time_ratio_pooled",
    "throughput_vs_last",
    "code_overhead",
    "within_1pct",
)


def is_timing_key(key: str) -> bool:
    """A timing-derived column: ms and its percentiles, mask build ms, TFLOP/s, peak memory,
    rates, and every speed ratio (xFlex, ``x_<row>``, encode's time ratio)."""
    return (
        "_ms" in key
        or key.startswith(("ms", "x_"))
        or key in _MODEL_TIMING_KEYS
        or key.endswith(("_tflops", "_peak_mib", "_x_flex", "_gib", "_mib", "_per_s"))
    )


def _short(e: BaseException, n: int) -> str:
    return str(e).splitlines()[0][:n] if str(e) else ""


def _check(case: Case, peer: Peer, run: Run, grad: bool) -> tuple[dict[str, float], float]:
    """Runs the peer once and returns its errors against the oracle and the call's seconds."""
    ref = case.reference(peer.exact)
    t0 = time.perf_counter()
    with contextlib.nullcontext() if grad else torch.no_grad():
        out = run.fn()
        if grad:
            out.backward(run.do)
    if case.device.type == "cuda":
        torch.cuda.synchronize(case.device)
    first_s = time.perf_counter() - t0
    err = {"err_out": rel_l2(run.unpack(out), ref["out"])}
    if grad:
        for name, leaf in zip(GRADS, run.leaves):
            err[f"err_{name}"] = rel_l2(run.unpack(leaf.grad), ref[name])
    return err, first_s


def _time(case: Case, run: Run, mode: str, args) -> dict:
    """Median / p20 / p80 ms, TFLOP/s and peak memory of one mode of a run that passed its check."""
    grad = mode == "fwd_bwd"
    if grad:

        def timed():
            run.fn().backward(run.do)
    else:

        def timed():
            with torch.no_grad():
                run.fn()

    t = bench(
        timed,
        case.device,
        grad_to_none=run.leaves if grad else None,
        warmup_ms=args.warmup_ms,
        rep_ms=args.rep_ms,
        cpu_reps=args.cpu_reps,
        cpu_clock=args.cpu_clock,
    )
    for x in run.leaves:
        x.grad = None
    peak = peak_memory_mib(timed, case.device, run.input_bytes)
    row = {f"{mode}_{key}": value for key, value in t.items()}  # ms, ms_p20, ms_p80 (and ms_min on CPU)
    row.update({f"{mode}_tflops": case.wl.flops(mode) / (t["ms"] * 1e-3) / 1e12, f"{mode}_peak_mib": peak})
    return row


def measure(case: Case, peer: Peer, args) -> dict:
    """The row of ``peer`` on ``case``: errors, timings, status (ok / skipped / error /
    FAILED) and notes. ``args``: ``tol``, ``warmup_ms``, ``rep_ms``, ``cpu_reps``, ``cpu_clock`` and what
    the peers read (``dedupe``, ``cpu_eager_gib``)."""
    wl = case.wl
    row = {
        "workload": wl.name,
        "group": wl.group,
        "peer": peer.name,
        "exact": peer.exact,
        "head_dim": wl.head_dim,
        "tokens": wl.total_tokens,
        "max_seqlen": wl.max_seqlen,
        "status": "ok",
    }
    notes = []
    for mode in MODES:
        grad = mode == "fwd_bwd"
        run, stop, free_cuda = None, False, False
        try:
            run = peer.prepare(case, grad, args)
            err, first_s = _check(case, peer, run, grad)
            for key, value in err.items():
                row[f"{mode}_{key}"] = value
            row[f"{mode}_first_call_s"] = first_s
            if run.setup_ms is not None:
                row["mask_build_ms"] = run.setup_ms
            if run.note and run.note not in notes:
                notes.append(run.note)
            if max(err.values()) > args.tol:
                _set_status(row, "FAILED")
                notes.append(f"{mode}: FAILED error check (max rel L2 {max(err.values()):.2e} > {args.tol:.0e})")
            else:
                row.update(_time(case, run, mode, args))
        except Skip as e:
            notes.append(f"{mode}: {e}" if grad else str(e))
            if not grad:
                _set_status(row, "skipped")
                stop = True
        except NotImplementedError as e:
            notes.append(f"not implemented ({_short(e, 80)})")
            _set_status(row, "skipped")
            stop = True
        except Exception as e:  # noqa: BLE001 -- a peer that breaks (compile error, OOM...) is a row, not a crash
            notes.append(f"{mode}: ERROR {type(e).__name__}: {_short(e, 120)}")
            _set_status(row, "error")
            free_cuda = True
        # outside the except clause: the traceback (and the tensors its frames hold) is gone
        del run
        if free_cuda and case.device.type == "cuda":
            torch.cuda.empty_cache()
        if stop:
            break
    if row["status"] == "FAILED":  # no timing of a row that fails its check, in either mode
        for key in [k for k in row if is_timing_key(k)]:
            del row[key]
    row["note"] = "; ".join(notes)
    return row


def measure_rounds(case: Case, peers: list[Peer], args) -> list[dict]:
    """The rows of ``peers`` on ``case``. On the CPU with ``args.rounds`` > 1, every peer is
    measured that many times in alternating order (the peers in order, then reversed, ...),
    and each of its timings is the median over its rounds (``<mode>_ms_rounds`` keeps them):
    a burst of other work on a shared machine lands in one round of a few rows, not in every
    round of one row, and the ratios between rows come from the same run. A peer whose first
    round is not "ok" is measured once."""
    rounds = max(1, getattr(args, "rounds", 1)) if case.device.type == "cpu" else 1
    runs: dict[str, list[dict]] = {p.name: [] for p in peers}
    for r in range(rounds):
        for p in peers if r % 2 == 0 else peers[::-1]:
            if not runs[p.name] or runs[p.name][0]["status"] == "ok":
                runs[p.name].append(measure(case, p, args))
    return [_median_of_rounds(runs[p.name], case) for p in peers]


def _median_of_rounds(rounds: list[dict], case: Case) -> dict:
    """One row from the rows of several rounds: the first round's row (its errors and notes)
    with each timing the median over the rounds; the first non-"ok" round's row if any."""
    bad = [r for r in rounds if r["status"] != "ok"]
    if bad or len(rounds) == 1:
        return bad[0] if bad else rounds[0]
    row = dict(rounds[0])
    for mode in MODES:
        if f"{mode}_ms" not in row:
            continue
        for key in ("ms", "ms_p20", "ms_p80", "ms_min"):
            if f"{mode}_{key}" in row:
                row[f"{mode}_{key}"] = statistics.median(r[f"{mode}_{key}"] for r in rounds)
        row[f"{mode}_ms_rounds"] = [r[f"{mode}_ms"] for r in rounds]
        row[f"{mode}_tflops"] = case.wl.flops(mode) / (row[f"{mode}_ms"] * 1e-3) / 1e12
    if "mask_build_ms" in row:
        row["mask_build_ms"] = statistics.median(r["mask_build_ms"] for r in rounds)
    return row


def add_speedups(rows: list[dict]) -> None:
    """``<mode>_x_flex``: Flex Triton's ms / the row's ms, same workload; none for a FAILED
    row, and none at all on a workload whose Flex row FAILED."""
    flex = {r["workload"]: r for r in rows if r["peer"] == FLEX_PEER}
    for r in rows:
        f = flex.get(r["workload"])
        for mode in MODES:
            r.pop(f"{mode}_x_flex", None)
            if f is None or "FAILED" in (f["status"], r["status"]):
                continue
            if f.get(f"{mode}_ms") and r.get(f"{mode}_ms"):
                r[f"{mode}_x_flex"] = f[f"{mode}_ms"] / r[f"{mode}_ms"]
