"""The op registry: each op declared once, with its shape rule, NumPy reference, FLOPs, kind
and layout facts.

Backends are interpreters over this registry: `graphdsl.backends.reference` runs `reference`,
`graphdsl.backends.ggml` runs `lowerings["ggml"]`, and a test fails when an op lacks any of them.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import dtypes as dt


class ShapeError(Exception):
    """Raised by shape rules; the graph re-raises it as ValueError naming op and node."""


# What an op does, for drawings and summaries (inspect/): each op declares one.
KINDS = ("matmul", "conv", "norm", "activation", "arithmetic", "gather/reduce", "layout", "constant")


@dataclass(frozen=True)
class OpDef:
    """Everything about one op, declared once by `register` in its op file.

    `lowerings` is the one field filled elsewhere: each backend adds its lowering under its own
    name when it is imported (`graphdsl.backends.ggml_lower.lowers`), as JAX registers a
    primitive's lowering per platform, so the op files need no backend.
    """

    name: str
    infer: Callable[..., tuple[tuple[int, ...], dt.DType]]  # (input nodes, **attrs) -> (shape, dtype)
    reference: Callable[..., np.ndarray]  # (*arrays, **attrs) -> array, NumPy order
    flops: Callable[..., int]  # (out shape, [in shapes], **attrs) -> FLOPs
    doc: str
    kind: str  # one of KINDS
    view: bool = False  # ggml runs it as a view of its input: no arithmetic, no bytes moved
    strided_ok: bool = False  # its lowering reads strided inputs itself; other ops get contiguous ones
    shape_only: bool = False  # only its inputs' shapes are read, never their values (const)
    lowerings: dict[str, Callable[..., Any]] = field(default_factory=dict, compare=False)  # backend -> fn


REGISTRY: dict[str, OpDef] = {}
# Public builders (`ops.add`, `t.gelu()` ...) by name; more than one may map to one op.
OPS_API: dict[str, Callable[..., Any]] = {}


def register(name: str, infer, reference, flops, doc: str, *, kind: str, view: bool = False,
             strided_ok: bool = False, shape_only: bool = False) -> OpDef:
    if name in REGISTRY:
        raise ValueError(f"op {name!r} registered twice")
    if kind not in KINDS:
        raise ValueError(f"op {name!r}: kind {kind!r} is not one of {KINDS}")
    op = OpDef(name, infer, reference, flops, doc, kind, view, strided_ok, shape_only)
    REGISTRY[name] = op
    return op


def add_lowering(backend: str, name: str, fn: Callable[..., Any]) -> None:
    """Give op `name` its lowering for `backend`; an unknown op or a second lowering is a ValueError."""
    op = REGISTRY.get(name)
    if op is None:
        raise ValueError(f"[{backend}] lowering for unknown op {name!r}")
    if backend in op.lowerings:
        raise ValueError(f"[{backend}] op {name!r} lowered twice")
    op.lowerings[backend] = fn


def api(fn):
    """Expose a builder as `ops.<name>` and as a Tensor method."""
    OPS_API[fn.__name__] = fn
    return fn


def emit(op: str, inputs, attrs: dict | None = None, name: str | None = None):
    """Add node `op` to its inputs' graph (its shape rule runs now): what every builder ends with."""
    inputs = list(inputs)
    # a graph tensor is what carries a graph: no import of graph.py, which imports this package
    graph = next((g for g in (getattr(t, "graph", None) for t in inputs) if g is not None), None)
    if graph is None:
        raise ValueError(f"[{op}] expected graph tensors, got {', '.join(type(t).__name__ for t in inputs)}")
    return graph.emit(op, inputs, attrs or {}, name)


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
