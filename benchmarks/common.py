"""Timing, machine description and Markdown tables shared by the benchmarks."""
from __future__ import annotations

import datetime
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable


def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu} ({cpu_features()}), {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def cpu_features() -> str:
    """The SIMD/matrix features that decide which kernels run (ggml's, oneDNN's, torch's)."""
    want = ["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile"]
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(next(line for line in f if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        return "features unknown"
    have = [w for w in want if w in flags]
    return " ".join(have) + ("; no AMX" if "amx_tile" not in flags else "")


def versions() -> str:
    import importlib.metadata as md
    names = ["graphdsl", "libggml-python", "numpy", "torch", "transformers"]
    out = []
    for n in names:
        try:
            out.append(f"{n} {md.version(n)}")
        except md.PackageNotFoundError:
            pass
    return ", ".join(out)


def today() -> str:
    return datetime.date.today().isoformat()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def alternate(fns: dict[str, Callable[[], object]], repeat: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call, running the contenders in turn so drifts hit all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def table(headers: list[str], rows: list[list[object]]) -> str:
    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)
