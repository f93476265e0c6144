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


def preload_pip_cuda() -> list[str]:
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
