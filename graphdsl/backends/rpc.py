"""ggml's RPC server, served from this process or from a child process.

Clients reach a server with backend="rpc://HOST:PORT" (see ggml.resolve_devices). Both ends need
a libggml built with GGML_RPC (scripts/build_libggml.sh rpc).

ggml's protocol has no authentication and no encryption: whoever reaches the port can allocate,
read and write the served device's memory and run graphs on it. So a server binds only loopback
addresses (127.0.0.0/8, ::1, "localhost") unless the caller passes allow_remote=True, and then
warns on stderr.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
import tempfile
import time
import warnings

from graphdsl import _ggml


def is_loopback(host: str) -> bool:
    """True for "localhost" and addresses in 127.0.0.0/8 or ::1 (also IPv4-mapped); False for
    anything else, wildcard addresses ("0.0.0.0", "::", "") and other host names included."""
    h = host.strip()
    if h.lower() == "localhost":
        return True
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    try:
        ip = ipaddress.ip_address(h)
    except ValueError:
        return False  # a host name may resolve anywhere
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def check_host(host: str, allow_remote: bool) -> bool:
    """Raise ValueError for a non-loopback `host` unless allow_remote; returns whether it is remote."""
    if not isinstance(host, str):
        raise ValueError(f"rpc server: host must be a string, got {type(host).__name__}")
    if is_loopback(host):
        return False
    if not allow_remote:
        raise ValueError(f"refusing to serve ggml's unauthenticated RPC protocol on {host!r}, which is not a "
                         "loopback address: anyone who reaches it can use this device; pass --allow-remote "
                         "(allow_remote=True) on a trusted network only")
    return True


def remote_warning(host: str, port: int) -> str:
    where = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
    return (f"graphdsl rpc-server: warning: serving ggml's RPC protocol on {where} without authentication "
            "or encryption; anyone who can reach this port can run graphs on this device and read or write "
            "its memory. Use it on a trusted network only.")


def serve_rpc(host: str = "127.0.0.1", port: int = 50052, n_threads: int | None = None, device: str = "",
              cache: str | os.PathLike | None = None, *, allow_remote: bool = False) -> None:
    """Serve a local ggml device over ggml's RPC protocol; blocks until the process ends.

    One client is served at a time (ggml's server); others wait until it disconnects. With
    `cache`, tensors over 10 MiB are kept in that folder by hash, so a client uploading the same
    weights again (a new process, the same model) sends only their hashes.

    A host that is not loopback raises ValueError unless allow_remote=True, which prints a
    warning to stderr first (the protocol has no authentication).
    """
    remote = check_host(host, allow_remote)
    if not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"rpc server: port {port!r} is not a TCP port (1..65535)")
    if n_threads is not None and n_threads < 1:
        raise ValueError(f"rpc server: n_threads must be >= 1, got {n_threads}")
    if not _ggml.has_backend("RPC"):  # before the warning: nothing will listen
        raise ValueError("this libggml has no RPC backend; rebuild it with scripts/build_libggml.sh rpc")
    if remote:
        print(remote_warning(host, port), file=sys.stderr, flush=True)
    cache_dir = ""
    if cache is not None:
        os.makedirs(cache, exist_ok=True)
        cache_dir = os.fspath(cache)
    _ggml.rpc_start_server(f"{host}:{port}", n_threads or os.cpu_count() or 1, device, cache_dir)


def spawn_rpc_server(host: str = "127.0.0.1", port: int = 0, *, n_threads: int | None = None,
                     device: str = "", cache: str | os.PathLike | None = None,
                     timeout: float = 10.0, allow_remote: bool = False) -> tuple[subprocess.Popen, str]:
    """Start `graphdsl rpc-server` in a child process; returns (process, "host:port") once it listens.

    port 0 picks a free port. On Linux the child is terminated when this process dies, so it
    outlives every executor that uses it. Stop it with process.kill() (after `del` of the
    executors that use it, or at exit). A non-loopback host needs allow_remote=True (see serve_rpc).
    """
    remote = check_host(host, allow_remote)
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
    if remote:
        args.append("--allow-remote")
        warnings.warn(remote_warning(host, port), stacklevel=2)  # the child's own warning goes to its log
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
