"""Reductions over the last axis (ggml reduces ne0)."""
from __future__ import annotations

import numpy as np

from .. import dtypes as dt
from .registry import FLOAT, api, emit, need, need_dtype, numel, register


def _rows_infer(x):
    need_dtype(x, FLOAT, "x")
    return (*x.shape[:-1], 1), x.dtype


register("sum_rows", _rows_infer, lambda x: x.sum(-1, keepdims=True), lambda out, ins: numel(ins[0]),
         "sum over the last axis, kept as size 1", kind="gather/reduce")
register("mean", _rows_infer, lambda x: x.mean(-1, keepdims=True), lambda out, ins: numel(ins[0]),
         "mean over the last axis, kept as size 1", kind="gather/reduce")


def _argmax_infer(x):
    need_dtype(x, FLOAT, "x")
    need(len(x.shape) == 2, f"argmax takes a 2-D tensor, got {x.shape}")
    return (x.shape[0],), dt.i32


register("argmax", _argmax_infer, lambda x: x.argmax(-1).astype(np.int32), lambda out, ins: numel(ins[0]),
         "index of the largest value of each row of a 2-D tensor -> i32", kind="gather/reduce")


@api
def sum_rows(x, *, name=None):
    """Sum over the last axis, keeping it as size 1."""
    return emit("sum_rows", [x], name=name)


@api
def mean(x, *, name=None):
    """Mean over the last axis, keeping it as size 1."""
    return emit("mean", [x], name=name)


@api
def argmax(x, *, name=None):
    """Row-wise argmax of a 2-D tensor -> int32 (rows,)."""
    return emit("argmax", [x], name=name)
