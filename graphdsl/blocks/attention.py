"""Multi-head self-attention with the hooks rotary and packed-image encoders need.

llama.cpp's ``clip_graph::build_attn`` plus what its model files do around it: a q/k hook
between the head split and the product (RoPE variants, q/k norms), fused or separate q/k/v
projections, and additive masks of rank 2 to 4. Several images of different sizes packed into
one sequence attend each only to itself through a block-diagonal mask built from their
lengths (HF's ``cu_seqlens``): ``seq_mask``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from .. import ops
from ..graph import Graph, Tensor
from .core import linear, norm

# hook(q, k, il) -> (q, k); q and k are (..., n, n_head, d_head), il the layer index or None.
QKHook = Callable[[Tensor, Tensor, "int | None"], "tuple[Tensor, Tensor]"]
QKV_LAYOUTS = ("separate", "fused")
_NAMES = ("attn_q", "attn_k", "attn_v")


def _heads(t: Tensor, n_head: int, name: str) -> Tensor:
    """(..., n, d) -> (..., n, n_head, d / n_head): the layout ggml's rope and llama.cpp's hooks see."""
    *b, n, d = t.shape
    return ops.reshape(t, (*b, n, n_head, d // n_head), name=f"{name}.heads")


def _head_major(t: Tensor, name: str) -> Tensor:
    """(..., n, h, dh) -> (..., h, n, dh), the layout the attention ops take."""
    r = t.ndim
    return ops.permute(t, [*range(r - 3), r - 2, r - 3, r - 1], name=f"{name}.perm")


def _check_mask(mask: Tensor, batch: tuple[int, ...], n_head: int, n: int, where: str) -> Tensor:
    """The mask in a shape that soft_max broadcasts over the scores (*batch, n_head, n, n).

    (n, n) is shared; (*batch, n, n) is one per batch entry, shared by the heads, and gets a
    head axis of 1; (*batch, n_head, n, n) is one per head. Each leading dim equals the
    scores' or is 1: ggml tiles masks by index modulo, which only means "broadcast" then.
    """
    shape, r = mask.shape, mask.ndim
    if shape[-2:] != (n, n) or r not in (2, len(batch) + 2, len(batch) + 3):
        raise ValueError(f"{where}: mask {shape} must be (n, n), (*batch, n, n) or (*batch, n_head, n, n) "
                         f"with n = {n}, batch = {batch}, n_head = {n_head}")
    lead = shape[:-2]
    want = batch[:len(lead)] if r <= len(batch) + 2 else (*batch, n_head)
    if r > 2 and any(a not in (1, b) for a, b in zip(lead, want)):
        raise ValueError(f"{where}: mask {shape} leading dims {lead} must each be 1 or equal {want}")
    if r == len(batch) + 2 and r > 2:
        return ops.reshape(mask, (*lead, 1, n, n), name="attn_mask.heads")
    return mask


def attention(x: Tensor, n_head: int, *, qkv: str = "separate", qkv_bias=(True, True, True),
              out_bias: bool = True, qk_hook: QKHook | None = None, il: int | None = None,
              impl: str = "flash", mask: Tensor | None = None, wtype: str = "f32") -> Tensor:
    """Multi-head self-attention with output projection.

        Q = x Wq^T + bq, K = x Wk^T (+ bk), V = x Wv^T + bv      (split into n_head heads)
        Q, K = qk_hook(Q, K, il)                                  (optional)
        A = softmax(Q K^T / sqrt(d_head) + mask) V               (per head)
        y = concat_heads(A) Wo^T + bo

    Weights: ``attn_q``, ``attn_k``, ``attn_v`` (each ``.weight`` (d, d), ``.bias`` (d,)), or one
    ``attn_qkv`` (``.weight`` (3d, d), ``.bias`` (3d,), rows q then k then v, as HF's
    ``qkv`` Linear and llama.cpp's ``v.blk.N.attn_qkv``); ``attn_out``.

    Args:
        x: (n, d) or (B, n, d).
        n_head: heads; d must be a multiple.
        qkv: "separate" or "fused". The nodes ``attn_q``, ``attn_k``, ``attn_v`` exist either way.
        qkv_bias: whether q, k, v have a bias (Whisper's k has none); fused needs all or none.
        out_bias: whether attn_out has a bias.
        qk_hook: ``hook(q, k, il) -> (q, k)`` on q, k (..., n, n_head, d_head) after the head
            split, before the product; it must keep their shapes. It runs in the caller's scope,
            so a weight it declares as ``attn_q_norm.weight`` is ``v.blk.N.attn_q_norm.weight``
            inside ``vit``. See ``qk_norm`` and, for RoPE, ``ops.rope`` (takes (n, h, d_head)).
        il: layer index passed to the hook (``vit`` passes it).
        impl: "flash" (ops.flash_attn_ext; under precision="f32" the ggml backend lowers it to
            exact f32 softmax attention) or "softmax" (mul_mat + soft_max + mul_mat in the
            graph). flash_attn_ext takes only an (n, n) mask, so a mask of rank 3 or 4 uses
            the softmax form whatever impl says.
        mask: optional additive f32/f16 mask: (n, n) shared; (B, n, n) per image of a batched
            x (n, d has none: there (h, n, n) is per head); (B, n_head, n, n) per image and
            head. A leading dim of 1 broadcasts. -inf entries hide a key (see ``seq_mask``);
            every row needs one finite entry.
        wtype: storage type of the projection matrices.

    Returns:
        (.., n, d), node ``attn_out``.
    """
    *b, n, d = x.shape
    where = f"[attention] '{x.graph.qualify('attn')}'"
    if d % n_head:
        raise ValueError(f"{where}: n_embd {d} is not a multiple of n_head {n_head}")
    if impl not in ("flash", "softmax"):
        raise ValueError(f"{where}: impl must be 'flash' or 'softmax', got {impl!r}")
    if qkv not in QKV_LAYOUTS:
        raise ValueError(f"{where}: qkv must be one of {QKV_LAYOUTS}, got {qkv!r}")
    if qkv == "fused" and len(set(qkv_bias)) != 1:
        raise ValueError(f"{where}: a fused attn_qkv has one bias for q, k and v, got qkv_bias={tuple(qkv_bias)}")
    if mask is not None:
        mask = _check_mask(mask, tuple(b), n_head, n, where)
    scale = 1.0 / math.sqrt(d // n_head)

    fused = linear(x, "attn_qkv", 3 * d, bias=qkv_bias[0], wtype=wtype) if qkv == "fused" else None
    heads = []
    for i, name in enumerate(_NAMES):
        t = (ops.view(fused, -1, i * d, (i + 1) * d, name=name) if fused is not None
             else linear(x, name, d, bias=qkv_bias[i], wtype=wtype))
        t = _heads(t, n_head, name)
        # with a hook, q and k turn head-major after it (node order of a hook-free graph unchanged)
        heads.append(t if qk_hook is not None and i < 2 else _head_major(t, name))
    q, k, v = heads
    if qk_hook is not None:
        q2, k2 = qk_hook(q, k, il)
        for got, want, name in ((q2, q, "q"), (k2, k, "k")):
            if not isinstance(got, Tensor) or got.shape != want.shape:
                raise ValueError(f"{where}: qk_hook must return {name} of shape {want.shape} "
                                 f"(..., n, n_head, d_head), got {getattr(got, 'shape', type(got).__name__)}")
        q, k = _head_major(q2, "attn_q"), _head_major(k2, "attn_k")

    if impl == "flash" and (mask is None or mask.ndim == 2):
        a = ops.flash_attn_ext(q, k, v, mask, scale=scale, name="attn")  # (.., n, h, dh)
    else:
        kq = ops.mul_mat(q, k, name="attn_kq")  # (.., h, n, n)
        kq = ops.soft_max(kq, mask, scale=scale, name="attn_soft_max")
        r = v.ndim
        vt = ops.permute(v, [*range(r - 2), r - 1, r - 2], name="attn_v.t")  # (.., h, dh, n)
        kqv = ops.mul_mat(kq, vt, name="attn_kqv")  # (.., h, n, dh)
        a = ops.permute(kqv, [*range(r - 3), r - 2, r - 3, r - 1], name="attn")  # (.., n, h, dh)
    a = ops.reshape(a, (*b, n, d), name="attn_merged")
    return linear(a, "attn_out", d, bias=out_bias, wtype=wtype)


def qk_norm(eps: float, *, kind: str = "rms", per_head: bool = True, bias: bool = False) -> QKHook:
    """A qk_hook that normalises q and k: weights ``attn_q_norm`` and ``attn_k_norm``.

        q <- norm(q) * w_q (+ b_q),  k <- norm(k) * w_k (+ b_k)

    per_head=True normalises each head over d_head (weights (d_head,), as Qwen3's q_norm);
    False over the whole width d (weights (d,), as InternViT's qk_normalization), reshaping
    (n, h, d_head) to (n, d) and back.
    """
    def hook(q: Tensor, k: Tensor, il: int | None) -> tuple[Tensor, Tensor]:
        out = []
        for t, name in ((q, "attn_q_norm"), (k, "attn_k_norm")):
            if per_head:
                out.append(norm(t, name, eps=eps, kind=kind, bias=bias))
                continue
            *b, n, h, dh = t.shape
            y = norm(ops.reshape(t, (*b, n, h * dh), name=f"{name}.in"), name, eps=eps, kind=kind, bias=bias)
            out.append(ops.reshape(y, t.shape, name=f"{name}.heads"))
        return out[0], out[1]
    return hook


def block_mask(lengths: Sequence[int] | Sequence[Sequence[int]], dtype=np.float32) -> np.ndarray:
    """The additive mask that keeps each sequence of a packed batch to itself.

        M[i, j] = 0     if tokens i and j belong to the same sequence
                  -inf  otherwise

    With HF's ``cu_seqlens`` (k + 1,) the lengths are ``np.diff(cu_seqlens)``.

    Args:
        lengths: (k,) sequence lengths >= 0 summing to N > 0, in packing order; or B such lists
            with one sum N, for a (B, N, N) mask (one packing per batch entry).
        dtype: NumPy float type of the result.

    Returns:
        (N, N), or (B, N, N) for nested lengths.
    """
    if len(lengths) and isinstance(lengths[0], (Sequence, np.ndarray)):
        ms = [block_mask(ls, dtype) for ls in lengths]
        if len({m.shape for m in ms}) != 1:
            raise ValueError(f"[block_mask] per-batch lengths must sum to one N, got sums {[len(m) for m in ms]}")
        return np.stack(ms)
    ls = np.asarray(lengths)
    if ls.ndim != 1 or not np.issubdtype(ls.dtype, np.integer) or (ls < 0).any() or ls.sum() <= 0:
        raise ValueError(f"[block_mask] lengths must be integers >= 0 with a positive sum, got {list(lengths)}")
    seg = np.repeat(np.arange(len(ls)), ls)
    return np.where(seg[:, None] == seg[None, :], 0.0, -np.inf).astype(dtype)


def seq_mask(g: Graph, lengths: Sequence[int] | Sequence[Sequence[int]], *, name: str = "attn_mask") -> Tensor:
    """``block_mask(lengths)`` as an f32 graph constant, ready for ``attention(mask=...)``.

    A fixed constant: the packing is data, not a function of any input's shape. Re-planning
    for another token count fails in attention's mask check rather than reusing a stale mask.

    Args:
        g: the graph.
        lengths: per-sequence lengths (k,) or (B, k) as in ``block_mask``.
        name: local node name (qualified by the scope; suffixed if taken).

    Returns:
        (N, N) or (B, N, N) f32.
    """
    return g.const(name, block_mask(lengths, np.float32), dtype="f32")
