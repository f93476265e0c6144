"""What this CPU's kernels can do, for the skip conditions of ISA-dependent tests.

ggml's CPU backend and our oneDNN backend report it through ``graphdsl.devices()``: the CPU's
SIMD levels and LLAMAFILE ("1"/"0"), and oneDNN's dispatch ISA with whether it has a JIT kernel
(not its slow reference one) for f32 and bf16 products; those are what the backends themselves
decide by. A 2-core AMD EPYC Zen 3 has AVX2 only: oneDNN claims no bf16 product there.
``make test-isa`` runs the ISA-dependent suites so on any x86 machine (PyPI's portable AVX2
libggml, oneDNN capped with ONEDNN_MAX_CPU_ISA=AVX2).
"""
from __future__ import annotations

import functools

import pytest


@functools.cache
def features(device: str) -> dict[str, str]:
    """The features a device reports ({} when there is no such device, e.g. no oneDNN build)."""
    import graphdsl
    return next((dict(d.get("features") or {}) for d in graphdsl.devices() if d["name"] == device), {})


def onednn_kernel(wtype: str) -> pytest.MarkDecorator:
    """Skip unless oneDNN has a fast kernel for products with ``wtype`` ("f32", "bf16") weights here."""
    f = features("ONEDNN")
    return pytest.mark.skipif(f.get(wtype.upper()) != "1",
                              reason=f"oneDNN has no {wtype} matmul kernel on this CPU (ISA {f.get('ISA', '?')}, "
                                     f"{wtype.upper()}={f.get(wtype.upper(), '?')}): ggml keeps those products")
