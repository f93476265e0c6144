"""LLaVA-NeXT / LLaVA-1.6 "anyres" pre-processing: one image -> a base view + a grid of tiles.

This follows HF's ``LlavaNextImageProcessor`` (its PIL backend, ``LlavaNextImageProcessorPil``):

1. pick the best resolution (h, w) among ``grid_pinpoints`` for the image's (H, W)
   (``select_best_resolution``: most of the image kept, then least padding);
2. resize the image into it with the aspect ratio kept (the long side fills the target, the
   short one is rounded up) and centre it on a black (h, w) canvas;
3. cut the canvas into ``crop_size`` tiles row by row; put in front of them the whole image
   squashed to ``size`` x ``size`` (the "base" view);
4. every view: resize its shortest edge to ``size``, centre-crop ``crop_size``, rescale
   (float64 multiply, cast to float32) and normalize (float32).

Every resize is Pillow's on the uint8 image, as HF's, so the output is bit-identical to theirs.
The model side needs the image's original (H, W) too: it removes the padding of step 2 from the
tiles' features (``unpad_crop``) and ends each row with the ``image_newline`` embedding.

Example:
    >>> cfg = AnyresConfig.from_hf({"size": {"shortest_edge": 336}, "crop_size": 336,
    ...                             "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672]]})
    >>> im = anyres_images("cat.jpg", cfg)      # a 640 x 480 photo
    >>> im.pixel_values.shape, im.grid, im.image_size
    ((5, 3, 336, 336), (2, 2), (480, 640))
    >>> im.n_tokens(patches_per_side=24)        # 576 base + 36 unpadded rows x (48 + 1 newline)
    2340
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from .image import (DEFAULT_MAX_PIXELS, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImageConfig, ImageSource, load_image,
                    normalize, positive_fields, resize_uint8)

# HF's LlavaNextImageProcessor default (LLaVA-1.6 at 336 px).
LLAVA_NEXT_PINPOINTS = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))
# HF has no bound; a 4096 px pinpoint with 14 px tiles would make 85k tiles. LLaVA-1.6's largest
# grid is 3 x 3 (OneVision's 6 x 6); 1024 is far above both.
DEFAULT_MAX_TILES = 1024


def _pinpoints(v: Any) -> tuple[tuple[int, int], ...]:
    try:
        pts = tuple((int(h), int(w)) for h, w in v)
        ok = len(pts) > 0 and all(h >= 1 and w >= 1 and (h, w) == tuple(p) for (h, w), p in zip(pts, v))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"[AnyresConfig] grid_pinpoints must be a non-empty list of positive (height, width) "
                         f"int pairs, got {v!r}")
    return pts


@dataclasses.dataclass(frozen=True)
class AnyresConfig:
    """How LLaVA-NeXT wants its pixels (fields as HF's preprocessor_config.json).

    Args:
        grid_pinpoints: the candidate (height, width) resolutions, in HF's order and orientation.
        size: the shortest edge every view is resized to (HF ``size["shortest_edge"]``); the base
            view is the image squashed to size x size.
        crop_size: the side of each tile and of the centre crop of every view (HF ``crop_size``);
            the vision tower's image_size.
        mean, std, resample, rescale_factor: as ``image.ImageConfig``.
        max_pixels: input images with more pixels are refused before decoding.
        max_tiles: the most tiles a pinpoint may make.
    """

    grid_pinpoints: Sequence[Sequence[int]] = LLAVA_NEXT_PINPOINTS
    size: int = 336
    crop_size: int = 336
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    resample: int = int(Image.Resampling.BICUBIC)
    rescale_factor: float = 1.0 / 255.0
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_tiles: int = DEFAULT_MAX_TILES

    def __post_init__(self) -> None:
        pts = _pinpoints(self.grid_pinpoints)
        object.__setattr__(self, "grid_pinpoints", pts)
        positive_fields(self, "crop_size")
        s = self.crop_size
        bad = [p for p in pts if p[0] % s or p[1] % s or (p[0] // s) * (p[1] // s) > self.max_tiles]
        if bad:
            # HF's model counts tiles as floor(h / S) but its processor as ceil(h / S): only exact
            # multiples agree, and the tile count bounds the work an image can ask for
            raise ValueError(f"[AnyresConfig] grid_pinpoints {bad} are not multiples of crop_size {s} "
                             f"or make more than max_tiles={self.max_tiles} tiles")
        self.tile_config  # validates size, mean, std, resample

    @property
    def tile_config(self) -> ImageConfig:
        """The per-view step 4 (shortest edge ``size``, centre crop ``crop_size``)."""
        return ImageConfig(mode="clip", size=self.size, crop_size=self.crop_size, mean=self.mean, std=self.std,
                           resample=self.resample, rescale_factor=self.rescale_factor, max_pixels=self.max_pixels)

    @classmethod
    def from_hf(cls, cfg: Mapping[str, Any], **overrides: Any) -> AnyresConfig:
        """From a HF ``preprocessor_config.json`` dict of a ``LlavaNextImageProcessor``.

        ``do_rescale`` and ``do_normalize`` are honoured; ``do_resize`` and ``do_center_crop``
        must be on (without them the views are not one size and no tower takes them);
        ``do_pad`` (HF's padding of the batch to equal tile counts) does not change any view.
        """
        kind = str(cfg.get("image_processor_type", "LlavaNextImageProcessor"))
        if "llavanext" not in kind.lower().replace("_", ""):
            raise ValueError(f"[AnyresConfig.from_hf] image_processor_type is {kind!r}, not LLaVA-NeXT's")
        if not cfg.get("do_resize", True) or not cfg.get("do_center_crop", True):
            raise ValueError("[AnyresConfig.from_hf] do_resize and do_center_crop must be true: without them the "
                             "views have different sizes")
        size = cfg.get("size", {"shortest_edge": 224})
        if isinstance(size, Mapping):
            if "shortest_edge" not in size:
                raise ValueError(f"[AnyresConfig.from_hf] size must be {{'shortest_edge': n}}, got {dict(size)}")
            size = size["shortest_edge"]
        crop = cfg.get("crop_size", {"height": 224, "width": 224})
        if isinstance(crop, Mapping):
            if crop.get("height") != crop.get("width"):
                raise ValueError(f"[AnyresConfig.from_hf] crop_size must be square, got {dict(crop)}")
            crop = crop["height"]
        mean, std = cfg.get("image_mean", OPENAI_CLIP_MEAN), cfg.get("image_std", OPENAI_CLIP_STD)
        if not cfg.get("do_normalize", True):
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        triple = lambda v: tuple(v) if isinstance(v, (list, tuple)) else (v,) * 3  # noqa: E731
        kw = {"grid_pinpoints": cfg.get("image_grid_pinpoints", LLAVA_NEXT_PINPOINTS), "size": size, "crop_size": crop,
              "mean": triple(mean), "std": triple(std), "resample": cfg.get("resample", int(Image.Resampling.BICUBIC)),
              "rescale_factor": cfg.get("rescale_factor", 1.0 / 255.0) if cfg.get("do_rescale", True) else 1.0}
        kw.update(overrides)
        return cls(**kw)


# --------------------------------------------------------------------------- geometry
# HF's expressions, operation for operation: int() truncation, ceil and round(x, 7) decide a pixel
# row or a feature row, and another rounding would move it.


def select_best_resolution(image_hw: Sequence[int], pinpoints: Sequence[Sequence[int]]) -> tuple[int, int]:
    """The (height, width) of ``pinpoints`` that keeps most of an (H, W) image, ties broken by the
    least padding; the first such candidate wins (HF's select_best_resolution)."""
    oh, ow = int(image_hw[0]), int(image_hw[1])
    best, best_eff, best_waste = None, 0, math.inf
    for h, w in pinpoints:
        scale = min(w / ow, h / oh)
        eff = min(int(ow * scale) * int(oh * scale), ow * oh)
        waste = w * h - eff
        if eff > best_eff or (eff == best_eff and waste < best_waste):
            best, best_eff, best_waste = (int(h), int(w)), eff, waste
    if best is None:
        raise ValueError(f"[select_best_resolution] no pinpoint fits a {ow}x{oh} image: {list(pinpoints)}")
    return best


def fit_size(image_hw: Sequence[int], target_hw: Sequence[int]) -> tuple[int, int]:
    """(height, width) of an (H, W) image resized into ``target_hw`` with its aspect ratio kept
    (HF's get_patch_output_size: the other side rounded up, capped at the target)."""
    oh, ow = image_hw
    th, tw = target_hw
    if tw / ow < th / oh:
        return min(math.ceil(oh * (tw / ow)), th), tw
    return th, min(math.ceil(ow * (th / oh)), tw)


def unpad_crop(image_hw: Sequence[int], grid_hw: Sequence[int]) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) rows/columns of a (gh, gw) feature grid that hold the image
    rather than step 2's black padding (HF's unpad_image, on the grid of tile features)."""
    oh, ow = int(image_hw[0]), int(image_hw[1])
    gh, gw = int(grid_hw[0]), int(grid_hw[1])
    if ow / oh > gw / gh:
        pad = (gh - int(round(oh * (gw / ow), 7))) // 2
        return pad, gh - pad, 0, gw
    pad = (gw - int(round(ow * (gh / oh), 7))) // 2
    return 0, gh, pad, gw - pad


# --------------------------------------------------------------------------- images


@dataclasses.dataclass(frozen=True, eq=False)
class AnyresImage:
    """One image, pre-processed.

    Attributes:
        pixel_values: float32 [1 + rows * cols, 3, S, S]: the base view, then the tiles row by
            row (HF's order).
        image_size: the original (height, width), which the unpadding needs.
        grid: (rows, cols) of tiles.
    """

    pixel_values: np.ndarray
    image_size: tuple[int, int]
    grid: tuple[int, int]

    @property
    def n_frames(self) -> int:
        return int(self.pixel_values.shape[0])

    def feature_grid(self, patches_per_side: int) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) of the unpadded tile-feature grid, in patches."""
        rows, cols = self.grid
        return unpad_crop(self.image_size, (rows * patches_per_side, cols * patches_per_side))

    def n_tokens(self, patches_per_side: int, newline: bool = True) -> int:
        """Rows the decoder gets for this image: the base view's patches, then the unpadded tile
        grid with (by default) one newline embedding ending each of its rows."""
        top, bottom, left, right = self.feature_grid(patches_per_side)
        return patches_per_side ** 2 + (bottom - top) * (right - left + newline)


def anyres_images(source: ImageSource, cfg: AnyresConfig) -> AnyresImage:
    """Load and pre-process one image as HF's LlavaNextImageProcessor does.

    Args:
        source: anything ``image.load_image`` accepts (path, bytes, file, PIL image, uint8 array).
        cfg: the processor's settings.

    Returns:
        AnyresImage: float32 [1 + rows * cols, 3, S, S] views, the original size and the grid.

    Raises:
        ValueError: unreadable, truncated or oversized image.
    """
    img = load_image(source, max_pixels=cfg.max_pixels)
    w, h = img.size
    bh, bw = select_best_resolution((h, w), cfg.grid_pinpoints)
    nh, nw = fit_size((h, w), (bh, bw))
    canvas = np.zeros((bh, bw, 3), np.uint8)  # HF pads with 0 before normalizing: black
    top, left = (bh - nh) // 2, (bw - nw) // 2
    canvas[top:top + nh, left:left + nw] = np.asarray(img.resize((nw, nh), resample=cfg.resample))
    s, tile = cfg.crop_size, cfg.tile_config
    views = [np.asarray(img.resize((cfg.size, cfg.size), resample=cfg.resample))]
    views += [canvas[r:r + s, c:c + s] for r in range(0, bh, s) for c in range(0, bw, s)]
    frames = [normalize(resize_uint8(Image.fromarray(v), tile), tile) for v in views]
    return AnyresImage(np.stack(frames), (h, w), (bh // s, bw // s))
