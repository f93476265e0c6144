"""ggml's RPC server, served from this process or from a child process.

Clients reach a server with backend="rpc://HOST:PORT" (see ggml.resolve_devices). Both ends need
a libggml built with GGML_RPC (scripts/build_libggml.sh rpc).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time

from graphdsl import _ggml


def serve_rpc(host: str = "127.0.0.1", port: int = 50052, n_threads: int | None = None, device: str = "",
              cache: str | os.PathLike | None = None) -> None:
    """Serve a local ggml device over ggml's RPC protocol; blocks until the process ends.

    One client is served at a time (ggml's server); others wait until it disconnects. With
    `cache`, tensors over 10 MiB are kept in that folder by hash, so a client uploading the same
    weights again (a new process, the same model) sends only their hashes.
    """
    cache_dir = ""
    if cache is not None:
        os.makedirs(cache, exist_ok=True)
        cache_dir = os.fspath(cache)
    _ggml.rpc_start_server(f"{host}:{port}", n_threads or os.cpu_count() or 1, device, cache_dir)


def spawn_rpc_server(host: str = "127.0.0.1", port: int = 0, *, n_threads: int | None = None,
                     device: str = "", cache: str | os.PathLike | None = None,
                     timeout: float = 10.0) -> tuple[subprocess.Popen, str]:
    """Start `graphdsl rpc-server` in a child process; returns (process, "host:port") once it listens.

    port 0 picks a free port. On Linux the child is terminated when this process dies, so it
    outlives every executor that uses it. Stop it with process.kill() (after `del` of the
    executors that use it, or at exit).
    """
    if not _ggml.has_backend("RPC"):
        raise ValueError("this libggml has no RPC backend; rebuild it with scripts/build_libggml.sh rpc")
    if not port:
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
    args = [sys.executable, "-m", "graphdsl.cli", "rpc-server", "--host", host, "--port", str(port)]
    if n_threads:
        args += ["--threads", str(n_threads)]
    if device:
        args += ["--device", device]
    if cache is not None:
        args += ["--cache", os.fspath(cache)]
    log = tempfile.TemporaryFile()
    # cwd outside any checkout: `-m graphdsl` must import the installed package, not a source tree.
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=tempfile.gettempdir(),
                            preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"graphdsl rpc-server exited with {proc.returncode}: {log.read()[-2000:].decode()}")
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                return proc, f"{host}:{port}"
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"graphdsl rpc-server did not listen on {host}:{port} within {timeout} s")


def _die_with_parent() -> None:
    import ctypes
    import signal
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
