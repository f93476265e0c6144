"""build_inp_embd: the one place where pre-processed inputs become embeddings.

A registry of input kinds, in the spirit of llama.cpp's ``build_inp_embd``: a new modality
registers one entry (``@register_input_kind``) instead of editing a switch.

| kind       | input                  | graph                                                          |
|------------|------------------------|----------------------------------------------------------------|
| text       | i32 ids (n,)           | get_rows(token_embd, ids) [BERT: + token_types[0] + position_embd[:n], LayerNorm] |
| image      | f32 ([B,] 3, H, W)     | conv2d(patch_embd, stride p) [+ bias] -> ([B,] n, d) [class_embd first] + position_embd |
| audio      | f32 ([B,] n_mel, T)    | conv1d(k3,s1,p1)+GELU, conv1d(k3,s2,p1)+GELU -> ([B,] T/2, d) + position_embd[:T/2] |
| embeddings | f32 (n, d)             | passthrough                                                    |

Weight names are local (``patch_embd.weight``); the caller's scope gives the prefix (``v.``,
``a.``), so the names are llama.cpp's mmproj names (gguf ``MODEL_TENSOR.V_ENC_EMBD_PATCH`` ...).

Position embeddings of images whose patch grid differs from the trained one are resized as
HF's ``interpolate_pos_encoding=True`` does (``torch.nn.functional.interpolate``, bicubic,
A = -0.75, align_corners=False, border-clamped taps). Bicubic resizing is linear and separable,
so it runs in the graph as two matrix products with constant matrices computed here in NumPy.
They are ``const`` nodes computed from the pixels' shape, so an executor called with another
image size recomputes them. Where the graph's structure itself depends on the input size (no
resize at the trained grid, the first n rows of a position table), a shape guard (a constant
pinned to the shape, needed by no output) makes such a call raise ValueError instead of reusing
rows for the wrong positions.

Example:
    >>> g = Graph("clip_embd")
    >>> px = g.input("pixels", (3, 224, 160))
    >>> with g.scope("v"):
    ...     x = build_inp_embd("image", px, n_embd=64, patch_size=16, image_size=224, class_embd=True)
    >>> x.shape                                   # 1 + 14 * 10 positions
    (141, 64)
    >>> run({"pixels": pixels})                   # doctest: +SKIP
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import blocks, ops
from .graph import Graph, Tensor


@dataclass(frozen=True)
class InputKind:
    """One entry of the registry: the input's dtype and ranks, and the builder."""

    name: str
    dtype: str
    ranks: tuple[int, ...]
    build: Callable[..., Tensor]
    doc: str


INPUT_KINDS: dict[str, InputKind] = {}


def register_input_kind(name: str, dtype: str, ranks: tuple[int, ...]):
    """Decorator: register ``fn(x: Tensor, **params) -> Tensor`` as the builder of input kind ``name``."""
    def deco(fn):
        if name in INPUT_KINDS:
            raise RuntimeError(f"input kind {name!r} registered twice")
        INPUT_KINDS[name] = InputKind(name, dtype, ranks, fn, (fn.__doc__ or "").strip().split("\n")[0])
        return fn
    return deco


def build_inp_embd(kind: str, x: Tensor, **params) -> Tensor:
    """Turn a pre-processed input tensor of kind ``kind`` into embeddings (see the table above)."""
    k = INPUT_KINDS.get(kind)
    if k is None:
        raise ValueError(f"[build_inp_embd] unknown input kind {kind!r}; registered: {sorted(INPUT_KINDS)}")
    if x.dtype.name != k.dtype or x.ndim not in k.ranks:
        raise ValueError(f"[build_inp_embd] '{kind}' input %{x.name} must be {k.dtype} of rank "
                         f"{'/'.join(map(str, k.ranks))}, got {x.dtype.name}{list(x.shape)}")
    return k.build(x, **params)


# -- constants and shape guards ----------------------------------------------------------------------
def constants(g: Graph) -> dict[str, np.ndarray]:
    """Deprecated: constants are ``const`` nodes that executors evaluate; there is nothing to feed."""
    warnings.warn("graphdsl.inp_embd.constants() is deprecated: constants are graph nodes now "
                  "(Graph.const), executors need no feed for them", DeprecationWarning, stacklevel=2)
    return {}


def shape_guard(g: Graph, name: str, t: Tensor, why: str, same: Callable[..., tuple] | None = None) -> None:
    """Make a later change of ``t``'s shape raise ValueError (at ``Graph.specialize``), saying why.

    ``same(shape)`` gives the part of the shape the graph depends on (default: all of it); the
    guard is a constant computed from it that no output needs, so executors never evaluate it.
    """
    key = same(t.shape) if same else tuple(t.shape)

    def guard(shape):
        now = same(shape) if same else tuple(shape)
        if now != key:
            raise ValueError(f"{why}: built for {key}, got {now}; build the graph for this shape")
        return np.zeros(1, np.int32)
    guard.__name__ = "shape_guard"
    g.const(name, guard, shape_of=[t])


# -- bicubic resizing as a matrix ---------------------------------------------------------------------
def f32_table(g: Graph, name: str, shape: tuple[int, ...]) -> Tensor:
    """A small learned table (position, class, token-type rows) as f32, whatever the file stores.

    llama.cpp's converters write 2-D tables in the file's type (legacy LLaVA's f16 position
    table, Whisper's f16/bf16 ``a.position_embd``), and ggml's add does not take an f16 or bf16
    operand on every backend: the graph casts it (in ggml, never in Python at load).
    """
    w = g.weight(name, shape)
    return w if w.dtype.name == "f32" else ops.cast(w, "f32", name=f"{name.removesuffix('.weight')}.f32")


def bicubic_matrix(n_in: int, n_out: int, a: float = -0.75) -> np.ndarray:
    """M (n_out, n_in) with M @ x == torch's 1-D bicubic resize of x (align_corners=False).

    torch (aten/src/ATen/native/UpSample.h): src = scale * (dst + 0.5) - 0.5 with
    scale = n_in / n_out, i0 = floor(src), t = src - i0, taps i0-1 .. i0+2 clamped to the
    border, weights from the cubic convolution kernel with A = -0.75. The source index and t are
    computed in float32 as torch does for float32 tensors.
    """
    def k1(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def k2(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    m = np.zeros((n_out, n_in), np.float64)
    scale = np.float32(n_in) / np.float32(n_out)
    for o in range(n_out):
        src = scale * np.float32(o + 0.5) - np.float32(0.5)
        i0 = int(np.floor(src))
        t = np.float32(src - np.float32(i0))
        w = (k2(t + np.float32(1)), k1(t), k1(np.float32(1) - t), k2(np.float32(2) - t))
        for j, wj in enumerate(w):
            m[o, min(max(i0 - 1 + j, 0), n_in - 1)] += float(wj)
    return m


def resize_pos_embd(pos: Tensor, grid_in: tuple[int, int], pixels: Tensor, patch_size: int) -> Tensor:
    """Bicubic resize of a (gh*gw, d) position table to the pixels' grid (nh*nw, d), as two mat-muls.

        P' = M_h · P · M_w^T    per channel, with P viewed as (gh, gw)

    M_h, M_w are constants computed from the pixels' shape (nh = H // p, nw = W // p), so they
    follow the image size when the graph is specialized.
    """
    g, ps = pos.graph, patch_size
    (gh, gw), d = grid_in, pos.shape[-1]
    nh, nw = pixels.shape[-2] // ps, pixels.shape[-1] // ps
    mw = g.const("pos_resize_w", lambda s: bicubic_matrix(gw, s[-1] // ps), shape_of=[pixels])  # (nw, gw)
    mh = g.const("pos_resize_h", lambda s: bicubic_matrix(gh, s[-2] // ps), shape_of=[pixels])  # (nh, gh)
    # cont: ggml's CPU mul_mat needs x's last axis contiguous (the lowering checks only for transposes)
    p = ops.cont(ops.permute(ops.reshape(pos, (gh, gw, d)), (2, 0, 1)), name="pos_resize.chw")  # (d, gh, gw)
    p = ops.mul_mat(p, mw, name="pos_resize.w")  # (d, gh, nw)
    p = ops.permute(p, (0, 2, 1), name="pos_resize.w_t")  # (d, nw, gh)
    p = ops.mul_mat(p, mh, name="pos_resize.h")  # (d, nw, nh)
    p = ops.permute(p, (2, 1, 0), name="pos_resize.h_t")  # (nh, nw, d)
    return ops.reshape(p, (nh * nw, d), name="pos_resize")


# -- the kinds --------------------------------------------------------------------------------------
@register_input_kind("text", "i32", (1,))
def text_embd(ids: Tensor, *, n_vocab: int, n_embd: int, wtype: str = "f32", n_pos: int = 0,
              n_types: int = 0, norm_eps: float | None = None) -> Tensor:
    """Token ids -> embeddings: get_rows(token_embd, ids), optionally BERT's extras.

        x = token_embd[ids] (+ token_types[0] + position_embd[0:n])  (then LayerNorm(token_embd_norm))

    Args:
        ids: i32 (n,).
        n_vocab, n_embd: table shape; wtype its storage ("f32", "f16", "q8_0", ...).
        n_pos: rows of a learned position table (0: none).
        n_types: rows of a token-type table (0: none); type 0 is added, as BERT's default.
        norm_eps: LayerNorm epsilon of ``token_embd_norm`` (None: no norm).
    """
    g, n = ids.graph, ids.shape[0]
    x = ops.get_rows(g.weight("token_embd.weight", (n_vocab, n_embd), wtype), ids, name="inp_embd.tok")
    if n_types:
        types = f32_table(g, "token_types.weight", (n_types, n_embd))
        x = ops.add(x, ops.view(types, 0, 0, 1, name="inp_embd.type0"), name="inp_embd.types")
    if n_pos:
        if n > n_pos:
            raise ValueError(f"[text_embd] {n} tokens exceed the {n_pos} learned positions")
        pos = f32_table(g, "position_embd.weight", (n_pos, n_embd))
        shape_guard(g, "inp_embd.pos_guard", ids, "[text_embd] position rows 0..n-1 are fixed at build time")
        x = ops.add(x, ops.view(pos, 0, 0, n, name="inp_embd.pos_rows"), name="inp_embd.pos")
    if norm_eps is not None:
        x = blocks.norm(x, "token_embd_norm", eps=norm_eps)
    return x


@register_input_kind("image", "f32", (3, 4))
def image_embd(pixels: Tensor, *, n_embd: int, patch_size: int, image_size: int, class_embd: bool = False,
               patch_bias: bool = False) -> Tensor:
    """Pixels -> patch embeddings with position embedding (CLIP / SigLIP / ViT).

        x = flatten(conv2d(pixels, patch_embd, stride=p)) (+ patch_embd.bias)   ([B,] gh*gw, d)
        x = [class_embd; x]                                  (with class_embd)
        x = x + position_embd  (resized bicubically when (gh, gw) != trained (image_size/p)^2)

    Args:
        pixels: f32 (3, H, W) or (B, 3, H, W); H and W need not be the trained size nor equal.
        n_embd: hidden size d.
        patch_size: p; the grid is (H // p, W // p).
        image_size: the trained size, giving the position table's grid (image_size // p)^2.
        class_embd: prepend the learned ``class_embd`` token (CLIP), position 0 as in HF.
        patch_bias: the patch convolution has a bias (SigLIP).
    """
    g, p = pixels.graph, patch_size
    *b, c, h, w = pixels.shape
    gh, gw, g0 = h // p, w // p, image_size // p
    if gh < 1 or gw < 1:
        raise ValueError(f"[image_embd] image {h}x{w} is smaller than one {p}x{p} patch")
    n = gh * gw
    x = ops.conv_2d(g.weight("patch_embd.weight", (n_embd, c, p, p)), pixels, stride=p, name="patch_embd.conv")
    x = ops.reshape(x, (*b, n_embd, n), name="patch_embd.flat")
    x = ops.permute(x, (*range(len(b)), len(b) + 1, len(b)), name="patch_embd.t")  # ([B,] n, d)
    if patch_bias:
        x = ops.add(x, g.weight("patch_embd.bias", (n_embd,)), name="patch_embd")
    n_cls = int(class_embd)
    if class_embd:
        cls = ops.reshape(f32_table(g, "class_embd", (n_embd,)), (*[1] * len(b), 1, n_embd), name="inp_cls.tok")
        if b:
            cls = ops.repeat(cls, (*b, 1, n_embd), name="inp_cls.rep")
        x = ops.concat([cls, x], axis=-2, name="inp_cls")
    pos = f32_table(g, "position_embd.weight", (g0 * g0 + n_cls, n_embd))
    if (gh, gw) != (g0, g0):
        table = ops.view(pos, 0, n_cls, n_cls + g0 * g0, name="pos_patches") if class_embd else pos
        table = resize_pos_embd(table, (g0, g0), pixels, p)
        if class_embd:
            table = ops.concat([ops.view(pos, 0, 0, 1, name="pos_cls"), table], axis=0, name="pos_all")
        pos = table
    else:
        shape_guard(g, "pos_grid_guard", pixels, "[image_embd] the trained grid needs no position resize, so "
                    "this graph has none", same=lambda s: (s[-2] // p, s[-1] // p))
    return ops.add(x, pos, name="inp_pos")


@register_input_kind("audio", "f32", (2, 3))
def audio_embd(mel: Tensor, *, n_embd: int, n_pos: int) -> Tensor:
    """Log-mel -> frame embeddings (Whisper's conv stem).

        x = GELU(conv1d(mel, conv1d.1, k=3, s=1, p=1) + b1)
        x = GELU(conv1d(x,   conv1d.2, k=3, s=2, p=1) + b2)     ([B,] d, T/2)
        x = x^T + position_embd[0:T/2]                          ([B,] T/2, d)

    GELU is the exact erf form (torch's default).

    Args:
        mel: f32 (n_mel, T) or (B, n_mel, T), T even; B = several 30 s windows of one clip.
        n_embd: hidden size d.
        n_pos: rows of the position table (Whisper: 1500 for T = 3000).
    """
    g = mel.graph
    *b, n_mel, t = mel.shape
    if (t + 1) // 2 > n_pos:
        raise ValueError(f"[audio_embd] {t} frames give {(t + 1) // 2} positions, the table has {n_pos}")
    x = mel
    for i, (c_in, stride) in enumerate(((n_mel, 1), (n_embd, 2)), start=1):
        w = g.weight(f"conv1d.{i}.weight", (n_embd, c_in, 3))
        x = ops.conv_1d(w, x, stride=stride, padding=1, name=f"conv1d.{i}.conv")
        bias = ops.reshape(g.weight(f"conv1d.{i}.bias", (n_embd,)), (n_embd, 1), name=f"conv1d.{i}.bias_col")
        x = ops.add(x, bias, name=f"conv1d.{i}.b")
        x = ops.gelu_erf(x, name=f"conv1d.{i}")
    n = x.shape[-1]
    x = ops.permute(x, (*range(len(b)), len(b) + 1, len(b)), name="conv1d.t")  # ([B,] n, d)
    pos = f32_table(g, "position_embd.weight", (n_pos, n_embd))
    if n != n_pos:
        shape_guard(g, "pos_guard", mel, "[audio_embd] position rows 0..T/2-1 are fixed at build time",
                    same=lambda s: s[-1])
    return ops.add(x, pos if n == n_pos else ops.view(pos, 0, 0, n, name="pos_rows"), name="inp_pos")


@register_input_kind("embeddings", "f32", (2,))
def embeddings_passthrough(x: Tensor, *, n_embd: int | None = None) -> Tensor:
    """Precomputed embeddings (n, d) pass through unchanged."""
    if n_embd is not None and x.shape[-1] != n_embd:
        raise ValueError(f"[embeddings] %{x.name} has width {x.shape[-1]}, the decoder expects {n_embd}")
    return x
