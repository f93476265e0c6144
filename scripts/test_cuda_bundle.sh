#!/usr/bin/env bash
# On a GPU machine without network: install the wheels scripts/cuda_bundle.sh built (into a
# separate folder, beside the machine's own torch and transformers), list ggml's devices, then run
# the backend suites (tests/backend_suites.txt) on CUDA. Extra arguments go to pytest (-s prints
# each op's error, -x stops at the first failure).
#
#   scripts/test_cuda_bundle.sh [--wheels DIR] [PYTEST_ARG...]      (DIR defaults to .whl)
#     GRAPHDSL_TEST_BACKEND=cpu   the same run on the CUDA build's CPU backend (a smoke test of the
#                                 bundle on a machine without a GPU)
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=.whl
if [ "${1:-}" = --wheels ]; then WHEELS=$2; shift 2; fi
PY=${PY:-python3}
export GRAPHDSL_TEST_BACKEND=${GRAPHDSL_TEST_BACKEND:-cuda}
SITE=${SITE:-/tmp/graphdsl-site}
"$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" "$WHEELS"/*.whl
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
# -P: the checkout's graphdsl/ (sources, no extension) must not shadow the installed package.
"$PY" -P - <<'EOF'
import graphdsl
devs = graphdsl.devices()
for d in devs:
    print(f"{d['name']:12} {d['type']:6} {d['description']}")
import os
if os.environ["GRAPHDSL_TEST_BACKEND"].lower().startswith("cuda"):
    assert any(d["backend"] == "CUDA" for d in devs), "no CUDA device: is this a GPU machine with a driver?"
EOF
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
# shellcheck disable=SC2046
"$PY" -P -m pytest -q -rs -p no:cacheprovider "$@" $(cat tests/backend_suites.txt)
