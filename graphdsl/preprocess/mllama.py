"""Llama 3.2 Vision (mllama) image pre-processing: one image -> up to ``max_image_tiles`` tiles,
its aspect-ratio id and tile mask, and the cross-attention layout of a prompt.

This follows HF's ``MllamaImageProcessor`` (its PIL backend, ``MllamaImageProcessorPil``):

1. choose the tile canvas: among the (rows, cols) arrangements with rows * cols <= max_image_tiles
   (HF's ``get_all_supported_aspect_ratios``, rows outer), the smallest upscale of the image that
   fits, else the largest downscale, ties broken by the smallest area (``get_optimal_tiled_canvas``);
2. resize the uint8 image (Pillow, bilinear) to fit that canvas keeping its aspect ratio, each side
   clamped to [tile, canvas] first (``get_image_size_fit_to_canvas``);
3. pad with 0 at the bottom and right to the canvas (uint8, before normalising: the padding
   becomes ``-mean / std``), rescale (float64 multiply cast to float32), normalize (float32);
4. cut the canvas into tiles row by row and append all-zero tiles up to ``max_image_tiles``.

aspect_ratio_id is the arrangement's index in that list + 1 (0 is HF's padding for "no image");
the tile mask has 1 for the image's tiles and 0 for the zero tiles. Every step is HF's, in its
dtypes, so pixels are bit-identical.

The prompt: mllama's decoder reads images through cross-attention, and text token ``t`` may
attend to image ``i`` when ``t`` lies in the image's span (HF's ``get_cross_attention_token_mask``):
from the image's ``<|image|>`` token up to the next image token, or to the end (consecutive image
tokens share the span that follows them). ``mllama_items`` cuts HF-style token ids into a mixed
batch for ``embed.Embedder``: each image item sits right before its image token, which stays in
the text, so the position of the item is the first row that may attend to it.

Example:
    >>> cfg = MllamaImageConfig(tile_size=560, max_image_tiles=4)
    >>> im = mllama_image("cat.jpg", cfg)          # a 640 x 480 photo
    >>> im.pixel_values.shape, im.aspect_ratio, im.aspect_ratio_id, im.n_tiles
    ((4, 3, 560, 560), (1, 2), 2, 2)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image

from ..cross import cross_spans
from .any_size import TilePixels, settle_pixels
from .image import DEFAULT_MAX_PIXELS, HALF, ImageSource, load_image, normalize, positive_fields

IMAGE_TOKEN = "<|image|>"
# Up to 8 x 8 tiles: 2x Llama 3.2's 4 tiles per side at most; more would build thousands of
# arrangements and a canvas of hundreds of megapixels from one bad config.
MAX_TILES_LIMIT = 64


@dataclasses.dataclass(frozen=True)
class MllamaImageConfig(TilePixels):
    """How mllama wants its pixels (fields as HF's preprocessor_config.json).

    Args:
        tile_size: side of each tile (HF ``size["height"]``, the vision encoder's image_size).
        max_image_tiles: the most tiles an image is cut into (HF ``max_image_tiles``).
        resample: a ``PIL.Image.Resampling`` code (HF's default: BILINEAR).
        mean, std: per-channel normalization after rescaling (HF's default: 0.5, IMAGENET_STANDARD).
        rescale_factor: multiplier from uint8 to float.
        max_pixels: input images with more pixels are refused before decoding.
    """

    tile_size: int = 560
    max_image_tiles: int = 4
    resample: int = int(Image.Resampling.BILINEAR)
    mean: tuple[float, float, float] = HALF
    std: tuple[float, float, float] = HALF

    def __post_init__(self) -> None:
        positive_fields(self, "tile_size", "max_image_tiles")
        if self.max_image_tiles > MAX_TILES_LIMIT:
            raise ValueError(f"[MllamaImageConfig] max_image_tiles {self.max_image_tiles} > {MAX_TILES_LIMIT}")
        if self.tile_size * self.tile_size * self.max_image_tiles > 64 * 4096 * 4096:
            raise ValueError(f"[MllamaImageConfig] {self.max_image_tiles} tiles of {self.tile_size}^2 is too large")
        settle_pixels(self)

    @classmethod
    def from_hf(cls, cfg: Mapping[str, Any], **overrides: Any) -> MllamaImageConfig:
        """From an HF ``preprocessor_config.json`` dict of an ``MllamaImageProcessor``."""
        size = cfg.get("size", {"height": 224, "width": 224})
        if isinstance(size, Mapping) and size.get("height") != size.get("width"):
            raise ValueError(f"[MllamaImageConfig.from_hf] size must be square, got {dict(size)}")
        mean, std = cfg.get("image_mean", (0.5,) * 3), cfg.get("image_std", (0.5,) * 3)
        if not cfg.get("do_normalize", True):
            mean, std = (0.0,) * 3, (1.0,) * 3
        kw = dict(tile_size=int(size["height"] if isinstance(size, Mapping) else size),
                  max_image_tiles=cfg.get("max_image_tiles", 4), resample=cfg.get("resample", 2), mean=mean, std=std,
                  rescale_factor=cfg.get("rescale_factor", 1 / 255) if cfg.get("do_rescale", True) else 1.0)
        kw.update(overrides)
        return cls(**kw)


# --------------------------------------------------------------------------- geometry
@lru_cache(maxsize=16)
def supported_aspect_ratios(max_image_tiles: int) -> tuple[tuple[int, int], ...]:
    """The (rows, cols) tile arrangements with rows * cols <= max_image_tiles, rows outer (HF's
    order, which numbers the aspect-ratio ids from 1)."""
    return tuple((a, b) for a in range(1, max_image_tiles + 1) for b in range(1, max_image_tiles + 1)
                 if a * b <= max_image_tiles)


def optimal_canvas(h: int, w: int, max_image_tiles: int, tile: int) -> tuple[int, int]:
    """HF's get_optimal_tiled_canvas: the canvas (height, width), in its float64 NumPy steps."""
    sizes = np.array(supported_aspect_ratios(max_image_tiles)) * tile
    th, tw = sizes.T
    scale_h, scale_w = th / h, tw / w
    scales = np.where(scale_w > scale_h, scale_h, scale_w)
    up = scales[scales >= 1]
    chosen = sizes[scales == (np.min(up) if len(up) else np.max(scales[scales < 1]))]
    best = chosen[np.argmin(chosen[:, 0] * chosen[:, 1])] if len(chosen) > 1 else chosen[0]
    return int(best[0]), int(best[1])


def fit_to_canvas(h: int, w: int, canvas_h: int, canvas_w: int, tile: int) -> tuple[int, int]:
    """HF's get_image_size_fit_to_canvas: (height, width) of the resized image."""
    tw, th = np.clip(w, tile, canvas_w), np.clip(h, tile, canvas_h)
    scale_h, scale_w = th / h, tw / w
    if scale_w < scale_h:
        return int(min(math.floor(h * scale_w) or 1, th)), int(tw)
    return int(th), int(min(math.floor(w * scale_h) or 1, tw))


# --------------------------------------------------------------------------- images
@dataclasses.dataclass(frozen=True, eq=False)
class MllamaImage:
    """One image, pre-processed.

    Attributes:
        pixel_values: float32 [max_image_tiles, 3, S, S]: the image's tiles row by row, then
            all-zero tiles (HF's ``pixel_values[b, i]``).
        aspect_ratio: the (rows, cols) tile arrangement.
        aspect_ratio_id: its index in ``supported_aspect_ratios`` + 1.
    """

    pixel_values: np.ndarray
    aspect_ratio: tuple[int, int]
    aspect_ratio_id: int

    @property
    def n_tiles(self) -> int:
        return self.aspect_ratio[0] * self.aspect_ratio[1]

    @property
    def max_tiles(self) -> int:
        return int(self.pixel_values.shape[0])

    @property
    def aspect_ratio_mask(self) -> np.ndarray:
        """int64 [max_image_tiles]: 1 for the image's tiles, 0 for the zero tiles."""
        return (np.arange(self.max_tiles) < self.n_tiles).astype(np.int64)


def mllama_image(source: ImageSource, cfg: MllamaImageConfig) -> MllamaImage:
    """Load and pre-process one image as HF's MllamaImageProcessor does (see the module doc).

    Raises:
        ValueError: unreadable, truncated or oversized image.
    """
    img = load_image(source, max_pixels=cfg.max_pixels)
    w, h = img.size
    t = cfg.tile_size
    ch, cw = optimal_canvas(h, w, cfg.max_image_tiles, t)
    nh, nw = fit_to_canvas(h, w, ch, cw, t)
    a = np.asarray(img.resize((nw, nh), resample=cfg.resample))
    canvas = np.zeros((ch, cw, 3), np.uint8)
    canvas[:nh, :nw] = a
    x = normalize(canvas, cfg)  # (3, ch, cw)
    rows, cols = ch // t, cw // t
    tiles = x.reshape(3, rows, t, cols, t).transpose(1, 3, 0, 2, 4).reshape(rows * cols, 3, t, t)
    pixels = np.zeros((cfg.max_image_tiles, 3, t, t), np.float32)
    pixels[: rows * cols] = tiles
    ratio = (rows, cols)
    return MllamaImage(pixels, ratio, supported_aspect_ratios(cfg.max_image_tiles).index(ratio) + 1)


def stack_mllama(samples: Sequence[Sequence[MllamaImage]]) -> dict[str, np.ndarray]:
    """HF's batched ``pixel_values`` [B, n, T, 3, S, S], ``aspect_ratio_ids`` [B, n] and
    ``aspect_ratio_mask`` [B, n, T] (n: the most images of a prompt; missing images are zeros,
    with id 0 and a mask whose first tile is 1, as HF pads them)."""
    flat = [im for ims in samples for im in ims]
    if not flat:
        raise ValueError("[stack_mllama] no images")
    shapes = {im.pixel_values.shape for im in flat}
    if len(shapes) != 1:
        raise ValueError(f"[stack_mllama] images of different tile layouts: {sorted(shapes)}")
    (t, c, s, _), = shapes
    n = max(len(ims) for ims in samples)
    pixels = np.zeros((len(samples), n, t, c, s, s), np.float32)
    ids = np.zeros((len(samples), n), np.int64)
    mask = np.zeros((len(samples), n, t), np.int64)
    mask[:, :, 0] = 1
    for b, ims in enumerate(samples):
        for i, im in enumerate(ims):
            pixels[b, i], ids[b, i], mask[b, i] = im.pixel_values, im.aspect_ratio_id, im.aspect_ratio_mask
    return {"pixel_values": pixels, "aspect_ratio_ids": ids, "aspect_ratio_mask": mask}


# --------------------------------------------------------------------------- prompt
def cross_attention_mask(ids: Sequence[int], image_token_id: int, n_tiles: Sequence[int], max_tiles: int,
                         length: int | None = None) -> np.ndarray:
    """HF MllamaProcessor's ``cross_attention_mask[b]`` for one prompt: int64 [length, n_images,
    max_tiles], 1 where the token may attend to the tile."""
    ids = list(ids)
    length = len(ids) if length is None else length
    locs = [i for i, t in enumerate(ids) if t == image_token_id]
    if len(locs) != len(n_tiles):
        raise ValueError(f"[cross_attention_mask] {len(locs)} image tokens but {len(n_tiles)} images")
    out = np.zeros((length, max(len(locs), 1), max_tiles), np.int64)
    for i, (start, end) in enumerate(cross_spans(locs, len(ids))):
        out[start:min(end, length), i, : n_tiles[i]] = 1
    return out


def mllama_items(ids: Sequence[int], image_token_id: int, images: Sequence[Any], kind: str = "image") -> list:
    """HF-style token ids (with ``<|image|>`` tokens, as MllamaProcessor's input_ids) and the
    images in order -> a mixed batch ``[ids, (kind, image), ids, ...]``: each image item right
    before its image token, which stays in the text (see the module doc)."""
    ids = np.asarray(ids, np.int32).reshape(-1)
    locs = np.flatnonzero(ids == image_token_id)
    if len(locs) != len(images):
        raise ValueError(f"[mllama_items] {len(locs)} image tokens ({image_token_id}) but {len(images)} images")
    items: list = []
    cuts = [0, *locs.tolist(), len(ids)]
    for i in range(len(cuts) - 1):
        if cuts[i + 1] > cuts[i]:
            items.append(ids[cuts[i]:cuts[i + 1]])
        if i < len(images):
            items.append((kind, images[i]))
    return items
