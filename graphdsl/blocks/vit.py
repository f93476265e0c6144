"""The generic pre-LN transformer encoder (llama.cpp's ``clip_graph::build_vit`` trunk)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .. import ops
from ..graph import Tensor
from .attention import QKHook, attention
from .core import ffn, norm


@dataclass(frozen=True)
class VitParams:
    """Hyperparameters of one pre-LN transformer encoder layer (CLIP, SigLIP, Whisper, Qwen2-VL).

    act is an op name from ACTS (see act_of for HF names); norm "layer" or "rms"; attn "flash"
    or "softmax"; qkv "separate" (attn_q/k/v) or "fused" (one attn_qkv); ffn "plain" (up, act,
    down) or "gated" (SwiGLU: act(gate) * up, then down; Qwen2.5-VL, Pixtral); ffn_bias whether the
    FFN's linears have biases.
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
    qkv: str = "separate"
    ffn: str = "plain"
    ffn_bias: bool = True

    def __post_init__(self):
        if self.ffn not in ("plain", "gated"):
            raise ValueError(f"[vit] ffn must be 'plain' or 'gated', got {self.ffn!r}")


def vit_layer(x: Tensor, p: VitParams, mask: Tensor | None = None, *, qk_hook: QKHook | None = None,
              il: int | None = None) -> Tensor:
    """One pre-LN encoder layer:

        h = x + attn_out(attention(ln1(x)))
        y = h + ffn_down(act(ffn_up(ln2(h))))        (ffn="gated": ffn_down(act(ffn_gate(.)) * ffn_up(.)))

    mask, qk_hook and il go to ``attention``.
    """
    nb = p.norm == "layer"  # RMSNorm layers (Qwen2.5-VL, Pixtral) have no bias, in HF and in llama.cpp's files
    h = norm(x, "ln1", eps=p.eps, kind=p.norm, bias=nb)
    h = attention(h, p.n_head, qkv=p.qkv, qkv_bias=p.qkv_bias, impl=p.attn, mask=mask, wtype=p.wtype,
                  qk_hook=qk_hook, il=il)
    x = ops.add(x, h, name="ffn_inp")
    h = norm(x, "ln2", eps=p.eps, kind=p.norm, bias=nb)
    h = ffn(h, p.n_ff, p.act, wtype=p.wtype, bias=p.ffn_bias, gated=p.ffn == "gated")
    return ops.add(x, h, name="layer_out")


def vit(x: Tensor, p: VitParams, n_layer: int, mask: Tensor | Sequence[Tensor | None] | None = None, *,
        qk_hook: QKHook | None = None) -> list[Tensor]:
    """The generic ViT trunk (llama.cpp's clip_graph::build_vit without its embedding and norms).

    Runs layers ``blk.0`` .. ``blk.{n_layer-1}`` in the caller's scope.

    Args:
        x: (n, d) or (B, n, d).
        p: the layer hyperparameters.
        n_layer: layers to run.
        mask: one additive mask for every layer (see ``attention``), or one per layer (None
            for none), as Qwen2.5-VL's window layers and full-attention layers differ.
        qk_hook: ``hook(q, k, il)`` called in every layer with its index (see ``attention``).

    Returns:
        HF's ``hidden_states``: [x, output of blk.0, ..., output of blk.{n_layer-1}], so
        ``vit(...)[k]`` is ``hidden_states[k]`` and a model can stop early for feature layers.
    """
    masks = [mask] * n_layer if mask is None or isinstance(mask, Tensor) else list(mask)
    if len(masks) != n_layer:
        raise ValueError(f"[vit] '{x.graph.qualify('blk')}': {len(masks)} masks for {n_layer} layers")
    hs = [x]
    for il in range(n_layer):
        with x.graph.scope(f"blk.{il}"):
            hs.append(vit_layer(hs[-1], p, masks[il], qk_hook=qk_hook, il=il))
    return hs
