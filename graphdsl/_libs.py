"""Make CUDA libraries that pip wheels ship findable before the extension loads.

A CUDA build of libggml links cuBLAS; when cuBLAS comes from the `nvidia-cublas` wheel (no
system toolkit), its directory is on no loader path. Loading it once with RTLD_GLOBAL lets
libggml-cuda resolve it, as torch does for its own CUDA wheels. Nothing happens without them.
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
    """Load pip-installed cuBLAS globally when (and only when) the installed libggml is a CUDA build."""
    if not _libggml_has_cuda():
        return []
    roots = [*site.getsitepackages(), site.getusersitepackages(), *sys.path]
    loaded = []
    for name in ("libcublasLt.so.*", "libcublas.so.*"):  # Lt first: cuBLAS depends on it
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
