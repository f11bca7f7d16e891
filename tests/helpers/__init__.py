"""Shared test helpers, one module a subject; every test imports them as ``tests.helpers.<module>``.

- ``numerics``: ``rel_err`` and the tensor comparisons built on it.
- ``oracle``: the float64 condensation-attention oracle, the one place the mask formula is written.
- ``layouts``: random packed layouts with their edge cases, and random q/k/v for them.
- ``dispatch_modes``: ``PoisonEmpty`` (uninitialised memory reads as NaN), ``LargestTensor``.
- ``threads``: the one-intra-op-thread fixture.
- ``tiny_models``: the character tokenizer and tiny random Llama / Qwen2 BTok models.
- ``tiny_vl``: tiny Qwen2-VL / Qwen2.5-VL / Qwen3-VL models, tokenizer, processors and images.
- ``tiny_gguf``: a tiny GGUF file writer.
- ``tiny_families``: tiny random models of every family the attention backend supports.
- ``training``: example pairs, tiny recipes and models, one training step, gradient snapshots.
- ``mmeb_train_data``, ``sources_data``, ``mmeb_v2_data``: tiny data sets in the training
  sources' and MMEB-V2's on-disk layouts.
"""
