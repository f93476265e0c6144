#!/usr/bin/env bash
# Build here, on a CPU machine with nvcc, everything a GPU machine without network needs to run the
# backend suites on CUDA: libggml-python built with CUDA and graphdsl built against it (as wheels for
# the GPU machine's Python), and the runtime dependencies its image lacks. There, only wheels are
# installed (scripts/test_cuda_bundle.sh): no compiler time on the GPU's clock.
#
#   scripts/cuda_bundle.sh [OUTDIR]     (default .whl; 28 min on 2 cores, nearly all of it nvcc; 41 MB)
#     PY=python3.12    the GPU machine's Python version, for the wheels' tags
#     CUDA_ARCH=90     the GPU's architecture (90: H100/H200)
#
# The wheels assume the GPU machine already has numpy, pillow, networkx, tokenizers, pyyaml, tqdm,
# requests, pytest, torch, transformers and the nvidia-cublas 13 wheel (this project's device image
# has them); the reference-data packages (tiny.en, MiniLM) are too large to carry, so their tests skip.
set -euo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${1:-.whl}
PY=${PY:-python3.12}
BUILD_VENV=.venv-cudabuild
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
test -x "$BUILD_VENV/bin/python" || "$PY" -m venv "$BUILD_VENV"
"$BUILD_VENV/bin/pip" install -q scikit-build-core pybind11 "nvidia-cublas>=13,<14"
scripts/build_libggml.sh --venv "$BUILD_VENV" --wheel "$OUTDIR" cuda
"$BUILD_VENV/bin/pip" install -q --no-deps --force-reinstall "$OUTDIR"/libggml_python-*.whl
# graphdsl links ggml by soname: building it against the CUDA wheel's headers is enough.
rm -f "$OUTDIR"/graphdsl-*.whl
"$BUILD_VENV/bin/pip" wheel -q --no-deps --no-build-isolation -w "$OUTDIR" .
# The wheel stores each library three times (ggml's symlinks become copies): 121 MB for one CUDA
# architecture, over the 64 MiB a device call carries. The loader asks only for the sonames (.so.0).
"$BUILD_VENV/bin/pip" install -q wheel
unpacked=$(mktemp -d)
"$BUILD_VENV/bin/python" -m wheel unpack -d "$unpacked" "$OUTDIR"/libggml_python-*.whl
rm "$OUTDIR"/libggml_python-*.whl
find "$unpacked" \( -name 'lib*.so' -o -name 'lib*.so.*.*.*' \) -delete
"$BUILD_VENV/bin/python" -m wheel pack -d "$OUTDIR" "$unpacked"/libggml_python-*
rm -rf "$unpacked"
pyver=$("$BUILD_VENV/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
platforms=()
for n in 17 24 27 28 31 34; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
  "${platforms[@]}" --platform manylinux2014_x86_64 --platform any -d "$OUTDIR" \
  "gguf>=0.17" "soxr>=0.3" "soundfile>=0.12" cffi pycparser
ls -l "$OUTDIR"
du -sh "$OUTDIR"
