"""Rotary position embedding: ggml's four layouts as one op, and Pixtral's 2-D RoPE composed of it.

x is (n_tokens, n_head, head_dim) f32; the op rotates pairs of x's elements by angles
`freq_scale * p * freq_base ** (-2 j / n)`, j the pair's frequency index:

| mode     | pairs rotated           | positions `pos` (i32)       | ggml                                |
|----------|-------------------------|-----------------------------|-------------------------------------|
| normal   | (2j, 2j+1), j < n_dims/2 | (n_tokens,)                 | ggml_rope_ext, GGML_ROPE_TYPE_NORMAL |
| neox     | (j, j + n_dims/2)       | (n_tokens,)                 | ggml_rope_ext, GGML_ROPE_TYPE_NEOX   |
| mrope    | (j, j + n_dims/2)       | (4, n_tokens): rows t,h,w,e | ggml_rope_multi, GGML_ROPE_TYPE_MROPE |
| vision   | (j, j + head_dim/2)     | (4, n_tokens): rows h,w,-,- | ggml_rope_multi, GGML_ROPE_TYPE_VISION |

`sections` (mrope and vision) counts *pairs* per position row, in row order: pair j takes its
position from the row whose section holds j. mrope keeps one frequency ladder over all pairs
(n = n_dims, as HF's Qwen2-VL text M-RoPE with `mrope_section`); vision restarts it in every
section with n = head_dim/2 (HF's Qwen2-VL / Qwen2.5-VL VisionRotaryEmbedding with
sections (head_dim/4, head_dim/4), rows h and w). Multi-row positions are (4, n_tokens) because
ggml reads four rows whatever the sections (it indexes pos[i + 3 n] for every token); rows
that no section names are never used for an angle, so any values do there.

Pixtral's 2-D RoPE gives h the even and w the odd frequencies of one ladder: `rope_2d` below
composes it from two `rope` nodes, as llama.cpp's mtmd does (build_rope_2d).
"""
from __future__ import annotations

import math

import numpy as np

from .. import dtypes as dt
from .registry import FLOAT, INT32_MAX, api, emit, need, need_dtype, register

# ggml.h's GGML_ROPE_TYPE_* values (libggml 0.20.2)
GGML_ROPE_TYPE = {"normal": 0, "neox": 2, "mrope": 8, "vision": 24}
MULTI = ("mrope", "vision")  # the modes lowered to ggml_rope_multi
N_SECTIONS = 4  # GGML_MROPE_SECTIONS: position rows ggml reads per token


def _rope_infer(x, pos, *, n_dims, mode, freq_base, freq_scale, sections=None):
    need_dtype(x, FLOAT, "x")
    need_dtype(pos, (dt.i32,), "pos")
    need(mode in GGML_ROPE_TYPE, f"mode must be one of {list(GGML_ROPE_TYPE)}, got {mode!r}")
    need(len(x.shape) == 3, f"x must be (n_tokens, n_head, head_dim), got {x.shape}")
    n, heads, d = x.shape
    # ggml copies the unrotated tail two elements at a time: an odd head_dim would write past the row
    need(d % 2 == 0, f"head_dim {d} must be even")
    need(n * heads <= INT32_MAX, f"n_tokens * n_head = {n * heads} rows must fit a 32-bit int")
    need(math.isfinite(freq_base) and freq_base > 0 and math.isfinite(freq_scale) and freq_scale > 0,
         f"freq_base {freq_base} and freq_scale {freq_scale} must be positive and finite")
    need(n_dims % 2 == 0 and 0 < n_dims <= d, f"n_dims {n_dims} must be even and in 2..{d}")
    if mode not in MULTI:
        need(sections is None, f"sections are for modes {MULTI}, not {mode!r}")
        need(pos.shape == (n,), f"pos must be (n_tokens,) = ({n},) for mode {mode!r}, got {pos.shape}")
        return x.shape, x.dtype
    need(pos.shape == (N_SECTIONS, n),
         f"pos must be ({N_SECTIONS}, n_tokens) = ({N_SECTIONS}, {n}) for mode {mode!r}, got {pos.shape}")
    need(sections is not None and len(sections) == N_SECTIONS and all(s >= 0 for s in sections),
         f"sections must be {N_SECTIONS} counts >= 0, got {sections}")
    need(any(sections[:3]), f"sections {sections}: one of the first three must be > 0")
    if mode == "vision":
        # ggml asserts n_dims == head_dim / 2 for VISION: the op rotates the whole head
        need(n_dims == d, f"mode 'vision' rotates the whole head: n_dims {n_dims} must be head_dim {d}")
        # ggml restarts a section's ladder where the previous one ends; after an empty section it
        # restarts the wrong row's (ggml_mrope_cache_init), so empty sections only at the end
        used = [s > 0 for s in sections]
        need(used[0] and used == sorted(used, reverse=True),
             f"mode 'vision': sections {tuple(sections)} must be > 0 up to the last non-empty one")
    need(sum(sections) == n_dims // 2,
         f"sections {tuple(sections)} must add up to n_dims / 2 = {n_dims // 2} pairs, got {sum(sections)}")
    return x.shape, x.dtype


def rope_angles(pos, *, n_dims, mode, freq_base, freq_scale, sections=None):
    """Angles (n_tokens, n_pairs) in float64 and the element pairs (i0, i1) they rotate."""
    pos = np.asarray(pos, np.int64).astype(np.float64)
    half = n_dims // 2
    j = np.arange(half)
    if mode == "normal":
        return freq_scale * np.outer(pos, freq_base ** (-2.0 * j / n_dims)), (2 * j, 2 * j + 1)
    if mode == "neox":
        return freq_scale * np.outer(pos, freq_base ** (-2.0 * j / n_dims)), (j, j + half)
    starts = np.cumsum([0, *sections[:-1]])
    row = np.searchsorted(np.cumsum(sections), j, side="right")  # the section holding pair j
    if mode == "vision":  # the ladder restarts per section, over head_dim / 2 = n_dims / 2
        return freq_scale * pos[row].T * freq_base ** (-4.0 * (j - starts[row]) / n_dims), (j, j + half)
    return freq_scale * pos[row].T * freq_base ** (-2.0 * j / n_dims), (j, j + half)


def _rope_ref(x, pos, *, n_dims, mode, freq_base, freq_scale, sections=None):
    theta, (i0, i1) = rope_angles(pos, n_dims=n_dims, mode=mode, sections=sections, freq_base=freq_base,
                                  freq_scale=freq_scale)
    cos, sin = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]
    a, b = x[..., i0], x[..., i1]
    out = x.copy()
    out[..., i0], out[..., i1] = a * cos - b * sin, a * sin + b * cos
    return out


def _rope_flops(out, ins, *, n_dims, **a):
    return 3 * out[0] * out[1] * n_dims  # per rotated pair: 4 multiplies, 2 adds


register("rope", _rope_infer, _rope_ref, _rope_flops,
         "rotary position embedding on (n_tokens, n_head, head_dim); mode normal (pairs 2j, 2j+1), "
         "neox (j, j + n/2), mrope (neox pairs, positions (4, n_tokens) by sections of pairs) or vision "
         "(whole head, ladder restarted per section)", kind="arithmetic")


@api
def rope(x, pos, *, n_dims: int | None = None, mode: str = "normal", sections=None, freq_base: float = 10000.0,
         freq_scale: float = 1.0, name=None):
    """Rotary embedding of x (n_tokens, n_head, head_dim) at int32 positions.

    Pair j (see the modes in this module's docstring) turns by
    `freq_scale * p * freq_base ** (-2 k / n)`: k = j and n = n_dims, except in mode "vision"
    where k counts from the start of j's section and n = head_dim / 2.

    Args:
        x: (n_tokens, n_head, head_dim) f32, head_dim even.
        pos: i32 (n_tokens,) for "normal" / "neox"; (4, n_tokens) for "mrope" (rows t, h, w, e)
            and "vision" (rows h, w; rows 2 and 3 unread unless sections name them).
        n_dims: dims rotated from the front of the head (default: all); "vision" rotates all.
        mode: "normal", "neox", "mrope" or "vision".
        sections: pairs per position row, up to 4 (padded with zeros), adding up to n_dims / 2.
            Required for "mrope" (HF's `mrope_section`, e.g. (16, 24, 24) for head_dim 128);
            "vision" defaults to (head_dim/4, head_dim/4).
        freq_base, freq_scale: the frequency ladder's base and a factor on every angle.

    Example:
        >>> from graphdsl import Graph, ops
        >>> g = Graph("r"); q = g.input("q", (6, 2, 16)); p = g.input("p", (4, 6), "i32")
        >>> ops.rope(q, p, mode="vision", freq_base=10000.0)   # Qwen2-VL's vision rotary
        Tensor(%rope : f32[6,2,16])
    """
    d = x.shape[-1]
    n_dims = int(d if n_dims is None else n_dims)
    if mode == "vision" and sections is None and d % 4 == 0:
        sections = (d // 4, d // 4)
    if sections is not None:
        sections = tuple(int(s) for s in sections)
        sections = sections + (0,) * (N_SECTIONS - len(sections)) if len(sections) < N_SECTIONS else sections
    attrs = {"n_dims": n_dims, "mode": mode, "sections": sections, "freq_base": float(freq_base),
             "freq_scale": float(freq_scale)}
    return emit("rope", [x, pos], attrs, name)


@api
def rope_2d(x, pos, *, freq_base: float = 10000.0, layout: str = "normal", name=None):
    """Pixtral's 2-D RoPE: x (n_tokens, n_head, head_dim) at patch rows pos[0] and columns pos[1].

    HF's PixtralVisionRotaryEmbedding gives the h half of the pairs the even frequencies of one
    ladder over head_dim (`freq_base ** (-4 k / head_dim)`) and the w half the odd ones (the same
    times `freq_base ** (-2 / head_dim)`): two `rope` nodes of n_dims head_dim/2 have exactly those
    ladders, the second with that factor as freq_scale (llama.cpp's mtmd, build_rope_2d).

    Args:
        x: (n_tokens, n_head, head_dim) f32, head_dim a multiple of 4.
        pos: i32 (2 or 4, n_tokens): row 0 the patch row, row 1 the patch column (the array
            `grid_positions` builds serves this and mode "vision" alike).
        layout: "normal" for q/k as llama.cpp's converter writes them (the HF q/k weights permuted
            by `neox_to_normal`, as in every Pixtral mmproj file): h on the first half of the head,
            w on the second, each in adjacent pairs. "neox" for HF's own q/k: h on dims
            [0, d/4) + [d/2, 3d/4), w on the others, pairs (j, j + d/4) within each.
    """
    if (layout not in ("normal", "neox") or len(x.shape) != 3 or x.shape[-1] % 4 or len(pos.shape) != 2
            or pos.shape[0] not in (2, 4) or pos.shape[1] != x.shape[0]):
        raise ValueError(f"[rope_2d] node '{name or 'rope_2d'}': x {x.shape}, pos {pos.shape}, layout {layout!r}: "
                         "need x (n_tokens, n_head, head_dim % 4 == 0), pos (2 or 4, n_tokens), "
                         "layout 'normal' or 'neox'")
    n, heads, d = x.shape
    from .shape import concat, reshape, view
    sub = (lambda s: f"{name}.{s}") if name else (lambda s: None)
    rows = [reshape(view(pos, 0, r, r + 1, name=sub(f"pos{r}")), n, name=sub(f"pos{r}_1d")) for r in (0, 1)]
    odd = freq_base ** (-2.0 / d)
    if layout == "normal":
        parts = [rope(view(x, -1, i * d // 2, (i + 1) * d // 2, name=sub(f"x{hw}")), rows[i], mode="normal",
                      freq_base=freq_base, freq_scale=(1.0, odd)[i], name=sub(hw)) for i, hw in enumerate("hw")]
        return concat(parts, -1, name=name)
    halves = reshape(x, n, 2 * heads, d // 2, name=sub("halves"))  # (..., half a, quarter b, k)
    parts = []
    for i, hw in enumerate("hw"):
        q = reshape(view(halves, -1, i * d // 4, (i + 1) * d // 4, name=sub(f"x{hw}")), n, heads, d // 2,
                    name=sub(f"x{hw}_pairs"))
        r = rope(q, rows[i], mode="neox", freq_base=freq_base, freq_scale=(1.0, odd)[i], name=sub(hw))
        parts.append(reshape(r, n, 2 * heads, d // 4, name=sub(f"{hw}_halves")))
    return reshape(concat(parts, -1, name=sub("halves_out")), n, heads, d, name=name)


# -- NumPy helpers for the data around the op ------------------------------------------------------
def grid_positions(grid_h: int, grid_w: int, merge: int = 1, rows: int = N_SECTIONS) -> np.ndarray:
    """i32 (rows, grid_h * grid_w) patch positions [h, w, h, w][:rows] for mode "vision" and rope_2d.

    Patches are listed in raster order over merge x merge blocks, each block in raster order
    (HF's get_vision_position_ids; merge=1 is Pixtral's plain raster order); rows 2 and 3
    repeat h and w as llama.cpp's mtmd fills them.
    """
    if grid_h % merge or grid_w % merge:
        raise ValueError(f"grid {grid_h}x{grid_w} is not a multiple of merge {merge}")
    hh, ww = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")
    block = (grid_h // merge, merge, grid_w // merge, merge)
    h, w = (a.reshape(block).transpose(0, 2, 1, 3).ravel() for a in (hh, ww))
    return np.stack([h, w, h, w][:rows]).astype(np.int32)


def neox_to_normal(w: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of a q/k projection (out, ...) reordered so that HF's rotate_half pairs (j, j + d/2)
    of each head become adjacent pairs (2j, 2j+1): llama.cpp's `LlamaModel.permute`."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
