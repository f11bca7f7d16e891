#!/usr/bin/env bash
# A prepared GPU session in two calls (outputs in $OUT if set, as on the device machine, else
# benchmarks/out): check within 330 s, bench within 480 s, so that both and a machine start fit a
# 15-minute device budget.
# Run them as two separate commands:
#   bash benchmarks/run_gpu.sh check   # install, kernel / backend tests on CUDA, model-layer tests, backend overhead
#   bash benchmarks/run_gpu.sh bench   # install, mask_attn --quick, btok_step, encode, model_step (--quick), report
# Every step has its own timeout, cut to what is left of the stage's budget (BTOK_STAGE_BUDGET_S,
# default 330 s for check, 480 s for bench), so a slow step never costs the next ones their
# outputs (the later steps are the less important ones); a step with too little
# time left is skipped with a line saying so. Every benchmark rewrites its JSON after each
# workload or row, so a step that times out keeps what it finished. Nothing needs the internet.
# Without a CUDA device (a dry run on a CPU machine) the CUDA-only steps are skipped with a
# line each and the benchmarks run their smallest CPU configurations.
set -u
stage=${1:-check}
case "$stage" in check|bench) ;; *) echo "usage: bash benchmarks/run_gpu.sh check|bench" >&2; exit 2 ;; esac
OUT_DIR=${OUT:-benchmarks/out}
mkdir -p "$OUT_DIR"
if [ "$stage" = check ]; then BUDGET=${BTOK_STAGE_BUDGET_S:-330}; else BUDGET=${BTOK_STAGE_BUDGET_S:-480}; fi
RESERVE=25  # kept for the report / the last lines
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
PY=${PYTHON:-$(command -v python || command -v python3)}

left() { echo $((BUDGET - SECONDS)); }

# run_step NAME MAX_S MIN_S CMD...: CMD under `timeout`, at most MAX_S and what the budget
# leaves (minus RESERVE), skipped when that is under MIN_S; output in $OUT_DIR/NAME.log and
# on the terminal; one status line.
run_step() {
  local name=$1 max_s=$2 min_s=$3; shift 3
  local t=$(( $(left) - RESERVE ))
  [ "$t" -gt "$max_s" ] && t=$max_s
  if [ "$t" -lt "$min_s" ]; then
    echo "== $name: SKIPPED, only ${t}s of the stage budget left (needs ${min_s}s)" | tee -a "$OUT_DIR/steps.txt"
    return 0
  fi
  echo "== $name (timeout ${t}s, $(left)s of the stage left)"
  timeout -k 10 "$t" "$@" 2>&1 | tee "$OUT_DIR/$name.log"
  local rc=${PIPESTATUS[0]}
  local what="exit $rc"
  [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && what="TIMED OUT after ${t}s (partial outputs kept)"
  echo "== $name: $what" | tee -a "$OUT_DIR/steps.txt"
}

echo "== stage $stage, budget ${BUDGET}s, outputs in $OUT_DIR" | tee "$OUT_DIR/steps.txt"
timeout 20 nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,compute_cap --format=csv > "$OUT_DIR/gpu.txt" 2>&1 \
  || echo "nvidia-smi: not available" >> "$OUT_DIR/gpu.txt"
cat "$OUT_DIR/gpu.txt"
# build the CUDA C++ extension for this card only (half the compile time of setup.py's two arches)
cap=$(timeout 20 nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' ')
case "$cap" in [0-9]*.[0-9]*) export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$cap} ;; esac

# Install unless this very checkout is already what `import btok_model` finds (looked up from
# outside the checkout, where the working directory cannot stand in for an install).
here=$(pwd -P)
installed=$(cd / && timeout 60 "$PY" -c "import btok_model, os; print(os.path.realpath(btok_model.__file__))" 2>/dev/null)
if [ "${installed#"$here"/}" != "$installed" ]; then
  echo "== install: btok already installed from this checkout ($installed)"
else
  echo "== install: pip install --no-deps --no-build-isolation -e ."
  if ! timeout 300 "$PY" -m pip install --no-deps --no-build-isolation -e . > "$OUT_DIR/pip.log" 2>&1; then
    echo "== install FAILED (see pip.log: $(tail -1 "$OUT_DIR/pip.log")); running from the checkout via PYTHONPATH"
    export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
  fi
fi
# FA4 carried in an earlier call (benchmarks/carry_fa4.sh unpack): its folder on PYTHONPATH
fa4_env=$(bash benchmarks/carry_fa4.sh env 2>/dev/null || true)
if [ -n "$fa4_env" ]; then
  eval "$fa4_env"
  echo "== FA4: carried, on PYTHONPATH"
fi
timeout 120 "$PY" - <<'EOF' 2>&1 | tee "$OUT_DIR/versions.txt"
import importlib.metadata as md
import torch
for name in ("torch", "triton", "transformers", "tokenizers", "peft", "btok", "flash-attn-4", "nvidia-cutlass-dsl"):
    try:
        print(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name}: not installed")
print("cuda:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device")
EOF
if timeout 120 "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  gpu=1 dev=cuda
else
  gpu=0 dev=cpu
  echo "== no CUDA device: CUDA-only steps are skipped; benchmarks run their smallest CPU configurations"
fi

case "$stage" in
  check)
    if [ "$gpu" = 1 ]; then
      # The tests compiled on CUDA (TRITON_INTERPRET=0). Compiling ~160 kernel variants one after
      # the other would take minutes, so the suite runs as parallel shards sharing Triton's
      # cache. test_aot compiles for a GPU without one: it is for CPU machines.
      # the shards' timeout: 240 s, or less when the install took long (backend_overhead keeps 75 s)
      shard_t=$(( $(left) - RESERVE - 75 ))
      [ "$shard_t" -gt 240 ] && shard_t=240
      [ "$shard_t" -lt 60 ] && shard_t=60
      echo "== test shards (timeout ${shard_t}s each, in parallel)"
      shard() {  # name, then pytest arguments
        local name=$1; shift
        TRITON_INTERPRET=${SHARD_INTERPRET:-0} timeout -k 10 "$shard_t" "$PY" -m pytest -q -p no:cacheprovider "$@" \
          > "$OUT_DIR/tests_cuda_$name.log" 2>&1
        echo "shard $name: exit $? ($(tail -1 "$OUT_DIR/tests_cuda_$name.log"))" | tee -a "$OUT_DIR/steps.txt"
      }
      shard a tests/ops/test_condensation.py -k "edge_layouts or random_layouts or empty" &
      shard b tests/ops/test_condensation.py -k "autotuned or gqa_head_dims or fused_dq or extreme or kernels_bidirectional" &
      shard c tests/ops/test_condensation.py -k "gpu_default or more_head_dims or tile_shapes or gqa_split or public or reference or mask_is or strides or env" &
      shard d tests/ops/test_api.py tests/ops/test_layout.py tests/ops/test_mask.py tests/ops/test_tile_plan.py tests/ops/test_sdpa_path.py &
      shard e tests/backend &
      # the model layer (BToks, packed pass == two-pass, encode, training, evaluation) and the
      # benchmarks' own tests, as on a CPU machine (interpreted kernels, CPU tensors) but under
      # this machine's torch / triton / transformers
      SHARD_INTERPRET=1 OMP_NUM_THREADS=4 shard g tests/embedder tests/training tests/evaluation tests/benchmarks &
      # the CUDA C++ backend, built by the pip install above when nvcc is there
      timeout 120 "$PY" -c "from btok_kernels.condensation import cuda; print('btok_kernels._cuda:', cuda._load() or 'loaded')" \
        2>&1 | tee "$OUT_DIR/cuda_build.txt"
      shard f tests/ops/test_cuda_backend.py tests/ops/test_cuda_plan.py &
      wait
      # once under compute-sanitizer: out-of-bounds accesses (memcheck), shared-memory races (racecheck)
      sanitizer=$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")
      if [ -x "$sanitizer" ]; then
        for tool in memcheck racecheck; do
          # without the caching allocator every tensor is its own allocation: memcheck sees overruns
          run_step "cuda_$tool" 90 30 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$sanitizer" --tool "$tool" --error-exitcode 1 \
            "$PY" -m pytest -q -p no:cacheprovider tests/ops/test_cuda_backend.py \
            -k "edge_layouts and fp16 and (one_long or many_tiny or empty_sequences)"
        done
      else
        echo "== compute-sanitizer: not found" | tee -a "$OUT_DIR/steps.txt"
      fi
    else
      echo "== CUDA tests (compiled kernels, CUDA C++ backend, compute-sanitizer): SKIPPED, no CUDA device" \
        | tee -a "$OUT_DIR/steps.txt"
    fi
    run_step backend_overhead 75 20 "$PY" benchmarks/backend_overhead.py --out-dir "$OUT_DIR" --stem backend_overhead_$dev
    ;;
  bench)
    # fixed stems (a fresh $OUT per device call; elsewhere an existing stem gets a -2 suffix,
    # and the report reads the first run's files)
    if [ "$gpu" = 1 ]; then
      attn_args=(--quick --time-budget-s 150) step_args=(--quick) enc_args=(--quick)
    else
      attn_args=(--tiny) step_args=(--workload tiny --layers 1 --cpu-reps 1)
      enc_args=(--texts 8 --layers 1 --reps 1 --batch-size 4)
    fi
    # in order of importance: attention, the BTok step (issue 8's model-step target), encode,
    # then the plain LM step (its rows are close to btok_step's)
    run_step mask_attn_quick 200 60 "$PY" benchmarks/mask_attn.py "${attn_args[@]}" --out-dir "$OUT_DIR" \
      --stem mask_attn_quick_$dev
    run_step btok_step 140 60 "$PY" benchmarks/btok_step.py "${step_args[@]}" --out-dir "$OUT_DIR" --stem btok_step_$dev
    run_step encode 80 40 "$PY" benchmarks/encode.py "${enc_args[@]}" --out-dir "$OUT_DIR" --stem encode_$dev
    run_step model_step 90 45 "$PY" benchmarks/model_step.py "${step_args[@]}" --out-dir "$OUT_DIR" --stem model_step_$dev
    RESERVE=0 run_step report 25 5 "$PY" benchmarks/report.py "$OUT_DIR/mask_attn_quick_$dev.json" \
      "$OUT_DIR/model_step_$dev.json" --btok-step "$OUT_DIR/btok_step_$dev.json" --encode "$OUT_DIR/encode_$dev.json"
    cp "$OUT_DIR/report.log" "$OUT_DIR/report.md" 2>/dev/null && echo "wrote $OUT_DIR/report.md"
    ;;
esac
echo "== stage $stage done in ${SECONDS}s" | tee -a "$OUT_DIR/steps.txt"
