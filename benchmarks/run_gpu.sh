#!/usr/bin/env bash
# A prepared GPU session in two calls of under ten minutes each (outputs in $OUT if set, as on
# the device machine, else benchmarks/out); together they fit a 15-minute device budget.
# Run them as two separate commands:
#   bash benchmarks/run_gpu.sh check   # install, kernel and model tests on CUDA, backend overhead (< 6 min)
#   bash benchmarks/run_gpu.sh bench   # install, quick attention benchmark, model step, report (< 8 min)
# Every step has its own timeout, so a slow one still leaves the others' outputs.
set -u
stage=${1:-check}
OUT_DIR=${OUT:-benchmarks/out}
mkdir -p "$OUT_DIR"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>&1 | tee "$OUT_DIR/gpu.txt"
pip install --no-deps --no-build-isolation -e . > "$OUT_DIR/pip.log" 2>&1 || echo "pip install -e . failed: see pip.log"
case "$stage" in
  check)
    # The tests compiled on CUDA (TRITON_INTERPRET=0). Compiling ~160 kernel variants one after
    # the other would take minutes, so the suite runs as parallel shards sharing Triton's
    # cache. test_aot compiles for a GPU without one: it is for CPU machines.
    shard() {  # name, then pytest arguments
      local name=$1; shift
      TRITON_INTERPRET=0 timeout 240 python -m pytest -q -p no:cacheprovider "$@" \
        > "$OUT_DIR/tests_cuda_$name.log" 2>&1
      echo "shard $name: $(tail -1 "$OUT_DIR/tests_cuda_$name.log")"
    }
    shard a tests/ops/test_condensation.py -k "edge_layouts or random_layouts or empty" &
    shard b tests/ops/test_condensation.py -k "autotuned or gqa_head_dims or fused_dq or extreme or kernels_bidirectional" &
    shard c tests/ops/test_condensation.py -k "gpu_default or more_head_dims or tile_shapes or gqa_split or public or reference or mask_is or strides or env" &
    shard d tests/ops/test_api.py tests/ops/test_layout.py tests/ops/test_mask.py tests/ops/test_schedule.py tests/ops/test_sdpa_path.py &
    shard e tests/backend &
    # the CUDA C++ backend, built by the pip install above when nvcc is there
    python -c "from btok_kernels.condensation import cuda; print('btok_kernels._cuda:', cuda._load() or 'loaded')"
    shard f tests/ops/test_cuda_backend.py tests/ops/test_cuda_plan.py &
    wait
    # once under compute-sanitizer: out-of-bounds accesses (memcheck), shared-memory races (racecheck)
    sanitizer=$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")
    if [ -x "$sanitizer" ]; then
      for tool in memcheck racecheck; do
        # without the caching allocator every tensor is its own allocation: memcheck sees overruns
        PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout 90 "$sanitizer" --tool "$tool" --error-exitcode 1 \
          python -m pytest -q -p no:cacheprovider tests/ops/test_cuda_backend.py \
          -k "edge_layouts and fp16 and (one_long or many_tiny or empty_sequences)" > "$OUT_DIR/cuda_$tool.log" 2>&1
        echo "compute-sanitizer $tool: exit $? ($(tail -1 "$OUT_DIR/cuda_$tool.log"))"
      done
    else
      echo "compute-sanitizer: not found"
    fi
    timeout 75 python benchmarks/backend_overhead.py --out-dir "$OUT_DIR" --stem backend_overhead_cuda 2>&1 \
      | tee "$OUT_DIR/backend_overhead.log"
    ;;
  bench)
    # fixed stems (a fresh $OUT per device call; elsewhere an existing stem gets a -2 suffix)
    timeout 300 python benchmarks/mask_attn.py --quick --time-budget-s 210 --out-dir "$OUT_DIR" \
      --stem mask_attn_quick_cuda 2>&1 | tee "$OUT_DIR/mask_attn_quick.log"
    timeout 120 python benchmarks/model_step.py --quick --out-dir "$OUT_DIR" --stem model_step_cuda 2>&1 \
      | tee "$OUT_DIR/model_step.log"
    python benchmarks/report.py "$OUT_DIR/mask_attn_quick_cuda.json" "$OUT_DIR/model_step_cuda.json" \
      > "$OUT_DIR/report.md" 2>&1 && echo "wrote $OUT_DIR/report.md"
    ;;
  *)
    echo "usage: bash benchmarks/run_gpu.sh check|bench" >&2
    exit 2
    ;;
esac
