"""Pixtral / Mistral-3 image pre-processing: HF's ``PixtralImageProcessor`` resize.

An image keeps its aspect ratio and (about) its size: when a side exceeds ``longest_edge`` the
image is scaled down so that it fits (each side floored), then both sides are rounded *up* to
multiples of ``patch_size`` (Mistral-3 passes patch_size * spatial_merge_size, 28). The resize is
Pillow's on the uint8 image and the rescale / normalize are HF's dtypes (``image.normalize``),
as HF's PIL backend (``PixtralImageProcessorPil``) does, so the pixels are bit-identical to its.
HF pads a batch to its largest image and passes ``image_sizes``; here each image is its own
float32 [3, H, W] array (the model packs images of any sizes into one sequence).

Example:
    >>> pixtral_size(480, 640, longest_edge=1024, patch_size=16)     # fits: sides rounded up
    (480, 640)
    >>> pixtral_size(1000, 3000, longest_edge=1024, patch_size=16)   # 341 x 1024, then up to 16s
    (352, 1024)
    >>> pixtral_image("cat.jpg", PixtralImageConfig()).shape           # doctest: +SKIP
    (3, 480, 640)
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from .any_size import AnySizeConfig
from .image import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImageSource, positive_fields


def pixtral_size(height: int, width: int, longest_edge: int = 1024, patch_size: int = 16) -> tuple[int, int]:
    """HF's get_resize_output_image_size (Pixtral): (H, W), multiples of patch_size.

    Scaled down by ratio = max(h, w) / longest_edge when that is > 1, each side floored (HF
    floors, not rounds, so the image stays within the edge), then rounded up to the patch size.
    """
    ratio = max(height / longest_edge, width / longest_edge)
    sh, sw = height, width
    if ratio > 1:
        sh, sw = int(math.floor(height / ratio)), int(math.floor(width / ratio))
    h, w = ((sh - 1) // patch_size + 1) * patch_size, ((sw - 1) // patch_size + 1) * patch_size
    if h < 1 or w < 1:  # HF would hand Pillow an empty size
        raise ValueError(f"[pixtral] an image of {width}x{height} pixels scaled to a longest edge of {longest_edge} "
                         f"has an empty side ({sw}x{sh}): aspect ratio too extreme")
    return h, w


@dataclasses.dataclass(frozen=True)
class PixtralImageConfig(AnySizeConfig):
    """How Pixtral / Mistral-3 want their pixels (fields as HF's preprocessor_config.json).

    Args:
        longest_edge: the largest side an image keeps (HF ``size["longest_edge"]``; Pixtral-12B
            1024, Mistral-Small-3.1 1540); larger images are scaled down.
        patch_size: the sides become multiples of it (HF ``patch_size``, times the processor's
            ``spatial_merge_size`` for Mistral-3).
        mean, std, resample, rescale_factor: as ``ImageConfig`` (HF's defaults: CLIP's mean/std,
            bicubic, 1/255).
        max_input_pixels: larger inputs are refused before decoding (``ImageConfig.max_pixels``).
        max_out_pixels: longest_edge^2 may not exceed it (a typo guard, as ``ImageConfig``'s).
    """

    longest_edge: int = 1024
    patch_size: int = 16

    def __post_init__(self) -> None:
        positive_fields(self, "longest_edge", "patch_size")
        edge = ((self.longest_edge - 1) // self.patch_size + 1) * self.patch_size
        if edge * edge > self.max_out_pixels:
            raise ValueError(f"[PixtralImageConfig] longest_edge {self.longest_edge} allows {edge}^2 output pixels, "
                             f"more than max_out_pixels={self.max_out_pixels} (pass a larger max_out_pixels)")
        super().__post_init__()

    def out_size(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) an image of (height, width) is resized to."""
        return pixtral_size(height, width, self.longest_edge, self.patch_size)

    def preprocess(self, source: ImageSource) -> np.ndarray:
        """``pixtral_image(source, self)``: ``preprocess.preprocess_image`` calls this."""
        return pixtral_image(source, self)

    @classmethod
    def from_hf(cls, cfg: Mapping[str, Any], spatial_merge_size: int = 1, **overrides: Any) -> PixtralImageConfig:
        """From an HF preprocessor_config.json dict of a PixtralImageProcessor.

        spatial_merge_size: the processor's (Mistral-3: 2), which multiplies the patch size as
        HF's PixtralProcessor does before calling the image processor.
        """
        size, patch = cfg.get("size", {"longest_edge": 1024}), cfg.get("patch_size", {"height": 16, "width": 16})
        if isinstance(size, Mapping) and "longest_edge" not in size:
            raise ValueError(f"[PixtralImageConfig.from_hf] size must have longest_edge, got {dict(size)}")
        if isinstance(patch, Mapping) and patch.get("height") != patch.get("width"):
            raise ValueError(f"[PixtralImageConfig.from_hf] non-square patches {dict(patch)} are not supported")
        kw: dict[str, Any] = {
            "longest_edge": int(size["longest_edge"] if isinstance(size, Mapping) else size),
            "patch_size": int(patch["height"] if isinstance(patch, Mapping) else patch) * int(spatial_merge_size),
            "mean": cfg.get("image_mean", OPENAI_CLIP_MEAN), "std": cfg.get("image_std", OPENAI_CLIP_STD),
            "resample": cfg.get("resample", int(Image.Resampling.BICUBIC)),
            "rescale_factor": float(cfg.get("rescale_factor", 1.0 / 255.0)) if cfg.get("do_rescale", True) else 1.0,
        }
        if not cfg.get("do_normalize", True):
            kw["mean"], kw["std"] = (0.0,) * 3, (1.0,) * 3
        kw.update(overrides)
        return cls(**kw)


def pixtral_image(source: ImageSource, cfg: PixtralImageConfig | None = None) -> np.ndarray:
    """Load and resize one image as HF's PixtralImageProcessor: float32 [3, H, W], H and W
    multiples of cfg.patch_size (the unpadded region of HF's pixel_values, image_sizes (H, W)).

    Raises:
        ValueError: unreadable or oversized image, an aspect ratio that leaves an empty side.
    """
    return (cfg or PixtralImageConfig()).resized(source)
