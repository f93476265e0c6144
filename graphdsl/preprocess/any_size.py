"""What the processors that give each image a size of its own share (Pixtral's longest edge,
Qwen2-VL's smart resize): the pixel fields, their checks, and the one resize (``resized``) to the
(H, W) a subclass's ``out_size`` picks: Pillow's on the uint8 image, then HF's rescale / normalize
(``image.normalize``), so the pixels are bit-identical to HF's PIL backend's."""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from PIL import Image

from .image import (DEFAULT_MAX_OUT_PIXELS, DEFAULT_MAX_PIXELS, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImageConfig,
                    ImageSource, check_norm, load_image, normalize, resize_uint8)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AnySizeConfig:
    """The pixel fields (keyword-only, after a subclass's own).

    Args:
        mean, std, resample, rescale_factor: as ``ImageConfig`` (HF's defaults: CLIP's mean/std,
            bicubic, 1/255); mean and std may be one value for all three channels.
        max_input_pixels: larger inputs are refused before decoding (``ImageConfig.max_pixels``).
        max_out_pixels: the largest output a config may allow (a typo guard, as ``ImageConfig``'s).
    """

    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    resample: int = int(Image.Resampling.BICUBIC)
    rescale_factor: float = 1.0 / 255.0
    max_input_pixels: int = DEFAULT_MAX_PIXELS
    max_out_pixels: int = DEFAULT_MAX_OUT_PIXELS

    def __post_init__(self) -> None:
        who = type(self).__name__
        mean, std = _triple(self.mean, "mean", who), _triple(self.std, "std", who)
        check_norm(who, mean, std, (self.mean, self.std))
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        if isinstance(self.resample, bool) or self.resample not in {int(r) for r in Image.Resampling}:
            raise ValueError(f"[{who}] resample must be a PIL.Image.Resampling code, got {self.resample!r}")
        object.__setattr__(self, "resample", int(self.resample))

    def out_size(self, height: int, width: int) -> tuple[int, int]:
        raise NotImplementedError

    def resized(self, source: ImageSource) -> np.ndarray:
        """Load one image and resize it to ``out_size``: float32 [3, H, W]."""
        img = load_image(source, max_pixels=self.max_input_pixels)
        w, h = img.size
        th, tw = self.out_size(h, w)
        fixed = ImageConfig(mode="siglip", size=(th, tw), mean=self.mean, std=self.std, resample=self.resample,
                            rescale_factor=self.rescale_factor, max_pixels=self.max_input_pixels,
                            max_out_pixels=max(self.max_out_pixels, th * tw))
        return normalize(resize_uint8(img, fixed), fixed)


def _triple(v: Any, what: str, who: str) -> tuple[float, float, float]:
    a = np.broadcast_to(np.asarray(v, np.float64), (3,)) if np.size(v) in (1, 3) else None
    if a is None:
        raise ValueError(f"[{who}] {what} needs 1 or 3 values, got {v!r}")
    return tuple(float(x) for x in a)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TilePixels:
    """The fields the tiling configs end with (mllama, InternVL), keyword-only: ``rescale_factor``
    from uint8 to float (1.0 when HF's ``do_rescale`` is off) and ``max_pixels``, the input images
    refused before decoding."""

    rescale_factor: float = 1.0 / 255.0
    max_pixels: int = DEFAULT_MAX_PIXELS


def settle_pixels(cfg: Any) -> None:
    """The pixel fields the tiling configs share (mllama, InternVL), checked and made canonical in place
    on a frozen dataclass: ``resample`` a PIL.Image.Resampling code (an int), ``mean`` / ``std`` 3 floats
    each (one value stands for all three channels)."""
    who = type(cfg).__name__
    if isinstance(cfg.resample, bool) or cfg.resample not in {int(r) for r in Image.Resampling}:
        raise ValueError(f"[{who}] resample must be a PIL.Image.Resampling code, got {cfg.resample!r}")
    mean, std = (tuple(float(x) for x in np.broadcast_to(np.asarray(v, np.float64), (3,))) for v in (cfg.mean, cfg.std))
    check_norm(who, mean, std, (cfg.mean, cfg.std))
    for name, value in (("mean", mean), ("std", std), ("resample", int(cfg.resample))):
        object.__setattr__(cfg, name, value)
