#!/usr/bin/env bash
# Builds oomlab with the `cuda` feature into target/cuda (release), on any x86-64 Linux machine,
# with or without a GPU and with or without a system CUDA toolkit:
#   - nvcc on PATH (or $CUDA_HOME/bin/nvcc): that toolkit is used;
#   - otherwise NVIDIA's CUDA 13.0 compiler and libraries are fetched from PyPI wheels into
#     target/cuda-toolkit (about 650 MB once), with a generated link-time stub of libcuda.so
#     (the driver library comes from the GPU machine's driver at run time).
# CUDA_COMPUTE_CAP is taken from nvidia-smi when a GPU is present, else from the first argument
# (90 = H100/H200, 80 = A100, 86 = RTX 30xx, 89 = RTX 40xx/L4, 75 = T4), default 90.
#
# usage: scripts/build-cuda.sh [COMPUTE_CAP]
# then:  LD_LIBRARY_PATH=<toolkit>/lib target/cuda/release/oomlab devices
#        (the script prints the exact line at the end; see also scripts/gpu-check.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

cap=${1:-}
if [ -z "$cap" ] && command -v nvidia-smi >/dev/null 2>&1; then
  cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n1 | tr -d '. ')
fi
cap=${cap:-90}
case "$cap" in (*[!0-9]*|'') echo "build-cuda: compute capability '$cap' is not a number such as 90" >&2; exit 2;; esac
export CUDA_COMPUTE_CAP=$cap

# Versions verified to build candle 0.11 against a CUDA 13.0 (R580) driver; 13.1+ PTX is refused
# by that driver. See shared/CUDA-BUILD.md.
wheels=(
  nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88
  nvidia-cuda-runtime==13.0.88 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88
  nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35
)

nvcc_bin=""
if [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ]; then
  nvcc_bin=$CUDA_HOME/bin/nvcc
elif command -v nvcc >/dev/null 2>&1; then
  nvcc_bin=$(command -v nvcc)
  export CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$(readlink -f "$nvcc_bin")")")}
fi

if [ -n "$nvcc_bin" ]; then
  echo "build-cuda: using the system toolkit at $CUDA_HOME ($($nvcc_bin --version | tail -n1))"
  prefix=$CUDA_HOME
else
  base=$root/target/cuda-toolkit
  prefix=$base/nvidia/cu13
  if [ ! -x "$prefix/bin/nvcc" ] || [ ! -f "$prefix/lib/stubs/libcuda.so" ]; then
    echo "build-cuda: no nvcc found; fetching the CUDA 13.0 wheels from PyPI into $base"
    mkdir -p "$base/wheels"
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
      --platform manylinux_2_27_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
      --python-version 3.11 -d "$base/wheels" "${wheels[@]}"
    for w in "$base"/wheels/*.whl; do
      python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$w" "$base"
    done
    chmod -R u+x "$prefix/bin" "$prefix/nvvm/bin" 2>/dev/null || true
    # The wheels ship versioned libraries only; the linker wants the plain names.
    for name in cublas cublasLt cudart curand nvrtc; do
      so=$(ls "$prefix/lib/lib$name.so."* 2>/dev/null | sort | head -n1 || true)
      [ -n "$so" ] && ln -sf "$(basename "$so")" "$prefix/lib/lib$name.so"
    done
    # libcuda.so (the driver API) is in no wheel: a link-time stub with every cu* function of
    # cuda.h, each returning CUDA_ERROR_NO_DEVICE, so an accidental load fails cleanly.
    mkdir -p "$prefix/lib/stubs"
    {
      for ptds in "" "-DCUDA_API_PER_THREAD_DEFAULT_STREAM=1"; do
        echo '#include <cuda.h>' | gcc -E $ptds -I"$prefix/include" -x c - 2>/dev/null
      done
      printf 'CUresult cuProfilerStart(void);\nCUresult cuProfilerStop(void);\n'
    } | grep -oE 'CUresult[[:space:]]+(__attribute__\(\(visibility\("default"\)\)\)[[:space:]]+)?cu[A-Za-z0-9_]+[[:space:]]*\(' \
      | grep -oE 'cu[A-Za-z0-9_]+[[:space:]]*\($' | tr -d ' (' | sort -u \
      | awk '{ printf "int %s(void) { return 100; }\n", $1 }' > "$base/libcuda_stub.c"
    count=$(wc -l < "$base/libcuda_stub.c")
    [ "$count" -gt 300 ] || { echo "build-cuda: only $count driver functions found in cuda.h; the stub would be incomplete" >&2; exit 1; }
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$prefix/lib/stubs/libcuda.so" "$base/libcuda_stub.c"
    echo "build-cuda: toolkit ready ($count driver entry points in the link stub)"
  fi
  export CUDA_HOME=$prefix NVCC=$prefix/bin/nvcc PATH=$prefix/bin:$PATH
  export LIBRARY_PATH=$prefix/lib:$prefix/lib/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}
fi
export CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-13000}

echo "build-cuda: cargo build --release --features cuda (CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP) into target/cuda"
cargo build --release --features cuda --target-dir target/cuda
bin=$root/target/cuda/release/oomlab
strip "$bin" 2>/dev/null || true
echo "build-cuda: built $bin ($(du -h "$bin" | cut -f1))"
echo "build-cuda: run it on a GPU machine with the CUDA 13 libraries on the library path, e.g."
echo "  LD_LIBRARY_PATH=$prefix/lib $bin devices"
