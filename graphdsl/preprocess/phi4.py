"""Phi-4-multimodal image pre-processing: the dynamic HD transform of HF's
``Phi4MultimodalImageProcessor``.

1. choose a grid of ``crop x crop`` squares: ceil(W / crop) x ceil(H / crop) when that is at most
   ``dynamic_hd`` crops, else the (cols, rows) of at most ``dynamic_hd`` crops whose aspect ratio
   is closest to the image's (ties to the larger grid when the image covers half its area);
2. resize (aspect ratio kept, the short side truncated) to fill the grid's width or height and
   pad right / bottom with white; patches that lie wholly in the padding are masked out
   (``patch_mask``, one entry per ``patch x patch`` patch);
3. rescale and normalize, cut the grid into crops row by row, and put first the whole padded
   image resized bicubically to one crop (the "global image").

HF resizes step 2 with torchvision's antialiased bilinear on the uint8 image: Pillow's filter
with torch's own fixed-point precision (Pillow's BILINEAR differs by one level on some
pixels), done here in NumPy as torch's CPU kernel does it; the global image's
bicubic resize without antialiasing is torch's ``interpolate`` on float32, done here as two
products with ``inp_embd.bicubic_matrix``.

Example:
    >>> im = phi4_image(Image.new("RGB", (100, 70)), Phi4ImageConfig(crop=32, patch=4))  # doctest: +SKIP
    >>> im.pixel_values.shape, im.grid                                                      # doctest: +SKIP
    ((13, 3, 32, 32), (3, 4))
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from PIL import Image

from .image import HalfNorm, ImageSource, load_image, positive_fields


@dataclasses.dataclass(frozen=True)
class Phi4ImageConfig(HalfNorm):
    """HF's preprocessor_config.json fields: ``size`` (crop side), ``patch_size``, ``dynamic_hd``."""

    crop: int = 448
    patch: int = 14
    dynamic_hd: int = 36

    def __post_init__(self):
        positive_fields(self, "crop", "patch", "dynamic_hd")
        if self.crop % self.patch:
            raise ValueError(f"[Phi4ImageConfig] crop {self.crop} is not a multiple of patch {self.patch}")

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> Phi4ImageConfig:
        size = d.get("size", {"height": 448, "width": 448})
        if isinstance(size, dict):
            if size.get("height") != size.get("width"):
                raise ValueError(f"[Phi4ImageConfig] only square sizes, got {size}")
            size = size["height"]
        return cls(crop=size, patch=d.get("patch_size", 14), dynamic_hd=d.get("dynamic_hd", 36),
                   mean=tuple(d.get("image_mean", (0.5,) * 3)), std=tuple(d.get("image_std", (0.5,) * 3)))


@dataclasses.dataclass
class Phi4Image:
    """One image: ``pixel_values`` (1 + rows * cols, 3, crop, crop) f32, the global image first;
    ``patch_mask`` (1 + rows * cols, crop/patch, crop/patch) bool (True: a patch of the image);
    ``grid`` (rows, cols); ``image_size`` (rows * crop, cols * crop) as HF's ``image_sizes``."""

    pixel_values: np.ndarray
    patch_mask: np.ndarray
    grid: tuple[int, int]

    @property
    def image_size(self) -> tuple[int, int]:
        s = self.pixel_values.shape[-1]
        return self.grid[0] * s, self.grid[1] * s


def _closest_ratio(aspect: float, w: int, h: int, crop: int, max_num: int) -> tuple[int, int]:
    ratios = sorted({(i, j) for n in range(1, max_num + 1) for i in range(1, n + 1) for j in range(1, n + 1)
                     if 1 <= i * j <= max_num}, key=lambda r: r[0] * r[1])
    best, best_diff = (1, 1), float("inf")
    for r in ratios:  # HF's order and tie rule, kept as they are
        diff = abs(aspect - r[0] / r[1])
        if diff < best_diff:
            best, best_diff = r, diff
        elif diff == best_diff and w * h > 0.5 * crop * crop * r[0] * r[1]:
            best = r
    return best


def hd_layout(w: int, h: int, c: Phi4ImageConfig) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """(cols, rows) of crops, the resized (w, h) and the padding (right, bottom) for a w x h image."""
    cols, rows = math.ceil(w / c.crop), math.ceil(h / c.crop)
    if cols * rows > c.dynamic_hd:
        cols, rows = _closest_ratio(w / h, w, h, c.crop, c.dynamic_hd)
    tw, th = c.crop * cols, c.crop * rows
    if tw / w < th / h:
        new = (tw, int(h * (tw / w)))
    else:
        new = (int(w * (th / h)), th)
    if min(new) < 10:
        raise ValueError(f"[phi4_image] the aspect ratio of a {w}x{h} image is too extreme: it resizes to {new}")
    return (cols, rows), new, (tw - new[0], th - new[1])


def _aa_bilinear_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, int]:
    """torch's antialiased bilinear weights for uint8 (aten UpSampleKernel: ``_compute_index_ranges_
    int16_weights``): per output the first source index and int16 weights, and their precision."""
    scale = n_in / n_out
    support = scale if scale >= 1.0 else 1.0
    inv = 1.0 / scale if scale >= 1.0 else 1.0
    k = int(np.ceil(support)) * 2 + 1
    starts, ws = np.zeros(n_out, np.int64), np.zeros((n_out, k), np.float64)
    for i in range(n_out):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        n = min(int(center + support + 0.5), n_in) - lo
        w = np.maximum(0.0, 1.0 - np.abs((np.arange(n) + lo - center + 0.5) * inv))
        starts[i], ws[i, :n] = lo, w / w.sum() if w.sum() else w
    prec = 0
    while prec < 22 and int(0.5 + ws.max() * (1 << (prec + 1))) < (1 << 15):
        prec += 1
    wi = np.trunc(ws * (1 << prec) + np.where(ws >= 0, 0.5, -0.5)).astype(np.int64)
    return starts, wi, prec


def _resize_u8(a: np.ndarray, w: int, h: int) -> np.ndarray:
    """torchvision's ``resize`` of a uint8 (H, W, 3) image, antialiased bilinear: horizontal pass,
    then vertical, each in fixed point rounded to uint8 as torch's CPU kernel does."""
    for axis, n_out in ((1, w), (0, h)):
        n_in = a.shape[axis]
        if n_in == n_out:
            continue
        starts, wi, prec = _aa_bilinear_weights(n_in, n_out)
        x = np.moveaxis(a, axis, 0).astype(np.int64)
        idx = np.minimum(starts[:, None] + np.arange(wi.shape[1]), n_in - 1)
        acc = np.einsum("ok,ok...->o...", wi, x[idx]) + (1 << (prec - 1))
        a = np.moveaxis(np.clip(acc >> prec, 0, 255).astype(np.uint8), 0, axis)
    return a


def _bicubic(n_in: int, n_out: int) -> np.ndarray:
    from ..inp_embd import bicubic_matrix
    return bicubic_matrix(n_in, n_out).astype(np.float32)


def phi4_image(src: ImageSource | Image.Image, c: Phi4ImageConfig = Phi4ImageConfig()) -> Phi4Image:
    """One image -> global image + crops, their patch masks and the grid (see the module doc)."""
    img = load_image(src) if not isinstance(src, Image.Image) else src.convert("RGB")
    w, h = img.size
    (cols, rows), new, (pw, ph) = hd_layout(w, h, c)
    m = c.crop // c.patch
    mask = np.ones((rows * m, cols * m), bool)
    if pw >= c.patch:
        mask[:, -(pw // c.patch):] = False
    if ph >= c.patch:
        mask[-(ph // c.patch):, :] = False
    canvas = np.full((rows * c.crop, cols * c.crop, 3), 255, np.uint8)
    canvas[:new[1], :new[0]] = _resize_u8(np.asarray(img), *new)
    # HF folds the 1/255 rescale into mean and std: (x - 255 mean) / (255 std), in float32
    mean, std = (np.asarray(v, np.float64)[:, None, None] * 255 for v in (c.mean, c.std))
    x = (canvas.transpose(2, 0, 1).astype(np.float32) - mean.astype(np.float32)) / std.astype(np.float32)
    glob = np.einsum("oh,chw,pw->cop", _bicubic(x.shape[1], c.crop), x, _bicubic(x.shape[2], c.crop),
                     optimize=True).astype(np.float32)
    crops = x.reshape(3, rows, c.crop, cols, c.crop).transpose(1, 3, 0, 2, 4).reshape(-1, 3, c.crop, c.crop)
    masks = mask.reshape(rows, m, cols, m).transpose(0, 2, 1, 3).reshape(-1, m, m)
    pixels = np.concatenate([glob[None], crops]).astype(np.float32)
    return Phi4Image(np.ascontiguousarray(pixels), np.concatenate([np.ones((1, m, m), bool), masks]), (rows, cols))
