#!/usr/bin/env bash
# A prepared GPU session in two calls of under ten minutes each (outputs in $OUT if set, as on
# the device machine, else benchmarks/out):
#   bash benchmarks/run_gpu.sh check   # install, kernel tests compiled on CUDA, model step, backend overhead
#   bash benchmarks/run_gpu.sh bench   # install, the quick attention benchmark, the report
# Each step has its own timeout so that a slow one still leaves the others' outputs.
set -u
stage=${1:-check}
OUT_DIR=${OUT:-benchmarks/out}
mkdir -p "$OUT_DIR"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>&1 | tee "$OUT_DIR/gpu.txt"
pip install --no-deps --no-build-isolation -e . > "$OUT_DIR/pip.log" 2>&1 || echo "pip install -e . failed: see pip.log"
case "$stage" in
  check)
    # the kernel tests on CUDA with the compiled kernels (test_aot compiles for a GPU it does not
    # need: it is for machines without one)
    TRITON_INTERPRET=0 timeout 330 python -m pytest tests/ops -q --maxfail=20 -p no:cacheprovider \
      --ignore=tests/ops/test_aot.py 2>&1 | tee "$OUT_DIR/tests_ops_cuda.log" | tail -30
    timeout 150 python benchmarks/model_step.py --quick --out-dir "$OUT_DIR" 2>&1 | tee "$OUT_DIR/model_step.log"
    timeout 60 python benchmarks/backend_overhead.py --out-dir "$OUT_DIR" 2>&1 | tee "$OUT_DIR/backend_overhead.log"
    ;;
  bench)
    timeout 400 python benchmarks/mask_attn.py --quick --out-dir "$OUT_DIR" 2>&1 | tee "$OUT_DIR/mask_attn_quick.log"
    python benchmarks/report.py "$OUT_DIR/mask_attn_quick_cuda.json" > "$OUT_DIR/report.md" 2>&1 \
      && echo "wrote $OUT_DIR/report.md"
    ;;
  *)
    echo "usage: bash benchmarks/run_gpu.sh check|bench" >&2
    exit 2
    ;;
esac
