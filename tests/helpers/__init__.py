"""Shared test helpers, one module a subject; every test imports them as ``tests.helpers.<module>``.

- ``numerics``: ``rel_err``, the tensor comparisons built on it, the kernels' per-dtype error bounds.
- ``oracle``: the float64 condensation-attention oracle, the one place the mask's formula is written.
- ``layouts``: random packed layouts, the shared edge cases, random q/k/v/dout for a layout.
- ``cuda_kernels``: the CUDA kernels (or the CPU emulator's launchers) against the oracle.
- ``host_build``: compiling csrc/ sources for the host.
- ``tile_plans``: the Triton and CUDA tile plans walked pair by pair against the mask.
- ``dispatch_modes``: ``PoisonEmpty`` (uninitialised memory reads as NaN), ``LargestTensor``.
- ``threads``: one intra-op thread (the ``one_torch_thread`` fixture, registered by tests/conftest.py).
- ``tiny``: tiny random models: BTok models on the character tokenizer (Llama, Qwen2, Qwen2-VL,
  Qwen2.5-VL, Qwen3-VL; their tokenizers, processors, images, saved folders) and the attention-backend
  models of every supported family (``backend_model``) with their comparisons. The ``saved_backbone``
  fixture of tests/conftest.py is :func:`tiny.save_backbone`'s folder, written once a session.
- ``tiny_gguf``: a tiny GGUF file writer.
- ``training``: example pairs, tiny recipes and models, one SGD trainer step, gradient snapshots,
  saved vision-language folders.
- ``twopass``: the packed single pass against the two-pass formulation.
- ``mmeb_train_data``, ``sources_data``, ``mmeb_v2_data``: tiny data sets in MMEB-train's, the
  other training sources' and MMEB-V2's on-disk layouts.
"""
