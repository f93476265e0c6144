"""Convolutions (lowered through im2col, as ggml does) and 2-D pooling. NCHW / NCL layout."""
from __future__ import annotations

import numpy as np

from .. import dtypes as dt
from .registry import FLOAT, api, emit, need, need_dtype, need_int32, numel, register


def _out_len(n, k, s, p, d):
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def _conv_infer(w, x, *, stride, padding, dilation, nd):
    need_dtype(x, FLOAT, "x")
    need_dtype(w, (dt.f32, dt.f16), "w")
    need(len(w.shape) == nd + 2, f"w must be (out_ch, in_ch, {'kh, kw' if nd == 2 else 'k'}), got {w.shape}")
    need(len(x.shape) in (nd + 1, nd + 2), f"x must be ({'N, ' if True else ''}C, {'H, W' if nd == 2 else 'L'}) "
                                           f"with optional batch, got {x.shape}")
    need(x.shape[-nd - 1] == w.shape[1], f"x channels {x.shape[-nd - 1]} != w in-channels {w.shape[1]}")
    need(all(s >= 1 for s in stride) and all(p >= 0 for p in padding) and all(d >= 1 for d in dilation),
         f"stride {stride} and dilation {dilation} must be >= 1, padding {padding} >= 0")
    need_int32((*stride, *padding, *dilation), "stride, padding and dilation")
    spatial = tuple(_out_len(n, k, s, p, d) for n, k, s, p, d in
                    zip(x.shape[-nd:], w.shape[-nd:], stride, padding, dilation))
    need(all(o >= 1 for o in spatial), f"kernel {w.shape[-nd:]} does not fit input {x.shape[-nd:]}")
    return (*x.shape[:-nd - 1], w.shape[0], *spatial), dt.f32


def _conv_ref(w, x, *, stride, padding, dilation, nd):
    batched = x.ndim == nd + 2
    xb = x if batched else x[None]
    xb = np.pad(xb, [(0, 0), (0, 0)] + [(p, p) for p in padding])
    out_sp = [_out_len(n, k, s, 0, d) for n, k, s, d in zip(xb.shape[2:], w.shape[2:], stride, dilation)]
    # im2col: cols[n, c, *k, *o] = x[n, c, o*s + k*d]
    cols = np.empty((xb.shape[0], xb.shape[1], *w.shape[2:], *out_sp), dtype=xb.dtype)
    for kidx in np.ndindex(*w.shape[2:]):
        sl = tuple(slice(k * d, k * d + (o - 1) * s + 1, s) for k, d, o, s in zip(kidx, dilation, out_sp, stride))
        cols[(slice(None), slice(None), *kidx)] = xb[(slice(None), slice(None), *sl)]
    k = numel(w.shape[1:])
    y = np.einsum("ok,nk...->no...", w.reshape(w.shape[0], k), cols.reshape(cols.shape[0], k, *out_sp))
    return y if batched else y[0]


def _conv_flops(out, ins, **a):
    return 2 * numel(out) * numel(ins[0][1:])


for _nd in (1, 2):
    register(f"conv_{_nd}d",
             lambda w, x, _nd=_nd, **a: _conv_infer(w, x, nd=_nd, **a),
             lambda w, x, _nd=_nd, **a: _conv_ref(w, x, nd=_nd, **a),
             _conv_flops,
             f"{_nd}-D cross-correlation as PyTorch's conv{_nd}d (no bias): w (oc, ic, k...), x ([N,] ic, ...)",
             kind="conv")


def _pair(v, nd):
    return tuple(int(i) for i in v) if isinstance(v, (tuple, list)) else (int(v),) * nd


@api
def conv_1d(w, x, *, stride=1, padding=0, dilation=1, name=None):
    """torch.nn.functional.conv1d(x, w) without bias: w (oc, ic, k), x ([N,] ic, L) -> ([N,] oc, L')."""
    attrs = {"stride": _pair(stride, 1), "padding": _pair(padding, 1), "dilation": _pair(dilation, 1)}
    return emit("conv_1d", [w, x], attrs, name)


@api
def conv_2d(w, x, *, stride=1, padding=0, dilation=1, name=None):
    """torch.nn.functional.conv2d(x, w) without bias: w (oc, ic, kh, kw), x ([N,] ic, H, W) -> ([N,] oc, H', W')."""
    attrs = {"stride": _pair(stride, 2), "padding": _pair(padding, 2), "dilation": _pair(dilation, 2)}
    return emit("conv_2d", [w, x], attrs, name)


# -- pooling -----------------------------------------------------------------------------------
def _pool_infer(x, *, op, kernel, stride):
    need_dtype(x, FLOAT, "x")
    need(op in ("max", "avg"), f"op must be 'max' or 'avg', got {op!r}")
    need(len(x.shape) >= 2, f"x must be (..., H, W), got {x.shape}")
    need(all(k >= 1 for k in kernel) and all(s >= 1 for s in stride), "kernel and stride must be >= 1")
    need_int32((*kernel, *stride), "kernel and stride")
    need(all(k <= n for k, n in zip(kernel, x.shape[-2:])), f"kernel {kernel} larger than input {x.shape[-2:]}")
    oh, ow = ((n - k) // s + 1 for n, k, s in zip(x.shape[-2:], kernel, stride))
    return (*x.shape[:-2], oh, ow), x.dtype


def _pool_ref(x, *, op, kernel, stride):
    (kh, kw), (sh, sw) = kernel, stride
    oh, ow = (x.shape[-2] - kh) // sh + 1, (x.shape[-1] - kw) // sw + 1
    win = np.stack([x[..., i:i + (oh - 1) * sh + 1:sh, j:j + (ow - 1) * sw + 1:sw]
                    for i in range(kh) for j in range(kw)])
    return win.max(0) if op == "max" else win.mean(0)


register("pool_2d", _pool_infer, _pool_ref, lambda out, ins, **a: numel(out) * a["kernel"][0] * a["kernel"][1],
         "max or average pooling over the last two axes, no padding", kind="conv")


@api
def pool_2d(x, op: str = "avg", kernel=2, stride=None, *, name=None):
    """Max or average pooling over (H, W) of x (..., H, W); stride defaults to the kernel."""
    k = _pair(kernel, 2)
    return emit("pool_2d", [x], {"op": op, "kernel": k, "stride": _pair(stride or k, 2)}, name)
