"""The small blocks every encoder uses: activation, linear, norm and the feed-forward network.

llama.cpp's ``build_norm`` / ``build_ffn``. Weights are declared by *local* name in the caller's
scope, so ``linear(x, "attn_q", ...)`` inside ``g.scope("v")`` and ``g.scope("blk.3")`` is the
weight ``v.blk.3.attn_q.weight`` and the node ``v.blk.3.attn_q``.
"""
from __future__ import annotations

from .. import dtypes as dt
from .. import ops
from ..graph import Tensor

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
    shape = (n_out, x.shape[-1])
    # the storage policy the converter writes files with (a quantized wtype over rows that are not
    # whole blocks gives f16, as in the file), so a graph built from a config declares what a file holds
    w = g.weight(f"{name}.weight", shape, dt.storage_type(g.qualify(f"{name}.weight"), shape, wtype))
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


def ffn(x: Tensor, n_ff: int, act: str, *, bias: bool = True, wtype: str = "f32", gated: bool = False) -> Tensor:
    """The MLP of a transformer layer; weights ``ffn_up`` (n_ff, d), ``ffn_down`` (d, n_ff).

    plain: ``y = act(x W_up^T + b_up) W_down^T + b_down``;
    gated (SwiGLU/GeGLU, llama.cpp's ``ffn_gate``): ``y = (act(x W_gate^T + b_gate) * (x W_up^T + b_up)) W_down^T + b_down``.
    """
    d = x.shape[-1]
    up = linear(x, "ffn_up", n_ff, bias=bias, wtype=wtype)
    if gated:
        gate = activation(linear(x, "ffn_gate", n_ff, bias=bias, wtype=wtype), act, name="ffn_act")
        h = ops.mul(gate, up, name="ffn_gated")
    else:
        h = activation(up, act, name="ffn_act")
    return linear(h, "ffn_down", d, bias=bias, wtype=wtype)
