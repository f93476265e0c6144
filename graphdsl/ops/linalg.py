"""Matrix products, lookups, normalisation, softmax and attention (rotary embedding: rope.py)."""
from __future__ import annotations

import math

import numpy as np

from .. import dtypes as dt
from .registry import ANY_WEIGHT, FLOAT, api, emit, need, need_dtype, numel, register


def _batch_interleave(w: np.ndarray, batch: tuple[int, ...]) -> np.ndarray:
    """ggml_mul_mat broadcasting: w's batch index is i // ratio (repeat), not i % n (tile)."""
    w = w.reshape((1,) * (len(batch) + 2 - w.ndim) + w.shape)
    for ax, n in enumerate(batch):
        if w.shape[ax] != n:
            w = np.repeat(w, n // w.shape[ax], axis=ax)
    return w


# -- mul_mat ---------------------------------------------------------------------------------
def _mul_mat_infer(x, w):
    need_dtype(x, FLOAT, "x")
    need_dtype(w, ANY_WEIGHT, "w")
    need(len(w.shape) >= 2, f"w must be (..., n, k), got {w.shape}")
    need(x.shape[-1] == w.shape[-1], f"x {x.shape} @ w {w.shape}^T: inner dims {x.shape[-1]} != {w.shape[-1]}")
    xb, wb = x.shape[:-2], w.shape[:-2]
    need(len(wb) <= len(xb), f"w {w.shape} has more batch dims than x {x.shape}")
    wb = (1,) * (len(xb) - len(wb)) + wb
    need(all(b % a == 0 for a, b in zip(wb, xb)), f"w batch dims {w.shape[:-2]} must divide x's {x.shape[:-2]}")
    return (*x.shape[:-1], w.shape[-2]), dt.f32


def _mul_mat_ref(x, w):
    if w.ndim > 2:
        w = _batch_interleave(w, x.shape[:-2])
    return x @ np.swapaxes(w, -1, -2)


register("mul_mat", _mul_mat_infer, _mul_mat_ref,
         lambda out, ins: 2 * numel(out) * ins[0][-1],
         "x @ w^T: x (..., m, k), w (..., n, k) -> (..., m, n); w's batch dims divide x's (ggml_mul_mat(w, x))",
         kind="matmul", strided_ok=True)


@api
def mul_mat(x, w, *, name=None):
    """x @ w^T, ggml's matrix product: x (..., m, k), w (..., n, k) -> (..., m, n).

    w may be any weight type, quantized included; its batch dims broadcast over x's by
    repetition (each w matrix serves consecutive x batches, as in grouped-query attention).
    """
    return emit("mul_mat", [x, w], name=name)


@api
def linear(x, w, b=None, *, name=None):
    """x @ w^T + b with w (out, in) as in PyTorch."""
    y = mul_mat(x, w, name=name)
    return y if b is None else y.graph.emit("add", [y, b], {}, (name + "_b") if name else None)


# -- get_rows --------------------------------------------------------------------------------
def _get_rows_infer(table, ids):
    need_dtype(table, ANY_WEIGHT, "table")
    need_dtype(ids, (dt.i32,), "ids")
    need(len(table.shape) == 2, f"table must be 2-D (n_rows, n_embd), got {table.shape}")
    need(len(ids.shape) == 1, f"ids must be 1-D, got {ids.shape}")
    return (ids.shape[0], table.shape[1]), dt.f32


def _get_rows_ref(table, ids):
    if ids.size and (ids.min() < 0 or ids.max() >= table.shape[0]):
        raise ValueError(f"[get_rows] ids out of range [0, {table.shape[0]})")
    return table[ids]


register("get_rows", _get_rows_infer, _get_rows_ref, lambda out, ins: 0,
         "table[ids]: table (n, d) of any weight type, ids (m,) i32 -> (m, d) f32", kind="gather/reduce")


@api
def get_rows(table, ids, *, name=None):
    """Rows of `table` (n, d) picked by int32 `ids` (m,) -> (m, d) f32. Ids are range-checked at run time."""
    return emit("get_rows", [table, ids], name=name)


# -- norms -----------------------------------------------------------------------------------
def _norm_infer(x, *, eps):
    need_dtype(x, FLOAT, "x")
    need(eps >= 0 and math.isfinite(eps), f"eps must be >= 0, got {eps}")
    return x.shape, x.dtype


def _norm_ref(x, *, eps):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps)


def _rms_norm_ref(x, *, eps):
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + eps)


register("norm", _norm_infer, _norm_ref, lambda out, ins, **a: 5 * numel(out),
         "(x - mean) / sqrt(var + eps) over the last axis (LayerNorm without affine)", kind="norm")
register("rms_norm", _norm_infer, _rms_norm_ref, lambda out, ins, **a: 3 * numel(out),
         "x / sqrt(mean(x^2) + eps) over the last axis", kind="norm")


@api
def norm(x, eps: float = 1e-5, *, name=None):
    """LayerNorm without affine over the last axis: (x - mean) / sqrt(var + eps)."""
    return emit("norm", [x], {"eps": float(eps)}, name)


@api
def rms_norm(x, eps: float = 1e-6, *, name=None):
    """x / sqrt(mean(x^2) + eps) over the last axis."""
    return emit("rms_norm", [x], {"eps": float(eps)}, name)


# -- soft_max ----------------------------------------------------------------------------------
def _soft_max_infer(x, mask=None, *, scale):
    need_dtype(x, FLOAT, "x")
    need(math.isfinite(scale), f"scale must be finite, got {scale}")
    if mask is not None:
        need_dtype(mask, (dt.f32, dt.f16), "mask")
        need(len(x.shape) >= 2 and len(mask.shape) >= 2, "softmax with a mask needs 2-D or more x and mask")
        need(mask.shape[-1] == x.shape[-1], f"mask columns {mask.shape[-1]} != x columns {x.shape[-1]}")
        need(mask.shape[-2] >= x.shape[-2], f"mask rows {mask.shape[-2]} < x rows {x.shape[-2]}")
        mb, xb = mask.shape[:-2], x.shape[:-2]
        need(len(mb) <= len(xb) and all(b % a == 0 for a, b in zip(mb[::-1], xb[::-1])),
             f"mask batch dims {mb} must divide x's {xb}")
    return x.shape, x.dtype


def _soft_max_ref(x, mask=None, *, scale):
    z = x * scale
    if mask is not None:
        from .registry import tile_to
        m = mask[..., : x.shape[-2], :]
        z = z + tile_to(m.astype(np.float64), x.shape)
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


register("soft_max", _soft_max_infer, _soft_max_ref, lambda out, ins, **a: 5 * numel(out),
         "softmax(x * scale + mask) over the last axis; mask (..., >=rows, cols) f32/f16", kind="norm")


@api
def soft_max(x, mask=None, *, scale: float = 1.0, name=None):
    """softmax(x * scale + mask) over the last axis."""
    inputs = [x] if mask is None else [x, mask]
    return emit("soft_max", inputs, {"scale": float(scale)}, name)


# -- attention -----------------------------------------------------------------------------------
def _attn_infer(q, k, v, mask=None, *, scale):
    need_dtype(q, FLOAT, "q")
    need_dtype(k, (dt.f32, dt.f16), "k")
    need_dtype(v, (dt.f32, dt.f16), "v")
    need(len(q.shape) == len(k.shape) == len(v.shape) and len(q.shape) in (3, 4),
         "q, k, v must all be (heads, n, d) or (batch, heads, n, d)")
    need(q.shape[-1] == k.shape[-1], f"q head dim {q.shape[-1]} != k head dim {k.shape[-1]}")
    need(k.shape[:-1] == v.shape[:-1], f"k {k.shape} and v {v.shape} must agree except in the last axis")
    need(q.shape[-3] % k.shape[-3] == 0, f"q heads {q.shape[-3]} must be a multiple of k heads {k.shape[-3]}")
    need(len(q.shape) == 3 or q.shape[0] == k.shape[0], "q and k batch sizes differ")
    need(math.isfinite(scale) and scale > 0, f"scale must be positive, got {scale}")
    if mask is not None:
        need_dtype(mask, (dt.f32, dt.f16), "mask")
        need(len(mask.shape) == 2, f"mask must be 2-D (n_q, n_kv), got {mask.shape}")
        need(mask.shape == (q.shape[-2], k.shape[-2]), f"mask {mask.shape} != (n_q, n_kv) = {(q.shape[-2], k.shape[-2])}")
    *b, h, nq, _ = q.shape
    return (*b, nq, h, v.shape[-1]), dt.f32


def _attn_ref(q, k, v, mask=None, *, scale):
    rep = q.shape[-3] // k.shape[-3]
    k = np.repeat(k, rep, axis=-3)
    v = np.repeat(v, rep, axis=-3)
    p = _soft_max_ref(q @ np.swapaxes(k, -1, -2), None if mask is None else mask, scale=scale)
    return np.swapaxes(p @ v, -2, -3)  # (..., h, nq, dv) -> (..., nq, h, dv)


register("flash_attn_ext", _attn_infer, _attn_ref,
         lambda out, ins, **a: 4 * numel(ins[0][:-1]) * ins[1][-2] * ins[0][-1],
         "softmax(q k^T * scale + mask) v; q (.., h, nq, d), k/v (.., h_kv, nkv, d) -> (.., nq, h, dv)",
         kind="matmul", strided_ok=True)


@api
def flash_attn_ext(q, k, v, mask=None, *, scale: float, name=None):
    """Fused attention, ggml layout: returns (..., n_q, heads, d_v), ready to reshape to (n_q, heads*d_v).

    Under precision="f32" the ggml backend lowers it to mul_mat + soft_max + mul_mat in f32;
    under "fast" to ggml_flash_attn_ext (K/V in f16 on CPU).
    """
    inputs = [q, k, v] if mask is None else [q, k, v, mask]
    return emit("flash_attn_ext", inputs, {"scale": float(scale)}, name)

