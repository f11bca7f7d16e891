"""btok's benchmarks, a package with thin command lines (see benchmarks/README.md).

    python benchmarks/mask_attn.py [--quick | --tiny]    # or: python -m benchmarks.mask_attn
    python benchmarks/btok_step.py [--quick]             # one BTok training step, four formulations
    python benchmarks/encode.py [--quick]                # encode() vs last-token pooling
    python benchmarks/model_step.py [--quick]

Modules: ``workloads`` (what is measured), ``peers`` (who is measured), ``oracle`` (the fp64
check), ``measure`` (one row), ``harness`` (timing, memory, environment, outputs),
``model_setup`` (random decoders, a word tokenizer, BTok models), ``steps`` (a checked and
timed training-step row), ``table`` / ``plot`` / ``targets`` (presentation). Importing the
package runs nothing.
"""
