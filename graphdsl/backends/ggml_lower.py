"""The ggml lowering table: one function per registry op, NumPy order in, ggml ne order out.

This file and ggml.py are the only places that know ggml's axis order: a NumPy shape
(s0, ..., s_{r-1}) is ggml ne [s_{r-1}, ..., s0, 1, ...], so NumPy axis `a` of a rank-r tensor
is ggml dim `r - 1 - a`. Comments below give shapes as `ne[...]` (ggml) or `(...)` (NumPy).

Precision policy: under "f32" every op is lowered to a form that computes in f32 (im2col into
f32 + mul_mat; GELU from tanh/sigmoid pieces; attention as mul_mat + soft_max + mul_mat; every
mul_mat tagged GGML_PREC_F32, which CUDA needs to accumulate f16 weights in f32). Under
"fast" ggml's own fast paths are used (f16 im2col, f16 GELU tables, flash_attn_ext with f16 K/V).
"""
from __future__ import annotations

import math

from graphdsl import _ggml
from graphdsl import dtypes as dt
from graphdsl.ops.registry import REGISTRY, add_lowering
from graphdsl.ops.rope import GGML_ROPE_TYPE

from .weights import const_value

G = _ggml.ops
_DTYPE_OF = {d.ggml_type: d for d in dt.DTYPES.values()}
PRECISIONS = ("f32", "fast")
BACKEND = "ggml"  # the key of these lowerings in each OpDef's `lowerings`


def packed(t) -> bool:
    """Whether t's strides are exactly those of a fresh tensor of its shape and type, size-1 dims
    included (ggml_is_contiguous is weaker: it skips them)."""
    d = _DTYPE_OF[t.type]
    nb = d.type_size
    for i, (n, stride) in enumerate(zip(t.ne, t.nb)):
        if stride != nb:
            return False
        nb *= n // d.block_size if i == 0 else n
    return True


def ne_of(shape) -> list[int]:
    return [*reversed(shape), *([1] * (4 - len(shape)))]


def gdim(node, axis: int) -> int:
    return len(node.shape) - 1 - axis


class Lowering:
    """State shared by the lowering functions: the compute context and the precision policy."""

    def __init__(self, ctx, precision: str, fused_f32_attention: bool = True):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.ctx = ctx
        self.precision = precision
        # The CPU's flash-attention kernel is exact with f32 K/V; other devices' kernels may
        # want f16, so elsewhere the exact form stays mul_mat + soft_max + mul_mat.
        self.fused_f32_attention = fused_f32_attention

    @property
    def exact(self) -> bool:
        return self.precision == "f32"

    def cont(self, t):
        """t with canonical strides. ggml_is_contiguous ignores the strides of size-1 dims (the
        transpose of a (1, n) row, a one-row slice, a one-channel conv output), yet kernels step
        by nb[0] and assert on it: such a tensor gets a reshape to its own shape (a view with
        canonical strides over the same bytes), anything else truly strided a copy."""
        if packed(t):
            return t
        if t.is_contiguous:
            return G.reshape_4d(self.ctx, t, *t.ne)
        return G.cont(self.ctx, t)

    def mul_mat(self, a, b):
        """ggml_mul_mat(a, b); under "f32" it asks for f32 accumulation (GGML_PREC_F32). The CPU
        accumulates in f32 anyway; CUDA's cuBLAS path otherwise multiplies f16 weights with f16
        accumulation and an f16 result (CUBLAS_COMPUTE_16F), and its vector kernels likewise."""
        t = G.mul_mat(self.ctx, a, b)
        if self.exact:
            G.mul_mat_set_prec_f32(t)
        return t

    def reshape(self, t, ne):
        ne = [*ne, *([1] * (4 - len(ne)))]
        return G.reshape_4d(self.ctx, self.cont(t), *ne)


def lowers(*names):
    """Register fn as the ggml lowering of the named registry ops: fn(L, node, *input tensors)."""
    def deco(fn):
        for n in names:
            add_lowering(BACKEND, n, fn)
        return fn
    return deco


def emit(L: Lowering, node, vals: dict[int, object]):
    """Lower one registry node, given the ggml tensors of its inputs by node id; the one path every
    op takes. Inputs arrive contiguous unless the op reads strides itself (OpDef.strided_ok);
    errors name the node, and the result must have exactly the node's shape and type."""
    op = REGISTRY[node.op]
    lower = op.lowerings.get(BACKEND)
    if lower is None:
        raise ValueError(f"[{node.op}] node '{node.name}': no ggml lowering")
    if op.shape_only:  # the inputs gave the shape only; their values are never computed
        args = []
    else:
        args = [vals[id(i)] if op.strided_ok or i.op == "weight" else L.cont(vals[id(i)]) for i in node.inputs]
    try:
        t = lower(L, node, *args)
    except ValueError as e:
        raise ValueError(f"[{node.op}] node '{node.name}': {e}") from None
    t.name = node.name[:63]
    check_lowered(node, t)
    return t


@lowers("add", "sub", "mul", "div")
def _binary(L, node, a, b):
    return getattr(G, node.op)(L.ctx, a, b)


@lowers("scale")
def _scale(L, node, x):
    return G.scale_bias(L.ctx, x, node.attrs["s"], node.attrs["b"])


@lowers("neg", "sqr", "sqrt", "exp", "tanh", "relu", "sigmoid", "silu", "gelu_erf")
def _unary(L, node, x):
    return getattr(G, node.op)(L.ctx, x)


@lowers("gelu")
def _gelu(L, node, x):
    if not L.exact:
        return G.gelu(L.ctx, x)  # f16 lookup table on CPU
    c = L.ctx
    inner = G.mul(c, x, G.scale_bias(c, G.mul(c, x, x), 0.044715, 1.0))  # x (1 + 0.044715 x^2)
    t = G.tanh(c, G.scale_bias(c, inner, math.sqrt(2.0 / math.pi), 0.0))
    return G.mul(c, x, G.scale_bias(c, t, 0.5, 0.5))  # x * 0.5 (1 + tanh(...))


@lowers("gelu_quick")
def _gelu_quick(L, node, x):
    if not L.exact:
        return G.gelu_quick(L.ctx, x)  # f16 lookup table on CPU
    # x * sigmoid(1.702 x) = silu(1.702 x) / 1.702: ggml's silu is vectorised, its sigmoid is not.
    return G.scale_bias(L.ctx, G.silu(L.ctx, G.scale_bias(L.ctx, x, 1.702, 0.0)), 1.0 / 1.702, 0.0)


@lowers("mul_mat")
def _mul_mat(L, node, x, w):
    # ggml_mul_mat(w ne[k, n, ...], x ne[k, m, ...]) -> ne[n, m, ...]: both need unit-stride
    # rows (the CPU kernel asserts nb0 == type size) and w must not be transposed.
    if w.is_transposed or not _unit_rows(w):
        w = G.cont(L.ctx, w)
    if x.is_transposed or not _unit_rows(x):
        x = G.cont(L.ctx, x)
    return L.mul_mat(w, x)




def _unit_rows(t) -> bool:
    """Rows read with unit stride (nb[0] is one element or block), as ggml's CPU kernels assume."""
    return t.nb[0] == _DTYPE_OF[t.type].type_size


@lowers("get_rows")
def _get_rows(L, node, table, ids):
    return G.get_rows(L.ctx, table, ids)


@lowers("norm", "rms_norm")
def _norm(L, node, x):
    return getattr(G, node.op)(L.ctx, x, node.attrs["eps"])


@lowers("soft_max")
def _soft_max(L, node, x, mask=None):
    return G.soft_max_ext(L.ctx, x, mask, node.attrs["scale"], 0.0)


@lowers("flash_attn_ext")
def _attention(L, node, q, k, v, mask=None):
    # q/k/v arrive as the head permutes of the projections, read in place (as llama.cpp does).
    c, scale = L.ctx, node.attrs["scale"]
    mask = None if mask is None else L.cont(mask)
    # every kernel reads rows with unit stride (the CPU's flash attention asserts it for q, k and v)
    q, k, v = (t if _unit_rows(t) else G.cont(c, t) for t in (q, k, v))
    f16 = dt.f16.ggml_type
    if not L.exact:
        # q ne[d, nq, h, b], k/v ne[d, nkv, h_kv, b]; K/V in f16 is ggml's fast CPU path.
        k, v = (t if t.type == f16 else G.cast(c, t, f16) for t in (k, v))
        mask = mask if mask is None or mask.type == f16 else G.cast(c, mask, f16)
        return G.flash_attn_ext(c, q, k, v, mask, scale, 0.0, 0.0, True)  # ne[dv, h, nq, b]
    if mask is None and L.fused_f32_attention and k.type == v.type == dt.f32.ggml_type:
        # ggml's CPU kernel keeps f32 K/V in f32 end to end (dot, online softmax, V accumulation).
        return G.flash_attn_ext(c, q, k, v, None, scale, 0.0, 0.0, True)
    # With a mask (ggml wants it in f16) or elsewhere: mul_mat + soft_max + mul_mat in f32.
    kq = L.mul_mat(L.cont(k), L.cont(q))  # ne[nkv, nq, h, b]; k heads repeat over q heads (GQA)
    kq = G.soft_max_ext(c, kq, mask, scale, 0.0)
    vt = G.cont(c, G.transpose(c, v))  # ne[nkv, dv, h_kv, b]
    kqv = L.mul_mat(vt, kq)  # ne[dv, nq, h, b]
    return G.permute(c, kqv, 0, 2, 1, 3)  # ne[dv, h, nq, b]


@lowers("rope")
def _rope(L, node, x, pos):
    a = node.attrs
    mode = GGML_ROPE_TYPE[a["mode"]]
    # YaRN off (ext_factor 0, attn_factor 1), llama.cpp's beta defaults; n_ctx_orig only feeds YaRN
    yarn_off = (0.0, 1.0, 32.0, 1.0)
    if a.get("sections") is None:
        return G.rope_ext(L.ctx, x, pos, None, a["n_dims"], mode, 0, a["freq_base"], a["freq_scale"], *yarn_off)
    # pos (4, n) is ne[n, 4]; ggml reads it flat, row r of token i at i + r*n: the same bytes
    flat = L.reshape(pos, [pos.ne[0] * pos.ne[1]])
    # ggml's n_dims for VISION is head_dim / 2 (the ladder of each section); the DSL counts rotated dims
    n_dims = a["n_dims"] // 2 if a["mode"] == "vision" else a["n_dims"]
    return G.rope_multi(L.ctx, x, flat, None, n_dims, list(a["sections"]), mode, 0, a["freq_base"],
                        a["freq_scale"], *yarn_off)


# -- layout ----------------------------------------------------------------------------------------
@lowers("reshape")
def _reshape(L, node, x):
    return L.reshape(x, ne_of(node.shape))


@lowers("view")
def _view(L, node, x):
    a, src = node.attrs, node.inputs[0]
    if not _unit_rows(x) and x.ne[0] > 1:
        x = G.cont(L.ctx, x)  # ggml_view_4d sets nb[0] to the element size: it cannot keep a strided ne0
    k = gdim(src, a["axis"])
    ne, nb = list(x.ne), list(x.nb)
    ne[k] = node.shape[a["axis"]]
    offset = a["start"] * nb[k]
    nb[k] *= a["step"]
    if k == 0 and a["step"] != 1:
        raise ValueError(f"[view] node '{node.name}': a strided slice of the last axis has no ggml view")
    return G.view_4d(L.ctx, x, *ne, nb[1], nb[2], nb[3], offset)


@lowers("permute")
def _permute(L, node, x):
    r, axes = len(node.shape), node.attrs["axes"]
    p = [0, 1, 2, 3]
    for i, a in enumerate(axes):  # out axis i <- in axis a; ggml: in dim r-1-a goes to r-1-i
        p[r - 1 - a] = r - 1 - i
    return G.permute(L.ctx, x, *p)


@lowers("cont")
def _cont(L, node, x):
    return G.cont(L.ctx, x)


@lowers("concat")
def _concat(L, node, *xs):
    k = gdim(node, node.attrs["axis"])
    out = xs[0]
    for x in xs[1:]:
        out = G.concat(L.ctx, out, x, k)
    return out


@lowers("pad")
def _pad(L, node, x):
    pads = [(0, 0)] * 4
    for axis, lohi in enumerate(node.attrs["pads"]):
        pads[gdim(node, axis)] = lohi
    return G.pad_ext(L.ctx, x, *(v for lohi in pads for v in lohi))


@lowers("repeat")
def _repeat(L, node, x):
    return G.repeat_4d(L.ctx, x, *ne_of(node.shape))


@lowers("cast")
def _cast(L, node, x):
    return G.cast(L.ctx, x, node.dtype.ggml_type)


@lowers("sum_rows", "mean", "argmax")
def _reduce(L, node, x):
    return getattr(G, node.op)(L.ctx, x)


# -- convolution -------------------------------------------------------------------------------------
def _conv(L, node, w, x, nd):
    """im2col + mul_mat; "f32" keeps im2col in f32, "fast" uses ggml's f16 im2col.

    Both orders avoid ggml_conv_1d's batch>1 trap (its labelled shape does not match memory).
    """
    c, a = L.ctx, node.attrs
    s, p, d = a["stride"], a["padding"], a["dilation"]
    if nd == 2:  # ggml dims 0/1 are W/H
        args = (s[1], s[0], p[1], p[0], d[1], d[0], True)
    else:
        args = (s[0], 0, p[0], 0, d[0], 0, False)
    col_t = dt.f32 if L.exact else dt.f16
    cols = G.im2col(c, w, x, *args, col_t.ggml_type)  # ne[ic*k..., spatial..., n]
    K = cols.ne[0]
    n_pos = cols.ne[1] * cols.ne[2] * cols.ne[3]
    cols2 = L.reshape(cols, [K, n_pos])
    w2 = L.reshape(w, [K, w.ne[nd + 1]])  # ne[ic*k..., oc]
    oc = w.ne[nd + 1]
    spatial = list(cols.ne[1:1 + nd])  # ne order: [ow, oh] or [ol]
    n = cols.ne[nd + 1]
    if L.exact:
        y = L.mul_mat(w2, cols2)  # ne[oc, positions]: channels-last
        y = L.reshape(y, [oc, *spatial, n])
        return G.permute(c, y, *([2, 0, 1, 3] if nd == 2 else [1, 0, 2, 3]))  # -> ne[spatial, oc, n]
    y = L.mul_mat(cols2, w2)  # ne[positions, oc]
    y = L.reshape(y, [*spatial, n, oc])
    return G.permute(c, y, *([0, 1, 3, 2] if nd == 2 else [0, 2, 1, 3]))


@lowers("conv_1d")
def _conv_1d(L, node, w, x):
    return _conv(L, node, w, x, 1)


@lowers("conv_2d")
def _conv_2d(L, node, w, x):
    return _conv(L, node, w, x, 2)


@lowers("pool_2d")
def _pool_2d(L, node, x):
    a = node.attrs
    op = 0 if a["op"] == "max" else 1
    (kh, kw), (sh, sw) = a["kernel"], a["stride"]
    return G.pool_2d(L.ctx, x, op, kw, kh, sw, sh, 0.0, 0.0)


@lowers("const")
def _const(L, node):
    """A leaf tensor in L's context; the executor uploads the value once per program (ggml.py)."""
    return L.ctx.new_tensor(node.dtype.ggml_type, ne_of(node.shape), node.name[:63])


def ids_check(node):
    """Ids must be in range before ggml sees them (its get_rows asserts). Inputs are checked per run."""
    table, ids = node.inputs
    if ids.op == "input":
        return (ids.name, table.shape[0])
    if ids.op == "const":  # known now: checked once, here
        v = const_value(ids)
        if v.min() < 0 or v.max() >= table.shape[0]:
            raise ValueError(f"[get_rows] node '{node.name}': constant ids '{ids.name}' must lie in "
                             f"[0, {table.shape[0]}), got [{v.min()}, {v.max()}]")
        return None
    if ids.op == "argmax" and ids.inputs[0].shape[-1] <= table.shape[0]:
        return None
    raise ValueError(f"[get_rows] node '{node.name}': ids must come from a graph input (checked at run "
                     f"time), a constant or an argmax over at most {table.shape[0]} columns")


def check_lowered(node, t):
    """The lowering must produce exactly the node's shape and type (catches axis-order slips)."""
    expect = ne_of(node.shape)
    if list(t.ne) != expect or t.type != node.dtype.ggml_type:
        raise AssertionError(f"lowering of {node.op} '{node.name}' gave ne={list(t.ne)} type={t.type}, "
                             f"expected ne={expect} type={node.dtype.ggml_type}")
