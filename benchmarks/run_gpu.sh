#!/usr/bin/env bash
# One prepared GPU session: install, the quick attention benchmark, the model step, the report.
#   bash benchmarks/run_gpu.sh            # outputs in $OUT if set (device machine), else benchmarks/out
# Each step has its own timeout so that a slow one still leaves the others' outputs.
set -u
OUT_DIR=${OUT:-benchmarks/out}
mkdir -p "$OUT_DIR"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>&1 | tee "$OUT_DIR/gpu.txt"
pip install --no-deps --no-build-isolation -e . > "$OUT_DIR/pip.log" 2>&1 || echo "pip install -e . failed: see pip.log"
timeout 330 python benchmarks/mask_attn.py --quick --out-dir "$OUT_DIR" 2>&1 | tee "$OUT_DIR/mask_attn_quick.log"
timeout 180 python benchmarks/model_step.py --quick --out-dir "$OUT_DIR" 2>&1 | tee "$OUT_DIR/model_step.log"
python benchmarks/report.py "$OUT_DIR/mask_attn_quick_cuda.json" "$OUT_DIR/model_step_cuda.json" \
    > "$OUT_DIR/report.md" 2>&1 && echo "wrote $OUT_DIR/report.md"
