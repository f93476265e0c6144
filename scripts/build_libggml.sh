#!/usr/bin/env bash
# Rebuild libggml-python from its sdist with other ggml options, into a venv's site-packages.
# graphdsl's extension links ggml by soname, so it keeps working without a rebuild.
#
#   scripts/build_libggml.sh [--venv DIR] [--wheel OUTDIR] FEATURE...
#     --wheel  build a wheel into OUTDIR with the venv's pip instead of installing it (to carry the
#              build to another machine: scripts/cuda_bundle.sh)
#     native   GGML_NATIVE=ON + GGML_LLAMAFILE=ON (tuned CPU: this machine's SIMD, llamafile sgemm)
#     blas     GGML_BLAS=ON with OpenBLAS (apt: libopenblas-dev) - a second backend on CPU-only machines
#     rpc      GGML_RPC=ON (ggml's own remote backend; `graphdsl rpc-server`)
#     cuda     GGML_CUDA=ON (needs nvcc; cuBLAS from the toolkit or the nvidia-cublas wheel in the
#              venv; set CUDA_ARCH, default 90 = Hopper)
#     metal    GGML_METAL=ON (macOS only; built, not verified on this project's machines)
set -euo pipefail
VENV=.venv
WHEEL_DIR=
VERSION=0.20.2.post1
defines=()
while [ $# -gt 0 ]; do
  case "$1" in
    --venv) VENV="$2"; shift ;;
    --wheel) WHEEL_DIR="$2"; shift ;;
    native)
      defines+=(-C cmake.define.GGML_NATIVE=ON -C cmake.define.GGML_LLAMAFILE=ON)
      # With AVX512-FP16 (Sapphire Rapids and later), -march=native makes ggml's f16 dot product
      # accumulate in f16 (simd-mappings.h, _mm512_fmadd_ph): f16-weight products whose inner size
      # llamafile's sgemm declines came out 7.7e-4 off instead of 1e-7 (tests/ops/test_precision_weights.py).
      # GCC keeps an explicit -mno-* over what -march enables; f16 <-> f32 conversions need only F16C.
      if grep -qw avx512_fp16 /proc/cpuinfo 2>/dev/null; then
        defines+=(-C "cmake.define.CMAKE_C_FLAGS=-mno-avx512fp16" -C "cmake.define.CMAKE_CXX_FLAGS=-mno-avx512fp16")
      fi ;;
    blas)
      if ! [ -e /usr/include/x86_64-linux-gnu/openblas-pthread/cblas.h ] && ! ls /usr/include/*/cblas.h /usr/include/cblas.h >/dev/null 2>&1; then
        echo "blas needs OpenBLAS headers: apt-get install -y libopenblas-dev" >&2
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
          apt-get install -y -q libopenblas-dev >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q libopenblas-dev >/dev/null; }
        else
          exit 1
        fi
      fi
      defines+=(-C cmake.define.GGML_BLAS=ON -C cmake.define.GGML_BLAS_VENDOR=OpenBLAS) ;;
    rpc) defines+=(-C cmake.define.GGML_RPC=ON) ;;
    cuda)
      defines+=(-C cmake.define.GGML_CUDA=ON -C cmake.define.GGML_CUDA_NO_VMM=ON
                -C "cmake.define.CMAKE_CUDA_ARCHITECTURES=${CUDA_ARCH:-90}")
      # A toolkit without cuBLAS (nvcc alone): use the nvidia-cublas wheel's library and headers,
      # installed in the venv or in a site-packages it sees (--system-site-packages).
      cublas=$("$VENV/bin/python" -c 'import glob, os, sys
hits = [h for p in sys.path for h in sorted(glob.glob(os.path.join(p, "nvidia", "*", "lib", "libcublas.so.*")))]
print(hits[0] if hits else "")')
      if [ -n "$cublas" ]; then
        nv=$(dirname "$(dirname "$cublas")")
        lt=$(ls "$nv"/lib/libcublasLt.so.* | head -n 1)
        defines+=(-C "cmake.define.CUDA_cublas_LIBRARY=$cublas" -C "cmake.define.CUDA_cublasLt_LIBRARY=$lt"
                  -C "cmake.define.CMAKE_CUDA_FLAGS=-I$nv/include" -C "cmake.define.CMAKE_CXX_FLAGS=-I$nv/include")
      fi ;;
    metal) defines+=(-C cmake.define.GGML_METAL=ON -C cmake.define.GGML_METAL_EMBED_LIBRARY=ON) ;;
    *) echo "unknown feature: $1" >&2; exit 2 ;;
  esac
  shift
done
[ ${#defines[@]} -gt 0 ] || { sed -n '2,14p' "$0"; exit 2; }
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
action=(install --force-reinstall)
[ -z "$WHEEL_DIR" ] || action=(wheel -w "$WHEEL_DIR")
# --no-cache-dir: pip would otherwise reuse a wheel built with other options.
"$VENV/bin/pip" "${action[@]}" -q --no-cache-dir --no-deps \
  --no-binary libggml-python "${defines[@]}" "libggml-python==$VERSION"
[ -z "$WHEEL_DIR" ] || exit 0
VENV_ABS=$(cd "$VENV" && pwd)
(cd / && "$VENV_ABS/bin/python" -c "import graphdsl; print('\n'.join(f\"{d['name']:12} {d['type']:6} {d['description']}\" for d in graphdsl.devices()))") 2>/dev/null \
  || echo "libggml-python rebuilt in $VENV; install graphdsl there to list its devices"
