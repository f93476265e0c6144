"""Layout ops: reshape, slice (view), permute, transpose, cont, concat, pad, repeat, cast."""
from __future__ import annotations

import numpy as np

from .. import dtypes as dt
from .registry import FLOAT, api, can_repeat, emit, need, need_dtype, need_int32, numel, register, tile_to

_ZERO = lambda out, ins, **a: 0  # noqa: E731 - layout ops do no arithmetic
_ACT = (dt.f32, dt.f16, dt.bf16, dt.i32)


# -- reshape -------------------------------------------------------------------------------------
def _reshape_infer(x, *, shape):
    need_dtype(x, _ACT, "x")
    shape = tuple(shape)
    need(shape.count(-1) <= 1, f"at most one -1 in {shape}")
    need(all(s > 0 or s == -1 for s in shape), f"bad target shape {shape}")
    known = numel([s for s in shape if s != -1])
    if -1 in shape:
        need(numel(x.shape) % known == 0, f"cannot infer -1 in {shape} from {numel(x.shape)} elements")
        shape = tuple(numel(x.shape) // known if s == -1 else s for s in shape)
    need(numel(shape) == numel(x.shape), f"{x.shape} ({numel(x.shape)} elements) cannot become {shape}")
    need(shape[-1] % x.dtype.block_size == 0, "rows must stay whole blocks")
    return shape, x.dtype


register("reshape", _reshape_infer, lambda x, *, shape: x.reshape(shape), _ZERO,
         "same elements in a new shape (C order); one dim may be -1", kind="layout", view=True)


@api
def reshape(x, *shape, name=None):
    """Reshape in C order; one dim may be -1. Accepts reshape(a, b) or reshape((a, b))."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    return emit("reshape", [x], {"shape": tuple(int(s) for s in shape)}, name)


# -- slice ---------------------------------------------------------------------------------------
def _slice_infer(x, *, axis, start, stop, step):
    need_dtype(x, _ACT, "x")
    need(-len(x.shape) <= axis < len(x.shape), f"axis {axis} out of range for rank {len(x.shape)}")
    ax = axis % len(x.shape)
    need(step >= 1, f"step must be >= 1, got {step}")
    need(0 <= start < stop <= x.shape[ax], f"slice [{start}:{stop}] out of range for dim {x.shape[ax]}")
    need(ax != len(x.shape) - 1 or step == 1 or x.dtype.block_size == 1, "strided rows of blocks")
    shape = list(x.shape)
    shape[ax] = len(range(start, stop, step))
    return tuple(shape), x.dtype


def _slice_ref(x, *, axis, start, stop, step):
    idx = [slice(None)] * x.ndim
    idx[axis] = slice(start, stop, step)
    return x[tuple(idx)]


register("view", _slice_infer, _slice_ref, _ZERO, "x[start:stop:step] along one axis, as a strided view",
         kind="layout", view=True, strided_ok=True)


@api
def view(x, axis: int, start: int, stop: int, step: int = 1, *, name=None):
    """x[..., start:stop:step, ...] along `axis`, a view without copying where the backend allows."""
    ax = axis % x.ndim if -x.ndim <= axis < x.ndim else axis
    return emit("view", [x], {"axis": ax, "start": int(start), "stop": int(stop), "step": int(step)}, name)


slice_ = view


# -- permute / transpose / cont ---------------------------------------------------------------
def _permute_infer(x, *, axes):
    need_dtype(x, _ACT, "x")
    need(sorted(axes) == list(range(len(x.shape))), f"axes {axes} is not a permutation of rank {len(x.shape)}")
    return tuple(x.shape[a] for a in axes), x.dtype


register("permute", _permute_infer, lambda x, *, axes: np.transpose(x, axes), _ZERO,
         "np.transpose(x, axes): out.shape[i] = x.shape[axes[i]]", kind="layout",
         view=True, strided_ok=True)


@api
def permute(x, *axes, name=None):
    """np.transpose semantics: out.shape[i] = x.shape[axes[i]]."""
    if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
        axes = tuple(axes[0])
    return emit("permute", [x], {"axes": tuple(int(a) % x.ndim for a in axes)}, name)


@api
def transpose(x, *, name=None):
    """Swap the last two axes (a 1-D tensor becomes a column)."""
    if x.ndim == 1:
        return reshape(x, (x.shape[0], 1), name=name)
    axes = list(range(x.ndim))
    axes[-1], axes[-2] = axes[-2], axes[-1]
    return permute(x, axes, name=name)


register("cont", lambda x: (x.shape, x.dtype), lambda x: np.ascontiguousarray(x), _ZERO,
         "a contiguous copy (identity on values)", kind="layout", strided_ok=True)


@api
def cont(x, *, name=None):
    """Make a contiguous copy (a no-op on values; the ggml backend inserts these itself when needed)."""
    return emit("cont", [x], name=name)


# -- concat ----------------------------------------------------------------------------------------
def _concat_infer(*xs, axis):
    need(len(xs) >= 2, "concat needs at least two tensors")
    a = xs[0]
    need_dtype(a, _ACT, "x")
    need(-len(a.shape) <= axis < len(a.shape), f"axis {axis} out of range for rank {len(a.shape)}")
    ax = axis % len(a.shape)
    for b in xs[1:]:
        need(b.dtype == a.dtype, f"dtypes differ: {a.dtype.name} vs {b.dtype.name}")
        need(len(b.shape) == len(a.shape) and all(
            i == ax or p == q for i, (p, q) in enumerate(zip(a.shape, b.shape))),
            f"shapes {a.shape} and {b.shape} differ outside axis {ax}")
    shape = list(a.shape)
    shape[ax] = sum(x.shape[ax] for x in xs)
    return tuple(shape), a.dtype


register("concat", _concat_infer, lambda *xs, axis: np.concatenate(xs, axis=axis), _ZERO,
         "join tensors along an axis", kind="layout")


@api
def concat(xs, axis: int = 0, *, name=None):
    """Join a list of tensors along `axis`."""
    xs = list(xs)
    if len(xs) == 1:
        return xs[0]
    return emit("concat", xs, {"axis": int(axis) % xs[0].ndim}, name)


# -- pad / repeat ----------------------------------------------------------------------------------
def _pad_infer(x, *, pads):
    need_dtype(x, FLOAT, "x")
    need(len(pads) == len(x.shape), f"need one (before, after) pair per axis, got {len(pads)} for rank {len(x.shape)}")
    need(all(lo >= 0 and hi >= 0 for lo, hi in pads), f"pads must be >= 0, got {pads}")
    need_int32([v for lohi in pads for v in lohi], "pads")
    return tuple(s + lo + hi for s, (lo, hi) in zip(x.shape, pads)), x.dtype


register("pad", _pad_infer, lambda x, *, pads: np.pad(x, pads), _ZERO, "zero padding per axis", kind="layout")


@api
def pad(x, pads, *, name=None):
    """Zero padding; `pads` is one (before, after) pair per axis as in np.pad."""
    return emit("pad", [x], {"pads": tuple((int(a), int(b)) for a, b in pads)}, name)


def _repeat_infer(x, *, shape):
    need_dtype(x, FLOAT, "x")
    need(len(shape) >= len(x.shape) and can_repeat(x.shape, shape), f"{x.shape} does not tile {tuple(shape)}")
    return tuple(shape), x.dtype


register("repeat", _repeat_infer, lambda x, *, shape: tile_to(x, shape), _ZERO, "tile x to shape (np.tile)",
         kind="layout")


@api
def repeat(x, shape, *, name=None):
    """Tile x to `shape`; each target dim must be a multiple of x's."""
    return emit("repeat", [x], {"shape": tuple(int(s) for s in shape)}, name)


# -- cast ------------------------------------------------------------------------------------------
_CASTS = {(dt.f32, dt.f16), (dt.f16, dt.f32), (dt.f32, dt.bf16), (dt.bf16, dt.f32), (dt.f32, dt.f32)}


def _cast_infer(x, *, dtype):
    to = dt.dtype(dtype)
    need((x.dtype, to) in _CASTS, f"cast {x.dtype.name} -> {to.name} is not supported")
    return x.shape, to


def _cast_ref(x, *, dtype):
    to = dt.dtype(dtype)
    if to is dt.f16:
        return x.astype(np.float16)
    if to is dt.bf16:
        return dt.bf16_to_f32(dt.f32_to_bf16(x))  # values rounded to bf16, carried as f32
    return x.astype(np.float32)


register("cast", _cast_infer, _cast_ref, lambda out, ins, **a: numel(out),
         "convert between f32, f16 and bf16 (round to nearest even)", kind="layout")


@api
def cast(x, dtype, *, name=None):
    """Convert to f32, f16 or bf16."""
    return emit("cast", [x], {"dtype": dt.dtype(dtype).name}, name)
