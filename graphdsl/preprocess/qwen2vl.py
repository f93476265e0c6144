"""Qwen2-VL / Qwen2.5-VL image pre-processing: HF's ``Qwen2VLImageProcessor`` smart resize.

Any image keeps (about) its size and aspect ratio: both sides are rounded to multiples of
``patch_size * merge_size`` (28), then the whole is scaled into [min_pixels, max_pixels]
(``smart_resize``, HF's formula). The resize is Pillow's on the uint8 image and the rescale /
normalize are HF's dtypes (``image.normalize``), as HF's PIL backend (``Qwen2VLImageProcessorPil``)
does, so the pixels are bit-identical to its. The result is float32 [3, H, W], the same kind of
array every other image pre-processing gives; ``models.qwen2vl.patchify`` cuts it into HF's
``pixel_values`` rows and (t, h, w) grid.

Example:
    >>> cfg = Qwen2VLImageConfig()                       # HF's defaults: 56^2 .. 28^2 * 1280 pixels
    >>> qwen2vl_image("cat.jpg", cfg).shape              # a 640 x 480 photo   # doctest: +SKIP
    (3, 476, 644)
    >>> smart_resize(480, 640)
    (476, 644)
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .any_size import AnySizeConfig
from .image import ImageSource, positive_fields

MAX_ASPECT = 200  # HF refuses more extreme images


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56,
                 max_pixels: int = 28 * 28 * 1280) -> tuple[int, int]:
    """HF's smart_resize: (H, W) multiples of factor, H * W within [min_pixels, max_pixels],
    aspect ratio kept as closely as that allows."""
    if min(height, width) < 1 or max(height, width) / min(height, width) > MAX_ASPECT:
        raise ValueError(f"[qwen2vl] image {width}x{height}: the aspect ratio must be at most {MAX_ASPECT}")
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@dataclasses.dataclass(frozen=True)
class Qwen2VLImageConfig(AnySizeConfig):
    """How Qwen2-VL / Qwen2.5-VL want their pixels (HF's preprocessor_config.json fields).

    Args:
        min_pixels, max_pixels: the target area's bounds (HF ``size["shortest_edge"]`` /
            ``size["longest_edge"]``, or the older ``min_pixels`` / ``max_pixels``).
        patch_size, merge_size: the sides become multiples of their product.
        mean, std, resample, rescale_factor: as ``ImageConfig``.
        max_input_pixels: larger inputs are refused before decoding (``ImageConfig.max_pixels``).
        max_out_pixels: max_pixels may not exceed it (a typo guard, as ``ImageConfig``'s).
    """

    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    patch_size: int = 14
    merge_size: int = 2

    def __post_init__(self) -> None:
        positive_fields(self, "min_pixels", "max_pixels", "patch_size", "merge_size")
        if self.min_pixels > self.max_pixels or self.max_pixels > self.max_out_pixels:
            raise ValueError(f"[Qwen2VLImageConfig] need min_pixels {self.min_pixels} <= max_pixels {self.max_pixels} "
                             f"<= max_out_pixels {self.max_out_pixels}")
        super().__post_init__()

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    def out_size(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) an image of (height, width) is resized to."""
        return smart_resize(height, width, self.factor, self.min_pixels, self.max_pixels)

    def preprocess(self, source: ImageSource) -> np.ndarray:
        """``qwen2vl_image(source, self)``: ``preprocess.preprocess_image`` calls this."""
        return qwen2vl_image(source, self)

    @classmethod
    def from_hf(cls, cfg: Mapping[str, Any], **overrides: Any) -> Qwen2VLImageConfig:
        """From an HF preprocessor_config.json dict (``size`` or the older min/max_pixels keys)."""
        size = cfg.get("size") or {}
        kw: dict[str, Any] = {}
        for key, old in (("shortest_edge", "min_pixels"), ("longest_edge", "max_pixels")):
            v = cfg.get(old, size.get(key) if isinstance(size, Mapping) else None)
            if v is not None:
                kw[old] = int(v)
        for key in ("patch_size", "merge_size", "resample"):
            if key in cfg:
                kw[key] = int(cfg[key])
        if "image_mean" in cfg:
            kw["mean"] = tuple(np.broadcast_to(np.asarray(cfg["image_mean"], np.float64), (3,)))
        if "image_std" in cfg:
            kw["std"] = tuple(np.broadcast_to(np.asarray(cfg["image_std"], np.float64), (3,)))
        if not cfg.get("do_normalize", True):
            kw["mean"], kw["std"] = (0.0,) * 3, (1.0,) * 3
        if not cfg.get("do_rescale", True):
            kw["rescale_factor"] = 1.0
        else:
            kw["rescale_factor"] = float(cfg.get("rescale_factor", 1.0 / 255.0))
        kw.update(overrides)
        return cls(**kw)


def qwen2vl_image(source: ImageSource, cfg: Qwen2VLImageConfig | None = None) -> np.ndarray:
    """Load and smart-resize one image: float32 [3, H, W], H and W multiples of patch * merge.

    Raises:
        ValueError: unreadable or oversized image, an aspect ratio above 200.
    """
    return (cfg or Qwen2VLImageConfig()).resized(source)
