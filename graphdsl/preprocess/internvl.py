"""InternVL 2.5 / 3 image pre-processing: one image -> tiles + a thumbnail, as HF's
``GotOcr2ImageProcessor`` (its PIL backend, ``GotOcr2ImageProcessorPil``) cuts it when
``InternVLProcessor`` calls it (with ``crop_to_patches=True``, the processor's own default):

1. pick the (columns, rows) grid with min_patches <= columns * rows <= max_patches whose
   aspect ratio is closest to the image's (a tie goes to the larger grid while the image's area
   is more than half the grid's), HF's ``get_optimal_tiled_canvas``;
2. resize the image to (columns * S, rows * S) and cut it into S x S tiles row by row;
3. more than one tile: append the whole image resized to S x S (the thumbnail);
4. rescale (float64 multiply, cast to float32) and normalize (float32).

With max_patches <= 1 HF does not tile: the image is resized to S x S (``do_resize``) alone.
Every resize is Pillow's on the uint8 image, as HF's, so the output is bit-identical to theirs.

Example:
    >>> internvl_grid(480, 640, 448, 1, 12)      # (height, width): 4 columns x 3 rows
    (4, 3)
    >>> cfg = InternVLImageConfig(tile_size=448)
    >>> internvl_images("cat.jpg", cfg).shape    # a 640 x 480 photo: 12 tiles + thumbnail
    (13, 3, 448, 448)
"""
from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from .any_size import TilePixels, settle_pixels
from .image import DEFAULT_MAX_PIXELS, ImageSource, load_image, normalize, positive_int

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class InternVLImageConfig(TilePixels):
    """How InternVL wants its pixels (fields as HF's preprocessor_config.json).

    Args:
        tile_size: S, the side of every tile and of the thumbnail (HF ``size``; the tower's
            ``vision_config.image_size``).
        min_patches, max_patches: the bounds on columns * rows.
        resample: a ``PIL.Image.Resampling`` code (HF's default: BICUBIC).
        mean, std: per-channel normalization after rescaling (InternVL's checkpoints: ImageNet's).
        rescale_factor: multiplier from uint8 to float (1.0 when HF's ``do_rescale`` is off).
        max_pixels: input images with more pixels are refused before decoding.
    """

    tile_size: int = 448
    min_patches: int = 1
    max_patches: int = 12
    resample: int = int(Image.Resampling.BICUBIC)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        positive_int(self.tile_size, "[InternVLImageConfig] tile_size")
        positive_int(self.min_patches, "[InternVLImageConfig] min_patches")
        positive_int(self.max_patches, "[InternVLImageConfig] max_patches")
        if self.max_patches > 1 and self.min_patches > self.max_patches:
            raise ValueError(f"[InternVLImageConfig] min_patches {self.min_patches} > max_patches {self.max_patches}: "
                             "no grid to choose from")
        settle_pixels(self)

    # ``normalize`` reads these two names
    size = property(lambda self: (self.tile_size, self.tile_size))


def internvl_grid(height: int, width: int, tile: int, min_patches: int, max_patches: int) -> tuple[int, int]:
    """(columns, rows) of HF's ``get_optimal_tiled_canvas``: its candidate order (sorted by tile
    count, stable), its float comparisons and its tie rule, operation for operation."""
    grids = sorted(((w, h) for w in range(1, max_patches + 1) for h in range(1, max_patches + 1)
                    if min_patches <= w * h <= max_patches), key=lambda g: g[0] * g[1])
    aspect, area = width / height, width * height
    best, best_diff = (1, 1), float("inf")
    for g in grids:
        diff = abs(aspect - g[0] / g[1])
        if diff < best_diff:
            best, best_diff = g, diff
        elif diff == best_diff and area > 0.5 * tile * tile * g[0] * g[1]:
            best = g
    return best


def _resize(img: Image.Image, h: int, w: int, resample: int) -> np.ndarray:
    return np.asarray(img if img.size == (w, h) else img.resize((w, h), resample=resample))


def internvl_images(source: ImageSource, cfg: InternVLImageConfig = InternVLImageConfig()) -> np.ndarray:
    """Load and pre-process one image as InternVLProcessor + GotOcr2ImageProcessorPil do.

    Returns:
        float32 [n_tiles, 3, S, S]: the tiles row by row, then the thumbnail (absent when the
        grid is one tile), HF's ``pixel_values`` for this image.
    """
    img = load_image(source, max_pixels=cfg.max_pixels)
    s, rs = cfg.tile_size, cfg.resample
    if cfg.max_patches <= 1:
        frames = [_resize(img, s, s, rs)]
    else:
        w, h = img.size
        cols, rows = internvl_grid(h, w, s, cfg.min_patches, cfg.max_patches)
        a = _resize(img, rows * s, cols * s, rs)
        frames = [a[r * s:(r + 1) * s, c * s:(c + 1) * s] for r in range(rows) for c in range(cols)]
        if len(frames) > 1:
            frames.append(_resize(img, s, s, rs))
    return np.stack([normalize(f, cfg) for f in frames])
