"""One training step of a model, checked against a reference and then timed: the rows of
``model_step.py`` and ``btok_step.py``.

A :class:`Row` names an attention implementation and a ``prepare(model, batch, device)``
that builds the row's inputs and returns a :class:`Prepared` step: a function running the
forward and returning its loss (a scalar tensor, or a dict of named scalars with ``"loss"``,
the one the backward starts from). :func:`run_row` runs it once, compares every named value
and the probed gradients with the :class:`Reference` (relative error; a row above the
tolerance is FAILED and gets no timing), then times it and measures its memory on CUDA.
On the CPU, :func:`cpu_memory_pass` measures memory after all rows are timed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from .harness import CpuPeakRss, bench, rel_l2, write_outputs
from .plot import plot_model_step
from .table import format_table
from .workloads import all_workloads

__all__ = [
    "Skip",
    "Prepared",
    "Row",
    "Reference",
    "named_losses",
    "train_step",
    "errors",
    "run_row",
    "cpu_memory_pass",
    "add_ratios",
    "run_rows",
    "MEMORY_NOTE",
]


class Skip(Exception):
    """A row that cannot run here; the message is its note.

    Args:
        message: why.
        forward: optionally, the row's forward alone (what still runs here, e.g. without a
            backward): its values are checked against the reference, so a skipped row's
            plumbing is still verified; a mismatch makes the row FAILED.
    """

    def __init__(self, message: str, forward: Callable[[], torch.Tensor | Mapping[str, torch.Tensor]] | None = None):
        super().__init__(message)
        self.forward = forward


@dataclass
class Prepared:
    """A row ready to run: ``loss()`` runs the forward (a scalar tensor, or a dict of named
    scalar tensors holding ``"loss"``); ``setup_ms`` is a per-batch cost measured apart
    (a mask build), and ``setup_in_step`` says whether ``loss()`` pays it too (then the row
    also gets ``step_ex_mask_ms`` = step - setup, a derived figure); ``notes`` go to the
    row's note."""

    loss: Callable[[], torch.Tensor | Mapping[str, torch.Tensor]]
    setup_ms: float | None = None
    notes: list[str] = field(default_factory=list)
    setup_in_step: bool = False


@dataclass
class Row:
    """One way to run the step: the model's ``attn_implementation`` and a function that
    builds its inputs for a (model, batch, device) and returns the :class:`Prepared` step."""

    name: str
    attn_implementation: str
    prepare: Callable[[object, object, torch.device], Prepared]


@dataclass
class Reference:
    """What every row is checked against: named float values (``"loss"``, ...) and named
    gradients (any shape; compared by relative L2)."""

    values: dict[str, float]
    grads: dict[str, torch.Tensor]


def named_losses(out: torch.Tensor | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{"loss": out}`` for a tensor, the dict itself otherwise (it must hold ``"loss"``)."""
    named = {"loss": out} if isinstance(out, torch.Tensor) else dict(out)
    if "loss" not in named:
        raise ValueError(f"a step must return a tensor or a dict with 'loss', got keys {sorted(named)}")
    return named


def train_step(loss: Callable[[], torch.Tensor | Mapping[str, torch.Tensor]]) -> Callable[[], dict]:
    """The step: the forward, then the backward of its ``"loss"``; returns the named losses."""

    def step():
        named = named_losses(loss())
        named["loss"].backward()
        return named

    return step


def errors(
    values: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor | None], reference: Reference
) -> dict[str, float]:
    """``err_<name>``: relative error of each reference value and relative L2 error of each
    reference gradient (inf for a missing value or gradient, or one holding NaN / Inf)."""
    out = {}
    for name, ref in reference.values.items():
        got = values.get(name)
        got = math.inf if got is None else float(got.detach())
        out[f"err_{name}"] = abs(got - ref) / max(abs(ref), 1e-30) if math.isfinite(got) else math.inf
    for name, ref in reference.grads.items():
        got = grads.get(name)
        out[f"err_{name}"] = math.inf if got is None else rel_l2(got, ref)
    return out


def _short(e: BaseException) -> str:
    return str(e).splitlines()[0][:160] if str(e) else ""


def _check_forward_only(forward, reference: Reference, tol: float, result: dict, notes: list[str]) -> None:
    """The forward of a skipped row against the reference values (no gradients): ``err_<name>``
    into ``result``, FAILED above ``tol``."""
    try:
        with torch.no_grad():
            values = named_losses(forward())
        errs = errors(values, {}, Reference(reference.values, {}))
    except Exception as e:  # noqa: BLE001 -- the forward breaking is the row's error
        result["status"] = "error"
        notes.append(f"forward only: ERROR {type(e).__name__}: {_short(e)}")
        return
    result.update(errs)
    worst = max(errs.values())
    if not worst <= tol:
        result["status"] = "FAILED"
        notes.append(f"forward only: FAILED check vs the reference (max relative error {worst:.1e} > tol {tol:.0e})")
    else:
        notes.append(f"forward only: its losses match the reference (max relative error {worst:.1e})")


def run_row(
    row: Row,
    model,
    batch,
    reference: Reference,
    probe: Callable[[object], dict],
    args,
    set_attention: Callable[[object, str], None],
) -> tuple[dict, Callable | None]:
    """The checked and timed result of one row, and its step (None unless it passed its
    check) for :func:`cpu_memory_pass`.

    ``args``: ``device``, ``tol``, ``rep_ms``, ``cpu_reps``, ``cpu_clock`` (and optionally
    ``skipped_forward_check``: False skips :class:`Skip`'s forward check). ``probe(model)``
    returns the named gradients to check; ``set_attention(model, name)`` switches the
    attention implementation (``prepare`` runs first: it may import what registers it).
    """
    device = args.device
    result, notes, step = {"row": row.name, "status": "ok"}, [], None
    try:
        prepared = row.prepare(model, batch, device)
        set_attention(model, row.attn_implementation)
        notes += prepared.notes
        if prepared.setup_ms is not None:
            result["mask_build_ms"] = prepared.setup_ms
        step = train_step(prepared.loss)
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        values = step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        result["first_call_s"] = time.perf_counter() - t0
        result.update({name: float(v.detach()) for name, v in values.items() if name != "loss"})
        result["loss"] = float(values["loss"].detach())
        result.update(errors(values, probe(model), reference))
        del values
        worst = max(v for k, v in result.items() if k.startswith("err_"))
        if not worst <= args.tol:  # NaN and inf fail too
            result["status"] = "FAILED"
            notes.append(f"FAILED check vs the reference (max relative error {worst:.1e} > tol {args.tol:.0e})")
            step = None
        else:
            params = [p for p in model.parameters() if p.requires_grad]
            model.zero_grad(set_to_none=True)
            t = bench(
                step,
                device,
                grad_to_none=params,
                warmup_ms=50,
                rep_ms=args.rep_ms,
                cpu_reps=args.cpu_reps,
                cpu_clock=args.cpu_clock,
            )
            result.update({f"step_{key}": value for key, value in t.items()})  # ms, ms_p20, ms_p80 (ms_min on CPU)
            if prepared.setup_in_step and prepared.setup_ms is not None:
                result["step_ex_mask_ms"] = t["ms"] - prepared.setup_ms
            model.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                base = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
                step()
                torch.cuda.synchronize(device)
                peak = torch.cuda.max_memory_allocated(device)
                result["peak_gib"] = peak / 2**30  # weights, gradients and the step's own memory
                result["step_peak_gib"] = (peak - base) / 2**30  # above what was allocated before the step
    except Skip as e:
        result["status"] = "skipped"
        notes.append(str(e))
        step = None
        if e.forward is not None and getattr(args, "skipped_forward_check", True):
            set_attention(model, row.attn_implementation)
            _check_forward_only(e.forward, reference, args.tol, result, notes)
    except Exception as e:  # noqa: BLE001 -- a row that breaks is reported, the others still run
        result["status"] = "error"
        notes.append(f"ERROR {type(e).__name__}: {_short(e)}")
        step = None
    model.zero_grad(set_to_none=True)
    if device.type == "cuda" and result["status"] == "error":
        torch.cuda.empty_cache()
    result["note"] = "; ".join(notes)
    return result, step


def cpu_memory_pass(rows: list[tuple[dict, Callable | None, Row]], model, set_attention) -> str | None:
    """On the CPU, after every row is timed: ``rss_peak_mib`` of each timed row, one step
    each (see :class:`~benchmarks.harness.CpuPeakRss`). Returns why nothing was measured, or None."""
    tracker = CpuPeakRss()
    why = tracker.start()
    if why:
        return why
    for result, step, row in rows:
        if step is None:
            continue
        set_attention(model, row.attn_implementation)
        model.zero_grad(set_to_none=True)
        try:
            result["rss_peak_mib"] = tracker.measure(step)
        except Exception as e:  # noqa: BLE001 -- the timing stands; the memory figure is a note
            result["note"] = "; ".join(x for x in (result.get("note"), f"memory: {type(e).__name__}") if x)
        model.zero_grad(set_to_none=True)
    return None


def add_ratios(results: list[dict], peers: list[str]) -> None:
    """``x_<peer>``: the peer's step ms / the row's (> 1: the row is faster), for timed rows;
    with ``step_ex_mask_ms`` on the peer, ``x_<peer>_ex_mask`` divides that instead."""
    by = {r["row"]: r for r in results}
    for r in results:
        for other in peers:
            o = by.get(other, {})
            if r.get("step_ms") and o.get("step_ms"):
                r[f"x_{other}"] = o["step_ms"] / r["step_ms"]
                if o.get("step_ex_mask_ms") and other != r["row"]:
                    r[f"x_{other}_ex_mask"] = o["step_ex_mask_ms"] / r["step_ms"]


MEMORY_NOTE = {
    "cuda": "peak_gib: torch.cuda.max_memory_allocated over one step (weights and gradients included); "
    "step_peak_gib: that peak minus what was allocated before the step",
    "cpu": "rss_peak_mib: peak resident memory the process grew by during one step (Linux VmHWM after "
    "clear_refs, glibc mmap threshold 64 KiB so freed tensors leave), measured after all timing",
}


def run_rows(
    rows: list[Row],
    model,
    batch,
    reference: Reference,
    probe,
    set_attention,
    args,
    meta: dict,
    stem,
    fixed: dict,
    ratio_to: list[str],
) -> list[dict]:
    """:func:`run_row` for each row, the run's files rewritten after each one (a run cut
    short keeps the rows it finished), then the speed ratios (:func:`add_ratios`) and, on
    the CPU with ``args.cpu_memory``, :func:`cpu_memory_pass`. ``fixed``: keys every row
    gets first (workload, layers, ...)."""
    t_start = time.perf_counter() - meta.get("wall_s", 0.0)
    results, done = [], []
    meta["peak_memory"] = MEMORY_NOTE["cuda" if args.device.type == "cuda" else "cpu"]
    write_outputs(results, meta, stem)  # the environment record, before the first row can hang
    for row in rows:
        print(f"# {row.name} ...", flush=True)
        result, step = run_row(row, model, batch, reference, probe, args, set_attention)
        result = {**fixed, **result}
        results.append(result)
        done.append((result, step, row))
        add_ratios(results, ratio_to)
        meta["wall_s"] = time.perf_counter() - t_start
        write_outputs(results, meta, stem)
    if args.device.type == "cpu":
        why = cpu_memory_pass(done, model, set_attention) if args.cpu_memory else "peak RSS not measured (--no-memory)"
        if why:
            meta["peak_memory"] = why
    meta["wall_s"] = time.perf_counter() - t_start
    write_outputs(results, meta, stem)
    return results


def report_rows(results: list[dict], meta: dict, stem, columns, plot: bool) -> dict:
    """The end of a model-level run: the table (``columns`` of :func:`format_table`), the
    memory note, the JSON/CSV files and, with ``plot``, the PNG beside them. Returns the
    run's ``{"rows", "meta", "paths"}``."""
    print()
    print(format_table(results, columns))
    print(f"# memory: {meta['peak_memory']}")
    paths = write_outputs(results, meta, stem)
    if plot:
        png = stem.with_name(stem.name + ".png")
        why = plot_model_step(results, png, meta)
        if why:
            print(f"# {why}")
        else:
            paths.append(png)
    print(f"# wrote {', '.join(str(p) for p in paths)}; total wall time {meta['wall_s']:.1f} s")
    return {"rows": results, "meta": meta, "paths": paths}


def check_run_options(args, rows: list[Row]) -> None:
    """Options shared by the model-level benchmarks, checked before any model is built:
    ``--layers`` and ``--cpu-reps`` at least 1, a known ``--workload``, and ``--rows`` (a
    comma-separated string, replaced by its list of names) naming known rows. Raises
    ``SystemExit`` naming the option."""
    for name, value in (("--layers", args.layers), ("--cpu-reps", args.cpu_reps)):
        if value < 1:
            raise SystemExit(f"{name} must be >= 1, got {value}")
    if args.workload not in all_workloads():
        raise SystemExit(f"unknown workload {args.workload!r}: choose from {sorted(all_workloads())}")
    known = [r.name for r in rows]
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    if set(args.rows) - set(known):
        raise SystemExit(f"unknown rows {sorted(set(args.rows) - set(known))}: choose from {known}")
