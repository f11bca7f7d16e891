"""btok's benchmarks, a package with thin command lines (see benchmarks/README.md).

    python benchmarks/mask_attn.py [--quick | --tiny]    # or: python -m benchmarks.mask_attn
    python benchmarks/model_step.py [--quick]

Modules: ``workloads`` (what is measured), ``peers`` (who is measured), ``oracle`` (the fp64
check), ``measure`` (one row), ``harness`` (timing, memory, environment, outputs),
``table`` / ``plot`` / ``targets`` (presentation). Importing the package runs nothing.
"""
