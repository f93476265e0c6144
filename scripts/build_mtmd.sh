#!/usr/bin/env bash
# llama.cpp's own mtmd as a reference (tests/support/mtmd_ref.py, benchmarks/bench_mtmd.py): build
# llama-cpp-python from its PyPI sdist (it vendors llama.cpp and builds libmtmd) into its own venv.
# Never a graphdsl dependency. ~10 min on 2 cores, so the wheel is kept in a cache keyed by the
# version, the CMake options and this CPU's flags (a native build runs only where it was built).
#
#   scripts/build_mtmd.sh [--venv DIR]
set -euo pipefail
VENV=.venv-mtmd
while [ $# -gt 0 ]; do
  case "$1" in
    --venv) VENV="$2"; shift ;;
    *) echo "usage: $0 [--venv DIR]" >&2; exit 2 ;;
  esac
  shift
done
VERSION=0.3.36
PY=${PY:-python3}
# Only libllama/libggml/libmtmd: no tools, examples, tests, server, curl or openssl.
ARGS="-DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
-DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF -DMTMD_VIDEO=OFF"
key=$( { echo "$VERSION $ARGS"; grep -m1 '^flags' /proc/cpuinfo || true; } | sha256sum | cut -c1-16)
CACHE=${GRAPHDSL_MTMD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/graphdsl/mtmd-$key}
stamp="$VENV/.mtmd-$key"
if [ -e "$stamp" ] && "$VENV/bin/python" -c 'import llama_cpp.mtmd_cpp' 2>/dev/null; then
  exit 0
fi
test -x "$VENV/bin/python" || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q numpy pillow
if ! ls "$CACHE"/llama_cpp_python-"$VERSION"-*.whl >/dev/null 2>&1; then
  "$VENV/bin/pip" install -q "scikit-build-core>=0.9.2" cmake ninja
  mkdir -p "$CACHE.tmp"
  echo "building llama-cpp-python $VERSION from its sdist (about 10 minutes on 2 cores)" >&2
  CMAKE_ARGS="$ARGS" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
    "$VENV/bin/pip" wheel -q --no-cache-dir --no-deps --no-build-isolation \
    --no-binary llama-cpp-python -w "$CACHE.tmp" "llama-cpp-python==$VERSION"
  rm -rf "$CACHE" && mv "$CACHE.tmp" "$CACHE"
fi
# Its runtime deps (typing-extensions, diskcache, jinja2) come from PyPI as usual.
"$VENV/bin/pip" install -q --force-reinstall --no-deps "$CACHE"/llama_cpp_python-"$VERSION"-*.whl
"$VENV/bin/pip" install -q "typing-extensions>=4.5" "diskcache>=5.6.1" "jinja2>=2.11.3"
"$VENV/bin/python" -c 'import llama_cpp.mtmd_cpp'
touch "$stamp"
