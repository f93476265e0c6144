"""Constants: values known before the run, as IR nodes (`Graph.const`).

Three forms, by what the value depends on:

    g.const("eye", np.eye(3))                           # fixed: independent of every input
    g.const("m_w", lambda s: resize(s[-1]), shape_of=[px])   # follows px's shape
    g.const("m_w", value, shape_of=[px])                # valid for px's shape now, and only then

The node's inputs are the `shape_of` tensors; only their *shapes* are read, never their values
(`Graph.live_nodes(values_only=True)` does not follow these edges). When `Graph.specialize`
replays the shape rules for new input shapes (what an executor does when called with another
shape), a function is called again with the new shapes, so the value is never stale; a pinned
value whose shapes changed raises ValueError instead. A value is computed once per set of shapes
and shared by the shape rule, the reference and the ggml upload.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .. import dtypes as dt
from .registry import ShapeError, register

MAX_CACHED = 64  # sets of shapes remembered per constant (each executor program needs one)


class ConstValue:
    """The value of one const node: an array, or `fn(*shapes) -> array` of the inputs' shapes.

    It sits in the node's attrs (``attrs["value"]``), so it travels with the node through
    `Graph.specialize` and prints as a short type, not as the array.
    """

    __slots__ = ("fn", "dtype", "pinned", "_cache")

    def __init__(self, value: np.ndarray | Callable[..., np.ndarray], shapes: Sequence[tuple[int, ...]],
                 dtype: str | dt.DType | None = None, *, pinned: bool = False):
        self.fn = value if callable(value) else None
        shapes = tuple(tuple(s) for s in shapes)
        first = self._call(shapes) if self.fn else np.asarray(value)
        self.dtype = dt.dtype(dtype) if dtype is not None else _default_dtype(first)
        if self.dtype.is_quantized:
            raise ShapeError(f"constants cannot be quantized ({self.dtype.name})")
        self.pinned = shapes if pinned and self.fn is None else None
        self._cache: dict[tuple, np.ndarray] = {shapes: self._stored(first, shapes)}

    def evaluate(self, shapes: Sequence[tuple[int, ...]]) -> np.ndarray:
        """The stored value (read-only, in the node's dtype: bf16 as bit patterns) for these shapes."""
        shapes = tuple(tuple(s) for s in shapes)
        hit = self._cache.get(shapes)
        if hit is not None:
            return hit
        if self.fn is None:
            if self.pinned is not None:
                raise ShapeError(f"the value was computed for input shapes {_shapes(self.pinned)}, now "
                                 f"{_shapes(shapes)}: build the constant from a function of the shapes "
                                 f"(g.const(name, fn, shape_of=...)) or rebuild the graph")
            return next(iter(self._cache.values()))  # a fixed constant: same value for any shapes
        if len(self._cache) >= MAX_CACHED:
            self._cache.pop(next(iter(self._cache)))
        out = self._cache[shapes] = self._stored(self._call(shapes), shapes)
        return out

    def _call(self, shapes) -> np.ndarray:
        try:
            return np.asarray(self.fn(*shapes))
        except (ValueError, ShapeError) as e:  # the graph re-raises it naming the node
            raise ShapeError(f"{getattr(self.fn, '__name__', 'fn')}{_shapes(shapes)}: {e}") from None

    def _stored(self, a: np.ndarray, shapes) -> np.ndarray:
        d = self.dtype
        if not 1 <= a.ndim <= 4 or 0 in a.shape:
            raise ShapeError(f"value for input shapes {_shapes(shapes)} has shape {a.shape}; "
                             f"a constant needs 1 to 4 non-empty dims")
        if d is dt.i32:
            if not np.issubdtype(a.dtype, np.integer):
                raise ShapeError(f"value for input shapes {_shapes(shapes)} is {a.dtype}, the constant is i32")
            try:
                a = dt.as_i32(a, "constant")
            except ValueError as e:
                raise ShapeError(str(e)) from None
        else:
            if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
                raise ShapeError(f"value is {a.dtype}, the constant is {d.name}")
            if np.isnan(a).any():  # -inf is legitimate (additive masks); NaN never is
                raise ShapeError(f"value for input shapes {_shapes(shapes)} contains NaN")
            a = dt.f32_to_bf16(np.asarray(a, np.float32)) if d is dt.bf16 else a.astype(d.numpy)
        a = np.array(a, order="C")  # our own copy: a caller mutating theirs changes nothing here
        a.flags.writeable = False
        return a

    def __repr__(self) -> str:
        kind = getattr(self.fn, "__name__", "fn") + "(shapes)" if self.fn else "pinned" if self.pinned else "fixed"
        return f"<{self.dtype.name} {kind}>"


def _default_dtype(a: np.ndarray) -> dt.DType:
    if np.issubdtype(a.dtype, np.integer):
        return dt.i32
    return dt.f16 if a.dtype == np.float16 else dt.f32


def _shapes(shapes) -> str:
    return "(" + ", ".join(str(tuple(s)) for s in shapes) + ")"


def _infer(*deps, value: ConstValue):
    v = value.evaluate([d.shape for d in deps])
    return v.shape, value.dtype


def _reference(*deps, value: ConstValue):
    """Only the inputs' shapes are read. bf16 comes back as f32 values, as references compute."""
    v = value.evaluate([np.shape(d) for d in deps])
    return dt.bf16_to_f32(v) if value.dtype is dt.bf16 else v


register("const", _infer, _reference, lambda out, ins, **kw: 0,
         "A value known before the run: fixed, or computed from the shapes of its inputs (see ops.const)",
         kind="constant", shape_only=True)
