"""Benchmarks of btok (run as scripts: ``python benchmarks/mask_attn.py``, ``python benchmarks/model_step.py``)."""
