"""Make CUDA libraries that pip wheels ship findable before the extension loads.

A CUDA build of libggml links the CUDA runtime and cuBLAS; when they come from the
`nvidia-cuda-runtime` and `nvidia-cublas` wheels (no system toolkit), their directories are on no
loader path. Loading them once with RTLD_GLOBAL lets libggml-cuda resolve them, as torch does for
its own CUDA wheels. Nothing happens without them.
"""
from __future__ import annotations

import ctypes
import glob
import os
import site
import sys


def _libggml_has_cuda() -> bool:
    try:
        import libggml
    except ImportError:
        return False
    base = os.path.dirname(libggml.__file__)
    return bool(glob.glob(os.path.join(base, "lib*", "libggml-cuda.so*")))


def preload_pip_cuda() -> list[str]:
    """Load pip-installed CUDA runtime and cuBLAS globally when (and only when) libggml is a CUDA build."""
    if not _libggml_has_cuda():
        return []
    roots = [*site.getsitepackages(), site.getusersitepackages(), *sys.path]
    loaded = []
    for name in ("libcudart.so.*", "libcublasLt.so.*", "libcublas.so.*"):  # dependencies first
        for root in roots:
            hits = sorted(glob.glob(os.path.join(root, "nvidia", "*", "lib", name)))
            if hits:
                try:
                    ctypes.CDLL(hits[0], mode=ctypes.RTLD_GLOBAL)
                    loaded.append(hits[0])
                except OSError:
                    pass
                break
    return loaded
