"""`graphdsl devices` and `graphdsl rpc-server`: this machine's ggml devices, listed or served."""
from __future__ import annotations

from .common import show


def cmd_devices(args) -> int:
    import graphdsl
    from graphdsl.backends.ggml import resolve_devices

    from ..inspect.table import Table, nbytes
    t = Table(["name", "type", "backend", "memory free / total", "description"], title="ggml devices")
    for d in graphdsl.devices():
        mem = f"{nbytes(d.get('memory_free', 0))} / {nbytes(d.get('memory_total', 0))}"
        t.add(d["name"], d["type"], d.get("backend", ""), mem, d.get("description", ""))
    for d in graphdsl.devices():
        if d.get("features"):  # the build: a portable wheel (AVX2) or one made for this machine
            t.notes.append(f"{d['name']} features: " + " ".join(k if v in ("1", "") else f"{k}={v}"
                                                               for k, v in d["features"].items()))
    t.notes.append(f'backend="auto" runs on: {" -> ".join(resolve_devices("auto"))} (accelerators first, CPU last)')
    show(t)
    return 0


def cmd_rpc_server(args) -> int:
    from graphdsl.backends.rpc import serve_rpc
    # blocks until the process ends (ggml prints the endpoint); a libggml without RPC raises ValueError,
    # a non-loopback host without --allow-remote too (before anything listens); with it, a warning
    serve_rpc(args.host, args.port, args.threads, args.device or "", args.cache, allow_remote=args.allow_remote)
    return 0
