"""The op registry: each op declared once, with its shape rule, NumPy reference and FLOPs.

Backends are interpreters over this registry: `graphdsl.backends.reference` runs `reference`,
`graphdsl.backends.ggml` keeps a lowering table keyed by the same names, and a test fails when
an op lacks any of them.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import dtypes as dt


class ShapeError(Exception):
    """Raised by shape rules; the graph re-raises it as ValueError naming op and node."""


@dataclass(frozen=True)
class OpDef:
    name: str
    infer: Callable[..., tuple[tuple[int, ...], dt.DType]]  # (input nodes, **attrs) -> (shape, dtype)
    reference: Callable[..., np.ndarray]  # (*arrays, **attrs) -> array, NumPy order
    flops: Callable[..., int]  # (out shape, [in shapes], **attrs) -> FLOPs
    doc: str = ""


REGISTRY: dict[str, OpDef] = {}
# Public builders (`ops.add`, `t.gelu()` ...) by name; more than one may map to one op.
OPS_API: dict[str, Callable[..., Any]] = {}


def register(name: str, infer, reference, flops, doc: str = "") -> OpDef:
    if name in REGISTRY:
        raise RuntimeError(f"op {name!r} registered twice")
    op = OpDef(name, infer, reference, flops, doc)
    REGISTRY[name] = op
    return op


def api(fn):
    """Expose a builder as `ops.<name>` and as a Tensor method."""
    OPS_API[fn.__name__] = fn
    return fn


# -- helpers shared by the op files --------------------------------------------------------
def numel(shape: Sequence[int]) -> int:
    return int(np.prod(shape, dtype=np.int64)) if len(shape) else 1


def need(cond: bool, msg: str) -> None:
    if not cond:
        raise ShapeError(msg)


INT32_MAX = 2**31 - 1  # ggml takes strides, paddings, kernels and pads as C ints


def need_int32(values, what: str) -> None:
    need(all(abs(v) <= INT32_MAX for v in values), f"{what} {tuple(values)} must fit a 32-bit int")


def need_dtype(node, allowed: Sequence[dt.DType], what: str) -> None:
    if node.dtype not in allowed:
        names = "/".join(d.name for d in allowed)
        raise ShapeError(f"{what} must be {names}, got {node.dtype.name}")


FLOAT = (dt.f32,)  # activations that every op accepts; f16/bf16 flow through cast and weights
ANY_WEIGHT = tuple(d for d in dt.DTYPES.values() if d.is_float)


def can_repeat(small: Sequence[int], big: Sequence[int]) -> bool:
    """ggml_can_repeat in NumPy order: right-aligned, each dim of big a multiple of small's."""
    if len(small) > len(big):
        return False
    pad = (1,) * (len(big) - len(small)) + tuple(small)
    return all(b % s == 0 for s, b in zip(pad, big))


def tile_to(x: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """ggml_repeat semantics: tile (modulo indexing), not NumPy's size-1 broadcasting only."""
    x = x.reshape((1,) * (len(shape) - x.ndim) + x.shape)
    reps = tuple(t // s for s, t in zip(x.shape, shape))
    return np.tile(x, reps) if any(r != 1 for r in reps) else x


def as_f32(x: np.ndarray, d: dt.DType | None = None) -> np.ndarray:
    if d is dt.bf16 or (d is None and x.dtype == np.uint16):
        return dt.bf16_to_f32(x)
    return x.astype(np.float32, copy=False)
