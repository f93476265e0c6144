"""Shared blocks: norm, linear, attention, FFN, the generic pre-LN ViT and patch merging.

The counterpart of llama.cpp's ``llm_graph_context`` (``build_norm``, ``build_ffn``,
``build_attn``) and ``clip_graph::build_vit``. Every block declares its weights by *local* name
inside the caller's scope and names its nodes like llama.cpp's ``cb()``, so that inside
``g.scope("v")`` and ``g.scope("blk.3")`` the query projection is the weight
``v.blk.3.attn_q.weight`` and the node ``v.blk.3.attn_q``. A model that needs something
unusual copies a block rather than adding a flag to it.

| module       | blocks                                                                    |
|--------------|---------------------------------------------------------------------------|
| core.py      | act_of, activation, linear, norm, ffn                                     |
| attention.py | attention (q/k hook, fused or separate qkv, masks of rank 2-4), qk_norm,  |
|              | block_mask / seq_mask (one sequence per image, from HF's cu_seqlens)      |
| vit.py       | VitParams, vit_layer, vit                                                 |
| merge.py     | pixel_shuffle (Idefics3, InternVL), merge_order + patch_merge (Qwen2-VL)  |

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

from ..graph import Graph, Tensor  # noqa: F401 - Graph for the docstring example
from .attention import QKHook, attention, block_mask, qk_norm, seq_mask
from .core import ACTS, HF_ACT, act_of, activation, ffn, linear, norm
from .merge import merge_order, merge_order_index, patch_merge, pixel_shuffle
from .vit import VitParams, vit, vit_layer

__all__ = ["ACTS", "HF_ACT", "QKHook", "VitParams", "act_of", "activation", "attention", "block_mask", "ffn",
           "linear", "merge_order", "merge_order_index", "norm", "patch_merge", "pixel_shuffle", "qk_norm",
           "seq_mask", "vit", "vit_layer"]
