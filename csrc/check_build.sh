#!/usr/bin/env bash
# Compiles every translation unit of csrc/ on a machine without a GPU, and runs the host
# unit test of the tile plan:
#   - kernels/fwd.cu and kernels/bwd.cu with nvcc for sm_80 and for sm_90 (object files,
#     the two archs in parallel), with `-Xptxas -v`: registers and spills per kernel;
#   - binding.cpp with the host compiler against the installed torch's headers (a CPU build
#     of torch is enough: the binding needs no torch CUDA header);
#   - host/tile_plan_test.cpp, compiled for the host and run;
#   - host/emulator.cpp (the kernels for the host SIMT emulator of the tests) and
#     host/tile_plan_capi.cpp, compiled for the host.
# Fails on a compile error, a register spill in a kernel, or a failing plan test.
# Outputs go to build/csrc_check/ (or $BTOK_CHECK_BUILD_DIR). Usage: bash csrc/check_build.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${BTOK_CHECK_BUILD_DIR:-build/csrc_check}
mkdir -p "$OUT"
PYTHON=${PYTHON:-python}
NVCC=${NVCC:-nvcc}
CXX=${CXX:-g++}
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
command -v "$NVCC" > /dev/null || { echo "check_build: nvcc not found (set NVCC or PATH)" >&2; exit 1; }
[ -f "$CUDA_HOME/include/cuda_runtime_api.h" ] || { echo "check_build: no CUDA headers under CUDA_HOME=$CUDA_HOME" >&2; exit 1; }
now() { date +%s%N; }
elapsed() { local ds=$((($(now) - $1) / 100000000)); echo "$((ds / 10)).$((ds % 10))"; }  # seconds, 1 decimal
start=$(now)

# kernels: C++17, the lowest standard the supported torch builds compile extensions with
NVCC_FLAGS=(-std=c++17 -O3 -lineinfo -Xptxas -v)
compile_arch() {  # arch (80 or 90)
  local arch=$1 t0
  t0=$(now)
  for tu in fwd bwd; do
    "$NVCC" "${NVCC_FLAGS[@]}" -gencode "arch=compute_$arch,code=sm_$arch" -c "csrc/kernels/$tu.cu" \
      -o "$OUT/${tu}_sm$arch.o" > "$OUT/${tu}_sm$arch.log" 2>&1 || { cat "$OUT/${tu}_sm$arch.log" >&2; return 1; }
  done
  echo "  sm_$arch: kernels/fwd.cu kernels/bwd.cu -> $OUT/{fwd,bwd}_sm$arch.o ($(elapsed "$t0") s)"
}

compile_arch 80 > "$OUT/sm80.txt" & pid80=$!
compile_arch 90 > "$OUT/sm90.txt" & pid90=$!
trap 'kill $pid80 $pid90 2> /dev/null || true' EXIT  # an early failure leaves no nvcc behind

# host side while nvcc runs: the tile plan test, then the torch binding
t0=$(now)
"$CXX" -std=c++17 -O2 -Wall -Wextra -Werror -o "$OUT/tile_plan_test" csrc/host/tile_plan_test.cpp
plan_result=$("$OUT/tile_plan_test")
plan_time=$(elapsed "$t0")
t0=$(now)
"$CXX" -std=c++17 -O0 -DBTOK_EMULATE -fPIC -Wall -Wextra -Wno-unknown-pragmas -Werror -c csrc/host/emulator.cpp \
  -o "$OUT/emulator.o"
"$CXX" -std=c++17 -O0 -fPIC -Wall -Wextra -Werror -c csrc/host/tile_plan_capi.cpp -o "$OUT/tile_plan_capi.o"
emu_time=$(elapsed "$t0")
t0=$(now)
inc=$("$PYTHON" -c "from torch.utils.cpp_extension import include_paths; print(*include_paths(), sep='\n')") ||
  { echo "check_build: $PYTHON cannot import torch (activate the environment, or set PYTHON)" >&2; exit 1; }
mapfile -t TORCH_INC <<< "$inc"
# torch's own headers warn under -Wall; the binding's warnings are what this checks
"$CXX" -std=c++20 -O0 -fPIC -c csrc/binding.cpp -o "$OUT/binding.o" \
  "${TORCH_INC[@]/#/-isystem}" -isystem "$CUDA_HOME/include" -Wall -Wextra -Werror
binding_time=$(elapsed "$t0")

status=0
wait $pid80 || status=1
wait $pid90 || status=1
[ $status -eq 0 ] || { echo "check_build: FAILED (nvcc)" >&2; exit 1; }

echo "check_build: compiled with $("$NVCC" --version | tail -1)"
cat "$OUT/sm80.txt" "$OUT/sm90.txt"
echo "  host: binding.cpp against torch $("$PYTHON" -c 'import torch; print(torch.__version__)') headers ($binding_time s)"
echo "  host: host/tile_plan_test.cpp, run: $plan_result ($plan_time s)"
echo "  host: host/emulator.cpp (kernels under BTOK_EMULATE), host/tile_plan_capi.cpp ($emu_time s)"
echo "  registers / spill bytes (stores, loads) per kernel:"
spills=0
for log in "$OUT"/fwd_sm*.log "$OUT"/bwd_sm*.log; do
  arch=$(basename "$log" .log | sed 's/.*_//')
  # ptxas prints, per kernel: "Compiling entry function 'MANGLED' ...", the spill line,
  # then the register line
  while IFS='|' read -r mangled regs st ld; do
    name=$(echo "$mangled" | c++filt | sed -e 's/^void //' -e 's/btok::(anonymous namespace):://' -e 's/btok:://g' -e 's/(btok::.*//' -e 's/(.*//')
    printf '    %-5s %-38s %4s regs  spill %s/%s bytes\n' "$arch" "$name" "$regs" "$st" "$ld"
    [ "$st" = 0 ] && [ "$ld" = 0 ] || spills=1
  done < <(awk -F"'" '
    /Compiling entry function/ { name = $2 }
    /spill stores/ { split($0, w, " "); for (i in w) { if (w[i] == "stores,") st = w[i - 3]; if (w[i] == "loads") ld = w[i - 3] } }
    /Used [0-9]+ registers/ { split($0, w, " "); for (i in w) if (w[i] == "Used") r = w[i + 1]; print name "|" r "|" st "|" ld }
  ' "$log")
done
[ $spills -eq 0 ] || { echo "check_build: FAILED: a kernel spills registers" >&2; exit 1; }
echo "check_build: OK in $(elapsed "$start") s"
