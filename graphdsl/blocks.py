"""Shared blocks: norm, linear, attention, FFN and the generic pre-LN ViT.

The counterpart of llama.cpp's ``llm_graph_context`` (``build_norm``, ``build_ffn``,
``build_attn``) and ``clip_graph::build_vit``. Every block declares its weights by *local* name
inside the caller's scope and names its nodes like llama.cpp's ``cb()``, so that inside
``g.scope("v")`` and ``g.scope("blk.3")`` the query projection is the weight
``v.blk.3.attn_q.weight`` and the node ``v.blk.3.attn_q``. A model that needs something
unusual copies a block rather than adding a flag to it.

Shapes are NumPy order. Token tensors are ``(n, d)`` or batched ``(B, n, d)``: every block
works on both, so several images of one size run as one batch sharing the weights.

Example:
    >>> g = Graph("vit")
    >>> x = g.input("x", (2, 50, 64))
    >>> p = VitParams(n_embd=64, n_head=4, n_ff=256, eps=1e-5, act="gelu_quick")
    >>> with g.scope("v"):
    ...     hs = vit(x, p, n_layer=2)          # [x, after blk.0, after blk.1]
    >>> hs[-1].name
    'v.blk.1.layer_out'
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from . import ops
from .graph import Graph, Tensor  # noqa: F401 - Graph for the docstring example

# HF `hidden_act` strings -> graphdsl unary ops.
HF_ACT = {
    "gelu": "gelu_erf",  # torch's default GELU is the exact erf form
    "gelu_python": "gelu_erf",
    "quick_gelu": "gelu_quick",
    "gelu_pytorch_tanh": "gelu",
    "gelu_new": "gelu",
    "gelu_fast": "gelu",
    "silu": "silu",
    "swish": "silu",
    "relu": "relu",
}
ACTS = ("gelu_erf", "gelu_quick", "gelu", "silu", "relu")


def act_of(hf_name: str) -> str:
    """Map an HF ``hidden_act`` name to the graphdsl op name.

    Note the one trap: HF's "gelu" is the exact erf form, graphdsl's ``gelu`` the tanh form.
    """
    if hf_name not in HF_ACT:
        raise ValueError(f"[blocks] unknown HF activation {hf_name!r}; known: {sorted(HF_ACT)}")
    return HF_ACT[hf_name]


def activation(x: Tensor, act: str, *, name: str) -> Tensor:
    """act(x) for an op name in ACTS ("gelu_erf", "gelu_quick", "gelu" (tanh), "silu", "relu")."""
    if act not in ACTS:
        raise ValueError(f"[blocks] '{x.graph.qualify(name)}': activation must be one of {ACTS}, got {act!r}")
    return getattr(ops, act)(x, name=name)


def linear(x: Tensor, name: str, n_out: int, *, bias: bool = True, wtype: str = "f32") -> Tensor:
    """y = x W^T + b, with W = ``{name}.weight`` (n_out, n_in) and b = ``{name}.bias`` (n_out,).

    Args:
        x: (..., n_in).
        name: local weight/node name, e.g. "attn_q".
        n_out: output features.
        bias: declare and add ``{name}.bias``.
        wtype: storage type of W ("f32", "f16", "q8_0", ...); biases stay f32.

    Returns:
        (..., n_out), node named ``name``.
    """
    g = x.graph
    w = g.weight(f"{name}.weight", (n_out, x.shape[-1]), wtype)
    if not bias:
        return ops.mul_mat(x, w, name=name)
    y = ops.mul_mat(x, w, name=f"{name}.mm")
    return ops.add(y, g.weight(f"{name}.bias", (n_out,)), name=name)


def norm(x: Tensor, name: str, *, eps: float, kind: str = "layer", bias: bool = True) -> Tensor:
    """Normalisation over the last axis with an affine weight (and bias).

    layer: y = (x - mean) / sqrt(var + eps) * w + b
    rms:   y = x / sqrt(mean(x^2) + eps) * w

    Weights ``{name}.weight`` (and ``{name}.bias``), shape (d,); the output node is ``name``.
    """
    g, d = x.graph, x.shape[-1]
    if kind == "layer":
        y = ops.norm(x, eps, name=f"{name}.norm")
    elif kind == "rms":
        y = ops.rms_norm(x, eps, name=f"{name}.norm")
    else:
        raise ValueError(f"[norm] '{g.qualify(name)}': kind must be 'layer' or 'rms', got {kind!r}")
    w = g.weight(f"{name}.weight", (d,))
    if not bias:
        return ops.mul(y, w, name=name)
    y = ops.mul(y, w, name=f"{name}.scale")
    return ops.add(y, g.weight(f"{name}.bias", (d,)), name=name)


def _split_heads(t: Tensor, n_head: int, name: str) -> Tensor:
    """(..., n, d) -> (..., n_head, n, d / n_head)."""
    *b, n, d = t.shape
    t = ops.reshape(t, (*b, n, n_head, d // n_head), name=f"{name}.heads")
    r = t.ndim
    axes = [*range(r - 3), r - 2, r - 3, r - 1]
    return ops.permute(t, axes, name=f"{name}.perm")


def attention(x: Tensor, n_head: int, *, qkv_bias=(True, True, True), out_bias: bool = True,
              impl: str = "flash", mask: Tensor | None = None, wtype: str = "f32") -> Tensor:
    """Multi-head self-attention with output projection.

        Q = x Wq^T + bq, K = x Wk^T (+ bk), V = x Wv^T + bv      (split into n_head heads)
        A = softmax(Q K^T / sqrt(d_head) + mask) V               (per head)
        y = concat_heads(A) Wo^T + bo

    Weights: ``attn_q``, ``attn_k``, ``attn_v``, ``attn_out`` (each ``.weight`` (d, d), ``.bias`` (d,)).

    Args:
        x: (n, d) or (B, n, d).
        n_head: heads; d must be a multiple.
        qkv_bias: whether q, k, v have a bias (Whisper's k has none).
        out_bias: whether attn_out has a bias.
        impl: "flash" (ops.flash_attn_ext; under precision="f32" the ggml backend lowers it to
            exact f32 softmax attention) or "softmax" (mul_mat + soft_max + mul_mat in the graph).
        mask: optional (n, n) additive mask.
        wtype: storage type of the four projection matrices.

    Returns:
        (.., n, d), node ``attn_out``.
    """
    *b, n, d = x.shape
    if d % n_head:
        raise ValueError(f"[attention] '{x.graph.qualify('attn')}': n_embd {d} is not a multiple of n_head {n_head}")
    scale = 1.0 / math.sqrt(d // n_head)
    q = _split_heads(linear(x, "attn_q", d, bias=qkv_bias[0], wtype=wtype), n_head, "attn_q")
    k = _split_heads(linear(x, "attn_k", d, bias=qkv_bias[1], wtype=wtype), n_head, "attn_k")
    v = _split_heads(linear(x, "attn_v", d, bias=qkv_bias[2], wtype=wtype), n_head, "attn_v")
    if impl == "flash":
        a = ops.flash_attn_ext(q, k, v, mask, scale=scale, name="attn")  # (.., n, h, dh)
    elif impl == "softmax":
        kq = ops.mul_mat(q, k, name="attn_kq")  # (.., h, n, n)
        kq = ops.soft_max(kq, mask, scale=scale, name="attn_soft_max")
        r = v.ndim
        vt = ops.permute(v, [*range(r - 2), r - 1, r - 2], name="attn_v.t")  # (.., h, dh, n)
        kqv = ops.mul_mat(kq, vt, name="attn_kqv")  # (.., h, n, dh)
        a = ops.permute(kqv, [*range(r - 3), r - 2, r - 3, r - 1], name="attn")  # (.., n, h, dh)
    else:
        raise ValueError(f"[attention] '{x.graph.qualify('attn')}': impl must be 'flash' or 'softmax', got {impl!r}")
    a = ops.reshape(a, (*b, n, d), name="attn_merged")
    return linear(a, "attn_out", d, bias=out_bias, wtype=wtype)


def ffn(x: Tensor, n_ff: int, act: str, *, bias: bool = True, wtype: str = "f32") -> Tensor:
    """y = act(x W_up^T + b_up) W_down^T + b_down; weights ``ffn_up`` (n_ff, d), ``ffn_down`` (d, n_ff)."""
    d = x.shape[-1]
    h = linear(x, "ffn_up", n_ff, bias=bias, wtype=wtype)
    h = activation(h, act, name="ffn_act")
    return linear(h, "ffn_down", d, bias=bias, wtype=wtype)


@dataclass(frozen=True)
class VitParams:
    """Hyperparameters of one pre-LN transformer encoder layer (CLIP, SigLIP, Whisper).

    act is an op name from ACTS (see act_of for HF names); norm "layer" or "rms"; attn "flash" or "softmax".
    """

    n_embd: int
    n_head: int
    n_ff: int
    eps: float
    act: str
    norm: str = "layer"
    qkv_bias: tuple[bool, bool, bool] = (True, True, True)
    attn: str = "flash"
    wtype: str = "f32"


def vit_layer(x: Tensor, p: VitParams, mask: Tensor | None = None) -> Tensor:
    """One pre-LN encoder layer:

        h = x + attn_out(attention(ln1(x)))
        y = h + ffn_down(act(ffn_up(ln2(h))))
    """
    h = norm(x, "ln1", eps=p.eps, kind=p.norm)
    h = attention(h, p.n_head, qkv_bias=p.qkv_bias, impl=p.attn, mask=mask, wtype=p.wtype)
    x = ops.add(x, h, name="ffn_inp")
    h = norm(x, "ln2", eps=p.eps, kind=p.norm)
    h = ffn(h, p.n_ff, p.act, wtype=p.wtype)
    return ops.add(x, h, name="layer_out")


def vit(x: Tensor, p: VitParams, n_layer: int, mask: Tensor | None = None) -> list[Tensor]:
    """The generic ViT trunk (llama.cpp's clip_graph::build_vit without its embedding and norms).

    Runs layers ``blk.0`` .. ``blk.{n_layer-1}`` in the caller's scope.

    Returns:
        HF's ``hidden_states``: [x, output of blk.0, ..., output of blk.{n_layer-1}], so
        ``vit(...)[k]`` is ``hidden_states[k]`` and a model can stop early for feature layers.
    """
    hs = [x]
    for il in range(n_layer):
        with x.graph.scope(f"blk.{il}"):
            hs.append(vit_layer(hs[-1], p, mask))
    return hs
