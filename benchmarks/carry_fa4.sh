#!/usr/bin/env bash
# FA4 (flash-attn-4's CuTe-DSL kernels, `flash_attn.cute`) as a peer on a GPU machine without a
# package registry: packed here from PyPI wheels, carried in parts, unpacked there.
#
#   bash benchmarks/carry_fa4.sh pack              # here: benchmarks/out/fa4-py312.tar.xz.part-aa, -ab (<= 40 MiB each)
#   BTOK_FA4_PYTHON=3.11 bash benchmarks/carry_fa4.sh pack   # for another Python (fa4-py311...)
#   bash benchmarks/carry_fa4.sh receive PART...   # there: keep parts in $BTOK_FA4_DIR (default /root/btok-fa4)
#   bash benchmarks/carry_fa4.sh unpack            # there: join the parts, unpack, import flash_attn.cute
#   bash benchmarks/carry_fa4.sh env               # there: the PYTHONPATH line to eval, if unpacked
#
# The wheels are those of the GPU machine's Python (3.12, x86_64, CUDA 13): flash-attn-4 4.0.0b36,
# nvidia-cutlass-dsl 4.8.1 with its libs-base, libs-core and libs-cu13, quack-kernels,
# apache-tvm-ffi and torch-c-dlpack-ext; they are unzipped into one folder (a wheel's .pth file is
# not run from PYTHONPATH, so `env` adds cutlass's `dsl_packages` folder itself). The xz archive
# (about 70 MB) is more than the 64 MiB one device call carries, so it is cut into parts: carry
# one per call (`receive`; the last call also `unpack`s), then run the benchmark in the next call,
# each while the machine is still warm (it keeps /root between calls only until it goes back).
# benchmarks/run_gpu.sh picks the unpacked folder up by itself (`env`).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${BTOK_FA4_DIR:-/root/btok-fa4}
PY=${PYTHON:-$(command -v python3 || command -v python)}
PYVER=${BTOK_FA4_PYTHON:-3.12}
ARCHIVE=benchmarks/out/fa4-py${PYVER//./}.tar.xz
WHEELS=(
  flash-attn-4==4.0.0b36
  nvidia-cutlass-dsl==4.8.1 nvidia-cutlass-dsl-libs-base==4.8.1 nvidia-cutlass-dsl-libs-core==4.8.1
  nvidia-cutlass-dsl-libs-cu13==4.8.1
  quack-kernels==0.6.5 apache-tvm-ffi==0.1.15.post2 torch-c-dlpack-ext==0.1.5
)

fa4_path() {  # the folder and cutlass's dsl_packages, as PYTHONPATH entries
  echo "$DIR/fa4:$DIR/fa4/nvidia_cutlass_dsl/dsl_packages"
}

case "${1:-}" in
  pack)
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
      -d "$work/wheels" "${WHEELS[@]}"
    mkdir -p "$work/fa4" benchmarks/out
    for wheel in "$work"/wheels/*.whl; do "$PY" -m zipfile -e "$wheel" "$work/fa4/"; done
    test -f "$work/fa4/flash_attn/cute/__init__.py" || { echo "pack: flash_attn/cute missing from the wheels" >&2; exit 1; }
    rm -f "$ARCHIVE".part-*
    tar -C "$work" -cf - fa4 | xz -T0 -6 | split -b 40M - "$ARCHIVE.part-"
    ls -l "$ARCHIVE".part-*
    ;;
  receive)
    shift
    [ "$#" -gt 0 ] || { echo "usage: bash benchmarks/carry_fa4.sh receive PART..." >&2; exit 2; }
    mkdir -p "$DIR/parts"
    cp "$@" "$DIR/parts/"
    ls -l "$DIR/parts"
    ;;
  unpack)
    parts=("$DIR"/parts/*.part-*)
    [ -f "${parts[0]}" ] || { echo "unpack: no parts in $DIR/parts (receive them first)" >&2; exit 1; }
    rm -rf "$DIR/fa4"
    cat "${parts[@]}" | xz -d | tar -C "$DIR" -xf -
    PYTHONPATH="$(fa4_path)${PYTHONPATH:+:$PYTHONPATH}" "$PY" -c \
      "import flash_attn.cute as m; print('flash_attn.cute from', m.__file__)"
    ;;
  env)
    if [ -d "$DIR/fa4/flash_attn/cute" ]; then
      echo "export PYTHONPATH=$(fa4_path)\${PYTHONPATH:+:\$PYTHONPATH}"
    fi
    ;;
  *)
    echo "usage: bash benchmarks/carry_fa4.sh pack | receive PART... | unpack | env" >&2
    exit 2
    ;;
esac
