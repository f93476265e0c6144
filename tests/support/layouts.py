"""Input layouts for the op x layout matrix (tests/ops/test_layouts.py).

A layout feeds an op the same logical values through a different memory layout: the graph input
is stored in another shape and a small prefix (permute, view, conv with an identity kernel)
turns it into the op's logical operand. ggml kernels see strided tensors, size-1 dims with odd
strides, views of views and conv outputs; the NumPy reference sees the same graph.

Every layout carries the same logical values (those tests/ops/test_ops.py feeds the case), placed
in the stored array where the prefix reads them, so errors compare across layouts and with
test_ops.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from graphdsl import ops
from op_cases import CASES, Case, I, W


def _swap_last(shape):
    return (*shape[:-2], shape[-1], shape[-2])


def _swap_perm(r):
    return (*range(r - 2), r - 1, r - 2)


def _first_last(r):
    return (r - 1, *range(1, r - 1), 0)


def _eye_conv(shape):
    """A conv whose output equals its input: (C, L) / (N, C, L) -> conv_1d, (N, C, H, W) -> conv_2d."""
    c = shape[-2] if len(shape) <= 3 else shape[1]
    k = (1,) if len(shape) <= 3 else (1, 1)
    return np.eye(c, dtype=np.float32).reshape(c, c, *k)


def _conv_prefix(x, shape):
    w = x.graph.weight(f"layout.eye_{x.name}", _eye_conv(shape).shape)
    return ops.conv_1d(w, x) if len(shape) <= 3 else ops.conv_2d(w, x)


def _placed(index):
    """embed(): the logical values at `index` of the stored array, other elements random."""
    def embed(v, stored, rng):
        out = rng.standard_normal(stored).astype(np.float32)
        out[index(v.shape)] = v
        return out
    return embed


@dataclass
class Layout:
    stored: Callable  # logical shape -> stored shape, or None where the layout does not apply
    prefix: Callable  # (stored tensor, logical shape) -> tensor with the logical shape
    embed: Callable  # (logical values, stored shape, rng) -> stored values
    weights: Callable | None = None  # (logical shape, input name) -> weights the prefix declares


def _same(v, stored, rng):
    return v


LAYOUTS = {
    "contiguous": Layout(lambda s: s, lambda x, s: x, _same),
    # the transpose of the stored tensor: ggml sees swapped ne/nb (a (1, n) row becomes ne [1, n] with nb0 = 4n)
    "transposed": Layout(lambda s: _swap_last(s) if len(s) >= 2 else None,
                         lambda x, s: ops.permute(x, _swap_perm(len(s))),
                         lambda v, st, rng: np.ascontiguousarray(np.swapaxes(v, -1, -2))),
    "permuted": Layout(lambda s: tuple(reversed(s)) if len(s) >= 3 else None,
                       lambda x, s: ops.permute(x, tuple(reversed(range(len(s))))),
                       lambda v, st, rng: np.ascontiguousarray(np.transpose(v))),
    "sliced": Layout(lambda s: (s[0] + 3, *s[1:]), lambda x, s: ops.view(x, 0, 2, 2 + s[0]),
                     _placed(lambda s: slice(2, 2 + s[0]))),
    "strided": Layout(lambda s: (2 * s[0], *s[1:]), lambda x, s: ops.view(x, 0, 1, 2 * s[0], 2),
                      _placed(lambda s: slice(1, None, 2))),
    "last_sliced": Layout(lambda s: (*s[:-1], s[-1] + 3), lambda x, s: ops.view(x, -1, 1, 1 + s[-1]),
                          _placed(lambda s: (..., slice(1, 1 + s[-1])))),
    # a one-row slice: an outer size-1 dim whose stride is that of two rows
    "row_of_two": Layout(lambda s: (*s[:-1], 2 * s[-1]) if len(s) >= 2 and s[0] == 1 else None,
                         lambda x, s: ops.view(x, -1, s[-1], 2 * s[-1]),
                         _placed(lambda s: (..., slice(s[-1], None)))),
    "view_of_view": Layout(lambda s: (s[0] + 2, *s[1:-1], s[-1] + 3) if len(s) >= 2 else None,
                           lambda x, s: ops.view(ops.view(x, 0, 1, 1 + s[0]), -1, 2, 2 + s[-1]),
                           _placed(lambda s: (slice(1, 1 + s[0]), ..., slice(2, 2 + s[-1])))),
    "view_of_permuted": Layout(
        lambda s: (s[-1], *s[1:-1], s[0] + 1) if len(s) >= 2 else None,
        lambda x, s: ops.view(ops.permute(x, _first_last(len(s))), 0, 1, 1 + s[0]),
        lambda v, st, rng: np.ascontiguousarray(np.transpose(
            _placed(lambda s: slice(1, None))(v, np.transpose(np.empty(st), _first_last(v.ndim)).shape, rng),
            _first_last(v.ndim)))),
    # conv outputs are permutes of a mul_mat result in ggml; values rounded to f16 first, so that
    # the "fast" policy's f16 im2col is exact here and only the layout is under test
    "conv_output": Layout(lambda s: s if 2 <= len(s) <= 4 else None, _conv_prefix,
                          lambda v, st, rng: v.astype(np.float16).astype(np.float32),
                          lambda s, name: {f"layout.eye_{name}": _eye_conv(s)}),
}


# Extra cases whose shapes have size-1 dims (rows, columns, one channel, length 1): with the
# transposed / sliced layouts above they give the strides ggml_is_contiguous does not look at.
UNIT_CASES: list[Case] = []


def _unit(op, build, spec, **kw):
    UNIT_CASES.append(Case(op, build, spec, id=f"{op}-unit{len([c for c in UNIT_CASES if c.op == op])}", **kw))


for _op, _fn in [("add", ops.add), ("sub", ops.sub), ("mul", ops.mul)]:
    _unit(_op, _fn, {"a": I((1, 13)), "b": I((1, 13))})
    _unit(_op, _fn, {"a": I((13, 1)), "b": I((13, 1))})
_unit("div", ops.div, {"a": I((1, 9)), "b": I((1, 9), "nonzero")})
_unit("scale", lambda x: ops.scale(x, 0.5, 1.0), {"x": I((1, 1, 17))})
for _op in ["neg", "sqr", "exp", "tanh", "relu", "sigmoid", "silu", "gelu_erf", "gelu", "gelu_quick"]:
    _unit(_op, getattr(ops, _op), {"x": I((1, 37))})
    _unit(_op, getattr(ops, _op), {"x": I((37, 1))})
_unit("sqrt", ops.sqrt, {"x": I((1, 37), "positive")})
_unit("mul_mat", ops.mul_mat, {"x": I((1, 33)), "w": W((13, 33))})
_unit("mul_mat", ops.mul_mat, {"x": I((7, 1)), "w": W((5, 1))})
_unit("get_rows", ops.get_rows, {"t": W((7, 19)), "ids": I((1,), "ids7", "i32")})
_unit("get_rows", ops.get_rows, {"t": I((7, 19)), "ids": I((5,), "ids7", "i32")})  # a computed table
_unit("get_rows", ops.get_rows, {"t": I((1, 19)), "ids": I((3,), "ids1", "i32")})
_unit("norm", lambda x: ops.norm(x, 1e-5), {"x": I((1, 45))})
_unit("rms_norm", lambda x: ops.rms_norm(x, 1e-6), {"x": I((1, 1, 45))})
_unit("soft_max", lambda x: ops.soft_max(x, scale=0.5), {"x": I((1, 1, 29))})
_unit("flash_attn_ext", lambda q, k, v: ops.flash_attn_ext(q, k, v, scale=0.25),
      {"q": I((1, 1, 16)), "k": I((1, 5, 16)), "v": I((1, 5, 16))})
_unit("rope", lambda x, p: ops.rope(x, p, mode="neox"), {"x": I((1, 1, 16)), "p": I((1,), "pos", "i32")},
      tol={"f32": 3e-5})
_unit("reshape", lambda x: x.reshape(-1), {"x": I((1, 7, 1))})
_unit("view", lambda x: ops.view(x, 1, 2, 5), {"x": I((1, 9))})
_unit("permute", lambda x: x.permute(1, 0) * 1.0, {"x": I((1, 6))})
_unit("cont", lambda x: ops.cont(x), {"x": I((1, 11))})
_unit("concat", lambda a, b: ops.concat([a, b], 0), {"a": I((1, 7)), "b": I((1, 7))})
_unit("concat", lambda a, b: ops.concat([a, b], 1), {"a": I((3, 1)), "b": I((3, 1))})
_unit("pad", lambda x: ops.pad(x, [(1, 0), (0, 2)]), {"x": I((1, 7))})
_unit("repeat", lambda x: ops.repeat(x, (4, 10)), {"x": I((1, 5))})
_unit("cast", lambda x: ops.cast(ops.cast(x, "bf16"), "f32"), {"x": I((1, 17))})
_unit("sum_rows", ops.sum_rows, {"x": I((1, 33))})
_unit("mean", ops.mean, {"x": I((1, 1, 33))})
_unit("argmax", ops.argmax, {"x": I((1, 31))})
_unit("pool_2d", lambda x: ops.pool_2d(x, "avg", 2), {"x": I((1, 8, 10))})
_unit("pool_2d", lambda x: ops.pool_2d(x, "max", (1, 2)), {"x": I((3, 1, 10))})
_unit("conv_2d", lambda w, x: ops.conv_2d(w, x, stride=2), {"w": W((1, 1, 2, 2)), "x": I((1, 6, 8))},
      precisions=("f32", "fast"), tol={"f32": 1e-5, "fast": 2e-3})
_unit("conv_1d", lambda w, x: ops.conv_1d(w, x), {"w": W((1, 3, 3)), "x": I((3, 3))},
      precisions=("f32", "fast"), tol={"f32": 1e-5, "fast": 2e-3})
# a one-channel, length-1 conv output feeding element-wise ops and pooling
_unit("conv_1d", lambda w, x: ops.conv_1d(w, x).T + 1.0, {"w": W((1, 4, 5)), "x": I((4, 5))},
      precisions=("f32", "fast"), tol={"f32": 1e-5, "fast": 2e-3})
_unit("pool_2d", lambda w, x: ops.pool_2d(ops.conv_2d(w, x), "avg", 2), {"w": W((1, 2, 1, 1)), "x": I((2, 6, 4))})

ALL_CASES = [*CASES, *UNIT_CASES]
