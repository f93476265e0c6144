"""TF32 arithmetic on the CPU: the reference interpreter with every matrix product's inputs rounded.

ggml's CUDA backend multiplies f32 matrices on TF32 tensor cores (read from ggml 0.20.2's source):
through cuBLAS for more than 16 columns, whose handles ggml sets to CUBLAS_TF32_TENSOR_OP_MATH, and
through its own mul_mat_f kernel (TF32 mma, which no setting turns off) for up to 16. TF32 keeps
f32's exponent and f16's 10 mantissa bits, so the "f32" policy cannot reach 1e-5 there. The bounds
that tests apply on such a device (target.TF32) are set from this emulation, measured on the CPU
by tests/unit/test_tf32_bounds.py; no GPU has confirmed them yet.
"""
from __future__ import annotations

import contextlib
import dataclasses

import numpy as np

from graphdsl.ops.linalg import _soft_max_ref
from graphdsl.ops.registry import REGISTRY


def tf32(a) -> np.ndarray:
    """Round to TF32 (10 explicit mantissa bits, ties to even), returned as float64."""
    bits = np.asarray(a, np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0xFFF + ((bits >> 13) & 1)) & 0xFFFFE000
    return bits.astype(np.uint32).view(np.float32).astype(np.float64)


def _attention(q, k, v, mask=None, *, scale):
    rep = q.shape[-3] // k.shape[-3]
    k, v = np.repeat(tf32(k), rep, axis=-3), np.repeat(tf32(v), rep, axis=-3)
    p = _soft_max_ref(tf32(q) @ np.swapaxes(k, -1, -2), mask, scale=scale)
    return np.swapaxes(tf32(p) @ v, -2, -3)


def _rounding(op: str, reference):
    if op == "flash_attn_ext":
        return _attention
    return lambda *arrays, **attrs: reference(*(tf32(a) for a in arrays), **attrs)


@contextlib.contextmanager
def emulate_tf32():
    """Within the block, the reference interpreter rounds matrix-product inputs to TF32."""
    ops = ("mul_mat", "conv_1d", "conv_2d", "flash_attn_ext")
    saved = {op: REGISTRY[op] for op in ops}
    try:
        for op, d in saved.items():
            REGISTRY[op] = dataclasses.replace(d, reference=_rounding(op, d.reference))
        yield
    finally:
        REGISTRY.update(saved)
