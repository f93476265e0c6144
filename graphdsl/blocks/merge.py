"""Pixel shuffle / patch merge: s x s neighbouring patches folded into one token.

One operation under three names: Idefics3's and SmolVLM's ``pixel_shuffle`` (scale factor s),
InternVL's ``pixel_shuffle`` (downsample ratio 1/s) and llama.cpp's
``build_patch_merge_permute`` take a raster grid; Qwen2-VL's ``PatchMerger`` takes patches
that its processor already put in *merge order* (each m x m group consecutive, rows of the
group first) and only views groups of m^2 rows as one. In both the token of group (I, J)
concatenates the group's patches in row-major order (a, b):

    out[I * (w/s) + J, ((a * s) + b) * d + c] = x[(I * s + a) * w + (J * s + b), c]

so ``pixel_shuffle(x) == patch_merge(merge_order(x))``. Everything here is reshape and
permute (rank <= 4, as ggml); batched inputs (B, n, d) fold B into the group-row axis.
"""
from __future__ import annotations

import numpy as np

from .. import ops
from ..graph import Tensor


def _check(x: Tensor, grid: tuple[int, int] | None, s: int, op: str, name: str) -> tuple[int, int]:
    where = f"[{op}] node '{x.graph.qualify(name)}'"
    if x.ndim not in (2, 3):
        raise ValueError(f"{where}: x must be (n, d) or (B, n, d), got {x.shape}")
    if not isinstance(s, (int, np.integer)) or s < 1:
        raise ValueError(f"{where}: the merge factor must be an integer >= 1, got {s!r}")
    if grid is None:
        if x.shape[-2] % (s * s):
            raise ValueError(f"{where}: x {x.shape} has {x.shape[-2]} rows, not a multiple of {s}^2 = {s * s}")
        return 0, 0
    h, w = (int(v) for v in grid)
    if h * w != x.shape[-2] or h % s or w % s:
        raise ValueError(f"{where}: grid (h, w) = {(h, w)} must hold x's {x.shape[-2]} rows of {x.shape} "
                         f"and be divisible by {s}")
    return h, w


def _grouped(x: Tensor, h: int, w: int, s: int, name: str) -> Tensor:
    """raster (..., h*w, d) -> (B*h/s, w/s, s, s*d): group (I, J) holds rows (a, b*d + c)."""
    b = x.shape[0] if x.ndim == 3 else 1
    d = x.shape[-1]
    t = ops.reshape(x, (b * h // s, s, w // s, s * d), name=f"{name}.split")  # (.., I, a, J, (b, c))
    return ops.permute(t, (0, 2, 1, 3), name=f"{name}.perm")  # (.., I, J, a, (b, c))


def merge_order(x: Tensor, grid: tuple[int, int], m: int, *, name: str = "merge_order") -> Tensor:
    """Reorder raster patches so that each m x m group is consecutive (Qwen2-VL's patch order).

        out[((I * (w/m) + J) * m + a) * m + b] = x[(I * m + a) * w + J * m + b]

    HF's ``Qwen2VLImageProcessor`` emits patches in this order and ``get_vision_position_ids``
    numbers them so; a graph whose patch embedding is a raster conv2d reorders here (llama.cpp
    does the same in qwen2vl.cpp), before the transformer.

    Args:
        x: (n, d) or (B, n, d), rows in raster order of an (h, w) patch grid.
        grid: (h, w), each a multiple of m, h * w == n.
        m: the spatial merge size.

    Returns:
        Same shape as x, rows in merge order.
    """
    h, w = _check(x, grid, m, "merge_order", name)
    return ops.reshape(_grouped(x, h, w, m, name), x.shape, name=name)


def patch_merge(x: Tensor, m: int, *, name: str = "patch_merge") -> Tensor:
    """Concatenate each run of m^2 consecutive rows into one (HF ``Qwen2VLPatchMerger``'s view).

        out[i, j * d + c] = x[i * m^2 + j, c]

    Args:
        x: (n, d) or (B, n, d), rows in merge order (see ``merge_order``), n a multiple of m^2.
        m: the spatial merge size.

    Returns:
        (.., n / m^2, m^2 d).
    """
    _check(x, None, m, "patch_merge", name)
    *b, n, d = x.shape
    return ops.reshape(x, (*b, n // (m * m), m * m * d), name=name)


def pixel_shuffle(x: Tensor, grid: tuple[int, int], scale: int, *, name: str = "pixel_shuffle") -> Tensor:
    """Space-to-depth over a raster patch grid (HF ``Idefics3Connector.pixel_shuffle``).

        out[I * (w/s) + J, ((a * s) + b) * d + c] = x[(I * s + a) * w + (J * s + b), c]

    Also InternVL's ``pixel_shuffle`` with downsample_ratio = 1/s, SmolVLM's, and llama.cpp's
    ``build_patch_merge_permute`` (without its padding to a multiple of s).

    Args:
        x: (n, d) or (B, n, d), rows in raster order of an (h, w) patch grid.
        grid: (h, w), each a multiple of scale, h * w == n (HF assumes h == w).
        scale: the scale factor s.

    Returns:
        (.., n / s^2, s^2 d), tokens in raster order of the (h/s, w/s) grid.
    """
    h, w = _check(x, grid, scale, "pixel_shuffle", name)
    *b, n, d = x.shape
    return ops.reshape(_grouped(x, h, w, scale, name), (*b, n // scale**2, scale**2 * d), name=name)


def merge_order_index(grid: tuple[int, int], m: int) -> np.ndarray:
    """The raster index of each row of ``merge_order``: out[i] = x[idx[i]] (int64, (h*w,)).

    Positions in merge order (HF's ``get_vision_position_ids`` for one frame) are
    ``(idx // w, idx % w)``.
    """
    h, w = (int(v) for v in grid)
    if m < 1 or h % m or w % m:
        raise ValueError(f"[merge_order_index] grid {(h, w)} must be divisible by m = {m} >= 1")
    return np.arange(h * w).reshape(h // m, m, w // m, m).transpose(0, 2, 1, 3).ravel()
