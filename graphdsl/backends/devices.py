"""Which ggml devices a `backend=` string means (a DevicePlan), and how many CPU threads a run may ask for."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from graphdsl import _ggml

from . import onednn


def devices() -> list[dict]:
    """What ggml's backend registry reports: name, description, type, memory, backend."""
    onednn.load()
    return _ggml.devices()


def resolve_devices(backend: str) -> list[str]:
    """Map `backend=` to ggml device names, accelerators first and CPU last.

    "cpu" -> the host: oneDNN's matmul backend for large products where it is loaded (see
    backends/onednn.py), then ggml's CPU backend; "ggml-cpu" -> ggml's CPU backend alone; "auto" -> every local GPU/accelerator the registry has, then CPU;
    "rpc://host:port" -> the devices of ggml's RPC server there, then CPU; otherwise a device
    name ("CUDA0", "BLAS") or a backend family ("cuda", "metal", "blas") + CPU.
    """
    if not isinstance(backend, str):
        raise ValueError(f"backend must be a string such as 'cpu', 'auto', 'cuda' or a device name, "
                         f"got {backend!r}")
    devs = devices()
    names = [d["name"] for d in devs]
    cpu = next((d["name"] for d in devs if d["type"] == "cpu"), None)
    if cpu is None:
        raise RuntimeError("ggml reports no CPU device")
    key = backend.lower()
    if key.startswith("rpc://"):
        endpoint = backend[len("rpc://"):]
        host, _, port = endpoint.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"backend={backend!r}: expected rpc://HOST:PORT with a TCP port (1..65535)")
        return [*_ggml.rpc_add_server(endpoint), cpu]
    if key == "cpu":
        host = [d["name"] for d in devs if d["name"] == onednn.NAME]
        return [*host, cpu]
    if key == "ggml-cpu":
        return [cpu]
    if key == "auto":
        # local devices only: an RPC server registered earlier in this process is used when named
        accel = [d["name"] for d in devs if d["type"] in ("gpu", "igpu") and d["backend"] != "RPC"]
        accel += [d["name"] for d in devs if d["type"] == "accel"]
        return [*accel, cpu]
    chosen = [d["name"] for d in devs if d["type"] != "cpu" and
              (d["name"].lower() == key or d["backend"].lower() == key or d["name"].lower().startswith(key))]
    if not chosen:
        raise ValueError(f"no ggml device matches backend={backend!r}; available: {', '.join(names)} "
                         f"(a CUDA or Metal build of libggml-python adds devices; see the README)")
    return [*chosen, cpu]


@dataclass(frozen=True)
class DevicePlan:
    """What a `backend=` string means, decided once: the executor and its placement report read
    these facts instead of testing device names.

    oneDNN is the case that needs them: its device runs only the large products, in host memory,
    and ggml's CPU backend runs everything else, so the pair is one host device called "cpu" and
    a node on the CPU is by design, not a fallback (backends/onednn.py).
    """

    devices: tuple[str, ...]  # ggml device names: the primary first, ggml's CPU last
    name: str  # what the executor reports as its backend ("cpu", "cuda0+cpu", ...)
    on_host: bool  # the primary works on the CPU's buffers: GGUF weights map in place, f32 attention is fused
    cpu_partner: bool  # the CPU shares the primary's work (its nodes are no fallback); keep its threads alive
    remote: bool  # a device is an RPC server's: buffers there are abandoned at exit, not freed

    @property
    def home(self) -> frozenset[int]:
        """Indices of the devices whose nodes count as on the primary (strict placement, fallbacks)."""
        return frozenset({0, len(self.devices) - 1} if self.cpu_partner else {0})


def plan_devices(backend: str) -> DevicePlan:
    """The DevicePlan of `backend=` (see resolve_devices for the strings)."""
    names = tuple(resolve_devices(backend))
    partner = names[0] == onednn.NAME
    return DevicePlan(names, "cpu" if partner else "+".join(names).lower(),
                      on_host=partner or len(names) == 1, cpu_partner=partner,
                      remote=any(n.startswith("RPC") for n in names))


MAX_THREADS = 512  # GGML_MAX_N_THREADS: ggml's thread pool holds no more


def check_threads(n_threads) -> int:
    """n_threads as given, or all cores; refused outside 1..min(512, 4 x cores): thousands of
    threads spinning on ggml's barriers make a compute take minutes, and ggml has room for 512."""
    cores = os.cpu_count() or 1
    if n_threads is None:
        return cores
    limit = min(MAX_THREADS, 4 * cores)
    if isinstance(n_threads, bool) or not isinstance(n_threads, (int, np.integer)) or not 1 <= n_threads <= limit:
        raise ValueError(f"n_threads must be an integer in 1..{limit} (4 x the {cores} cores, at most "
                         f"{MAX_THREADS}), got {n_threads!r}")
    return int(n_threads)
