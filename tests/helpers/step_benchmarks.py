"""The command line of the model-step benchmarks (``benchmarks/btok_step.py``,
``benchmarks/model_step.py``) at their smallest CPU size, shared by their tests."""


def tiny_step_argv(out_dir, *more: str) -> list[str]:
    """``--workload tiny`` with one layer and one repetition on the CPU, outputs in ``out_dir``,
    no memory probe (it changes malloc for the rest of the process; tested apart, in a
    subprocess) and no plot; ``more``: further flags (``--stem``, ``--rows``, ...)."""
    return [
        *("--device", "cpu", "--workload", "tiny", "--layers", "1", "--cpu-reps", "1"),
        *("--no-memory", "--no-plot", "--out-dir", str(out_dir)),
        *more,
    ]
