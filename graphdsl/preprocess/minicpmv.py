"""MiniCPM-V's llava-uhd slicing: an image -> an overview + up to 9 slices on a grid, and the
marker layout the decoder expects around them.

    multiple = min(ceil(W H / S^2), max_slices)                 S: the tower's slice size
    grid     = argmin |log(W / H) - log(c / r)| over c x r with c r in {multiple-1, multiple, multiple+1} \\ {1}
    overview = resize(image, best_resize(W, H))                 area ~ S^2, sides multiples of the patch
    refined  = resize(image, grid * best_resize(W / c, H / r, upscale))  then cut into c x r slices

Markers (text tokens of the decoder's vocabulary), version 2 = MiniCPM-Llama3-V 2.5, 3+ = 2.6:
    2.5: <image> ov </image> <slice> <image> s </image> <image> s </image> \\n ... </slice>
    2.6: <image> ov </image> <slice> s </slice> <slice> s </slice> \\n <slice> s </slice> ...

When to slice: MiniCPM-V's own processor (``policy="minicpmv"``, the default) slices when the
area exceeds S^2 (multiple > 1), and otherwise resizes keeping the aspect ratio; llama.cpp's mtmd
(``policy="mtmd"``, tools/mtmd/mtmd-image.cpp) slices when a side exceeds S, and otherwise
squashes the image to S x S. They agree on every image that is both larger than S^2 in area and
wider or taller than S (the usual photo), which the mtmd comparison uses. One more difference:
when the refined size's aspect ratio differs from the image's (by a pixel or so after rounding to
the patch), mtmd letterboxes the image into it (PAD_CEIL, black) where MiniCPM-V stretches it;
graphdsl stretches, as the model was trained. Resizing is Pillow's
bicubic on 8-bit RGB, which mtmd re-implements (``resize_pillow``); the pixels are then
(x / 255 - mean) / std in float32, as mtmd's ``normalize``.

Example:
    >>> from PIL import Image
    >>> sl = minicpmv_slices(Image.new("RGB", (1344, 896)), MiniCPMVImageConfig(slice_size=448, patch_size=14))
    >>> sl.grid, sl.overview.shape, sl.slices[0].shape, len(sl.slices)
    ((3, 2), (3, 364, 546), (3, 448, 448), 6)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .image import HalfNorm, positive_fields


@dataclass(frozen=True)
class MiniCPMVImageConfig(HalfNorm):
    slice_size: int = 448
    patch_size: int = 14
    max_slices: int = 9
    policy: str = "minicpmv"  # "minicpmv" (its processor) or "mtmd" (llama.cpp's); see the module doc

    def __post_init__(self) -> None:
        positive_fields(self, "slice_size", "patch_size")


@dataclass
class MiniCPMVSlices:
    """The overview (3, h, w), the slices row by row (each (3, h', w')) and the grid (cols, rows)."""

    overview: np.ndarray
    slices: list[np.ndarray] = field(default_factory=list)
    grid: tuple[int, int] = (0, 0)


def _ensure_divide(n: float, p: int) -> int:
    return max(int(round(n / p) * p), p)


def _best_resize(w: int, h: int, s: int, p: int, upscale: bool) -> tuple[int, int]:
    if w * h > s * s or upscale:
        r = w / h
        h = int(s / math.sqrt(r))
        w = int(h * r)
    return _ensure_divide(w, p), _ensure_divide(h, p)


def best_grid(w: int, h: int, s: int, max_slices: int = 9, policy: str = "minicpmv") -> tuple[int, int] | None:
    """(cols, rows) of the slice grid, or None when the image is not sliced."""
    multiple = min(math.ceil(w * h / (s * s)), max_slices)
    if (multiple <= 1) if policy == "minicpmv" else (w <= s and h <= s):
        return None
    log_ratio = math.log(w / h)
    cands = [(m, n // m) for n in (multiple - 1, multiple, multiple + 1) if n != 1 and n <= max_slices
             for m in range(1, n + 1) if n % m == 0]
    best, err = (1, 1), float("inf")
    for c, r in cands:
        e = abs(log_ratio - math.log(c / r))
        if e < err:
            best, err = (c, r), e
    return best


def _to_f32(img, cfg: MiniCPMVImageConfig) -> np.ndarray:
    a = np.asarray(img, np.uint8).astype(np.float32) / np.float32(255.0)
    a = (a - np.asarray(cfg.mean, np.float32)) / np.asarray(cfg.std, np.float32)
    return np.ascontiguousarray(a.transpose(2, 0, 1))


def minicpmv_slices(image, cfg: MiniCPMVImageConfig = MiniCPMVImageConfig()) -> MiniCPMVSlices:
    """Slice one image (a path, a PIL image or an RGB uint8 (H, W, 3) array) the llava-uhd way."""
    from PIL import Image
    from .image import load_image
    if cfg.policy not in ("minicpmv", "mtmd"):
        raise ValueError(f"[minicpmv] policy must be 'minicpmv' or 'mtmd', got {cfg.policy!r}")
    img = load_image(image) if not isinstance(image, np.ndarray) else Image.fromarray(np.asarray(image, np.uint8))
    img = img.convert("RGB")
    w, h = img.size
    s, p = cfg.slice_size, cfg.patch_size
    grid = best_grid(w, h, s, cfg.max_slices, cfg.policy)
    bic = Image.Resampling.BICUBIC
    if grid is None:
        size = (s, s) if cfg.policy == "mtmd" else _best_resize(w, h, s, p, upscale=True)
        return MiniCPMVSlices(_to_f32(img.resize(size, bic) if size != (w, h) else img, cfg))
    ov = _best_resize(w, h, s, p, upscale=False)
    c, r = grid
    rw, rh = _ensure_divide(w, c), _ensure_divide(h, r)
    bw, bh = _best_resize(rw // c, rh // r, s, p, upscale=True)
    refined = img.resize((bw * c, bh * r), bic) if (bw * c, bh * r) != (w, h) else img
    slices = [_to_f32(refined.crop((x * bw, y * bh, (x + 1) * bw, (y + 1) * bh)), cfg)
              for y in range(r) for x in range(c)]
    return MiniCPMVSlices(_to_f32(img.resize(ov, bic) if ov != (w, h) else img, cfg), slices, grid)


def marker_layout(version: int, grid: tuple[int, int] | None) -> list:
    """The sequence for one image: marker strings and image indices (0 = overview, 1.. = slices)."""
    out: list = ["<image>", 0, "</image>"]
    if not grid:
        return out
    c, r = grid
    v25 = version == 2
    if v25:
        out.append("<slice>")
    for y in range(r):
        for x in range(c):
            out += ["<image>" if v25 else "<slice>", 1 + y * c + x, "</image>" if v25 else "</slice>"]
        if y != r - 1:
            out.append("\n")
    if v25:
        out.append("</slice>")
    return out
