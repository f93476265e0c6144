"""The oneDNN matmul backend (cpp/onednn_backend.cpp): load it into ggml's registry when it is there.

It is a library of its own, built only where oneDNN was found (`make install` puts the
`onednn-cpu-gomp` wheel in the venv), and loaded on first use of the device list, so graphdsl
imports and runs without it. `GRAPHDSL_ONEDNN=0` keeps it unloaded (ggml's kernels for every op).
Once loaded, backend="cpu" runs the large f32/bf16 matrix products through it and every other op
on ggml's CPU backend, in the same host memory.
"""
from __future__ import annotations

import ctypes
import glob
import os
import sys
import threading

from graphdsl import _ggml

NAME = "ONEDNN"
_LIB = "libgraphdsl_onednn.so"
_lock = threading.Lock()
_state: dict[str, object] = {}


def library_path() -> str | None:
    """Where the backend library is (beside the extension), or None if this build has none."""
    path = os.path.join(os.path.dirname(_ggml.__file__), _LIB)
    return path if os.path.exists(path) else None


def _preload_dnnl() -> None:
    # The library's RPATH finds libdnnl in the venv's lib/; an editable or relocated install may
    # not match that layout, so load it from the interpreter's prefix first if it is there.
    for hit in sorted(glob.glob(os.path.join(sys.prefix, "lib", "libdnnl.so.*"))):
        try:
            ctypes.CDLL(hit, mode=ctypes.RTLD_GLOBAL)
            return
        except OSError:
            continue


def enabled() -> bool:
    return os.environ.get("GRAPHDSL_ONEDNN", "1").strip().lower() not in ("0", "off", "false", "no")


def load() -> bool:
    """Register the backend with ggml once per process; True when its device is available."""
    with _lock:
        if "loaded" in _state:
            return bool(_state["loaded"])
        ok = False
        path = library_path()
        if path and enabled() and not _ggml.has_backend(NAME):
            # OpenMP workers that spin after a product would take a core from ggml's CPU threads,
            # which run the next ops; sleeping workers cost a wake-up per product instead.
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
            _preload_dnnl()
            ok = _ggml.load_backend(path)
        _state["loaded"] = ok or _ggml.has_backend(NAME)
        _state["error"] = None if _state["loaded"] else (
            "disabled by GRAPHDSL_ONEDNN" if path and not enabled() else
            "not built (oneDNN was not found at build time)" if not path else "could not be loaded")
        return bool(_state["loaded"])


def status() -> str:
    """'loaded', or why not."""
    load()
    return "loaded" if _state["loaded"] else str(_state["error"])
