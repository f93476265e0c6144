"""Image pre-processing for vision encoders: any image Pillow opens -> float32 [3, H, W].

HF's PIL image processors (``CLIPImageProcessorPil``, ``SiglipImageProcessorPil``,
``LlavaImageProcessorPil``) convert to
RGB uint8, resize *the uint8 image* with Pillow, crop in uint8, and only then rescale (float64
multiply, cast to float32) and normalize (float32). Doing the same steps in the same dtypes here
makes the output bit-identical to theirs, so parity is exact rather than approximate.

Colour rule (``to_rgb``):
  * modes with alpha (RGBA, LA, PA, palette or L/RGB with a ``transparency`` key) are composited
    onto ``pad_color`` (white by default for CLIP/SigLIP, as HF does; the mean colour in pad
    mode, where HF would still use white, so transparent areas look like the padding);
  * 16/32-bit integer modes (I;16*, I) are scaled by 255/65535 (Pillow's own conversion clips
    everything above 255 to white, which ruins 16-bit PNGs; HF inherits that clipping);
  * float mode F is taken as [0, 1] when its maximum is <= 1, else clipped to [0, 255];
  * everything else (1, L, P, CMYK, YCbCr, LAB, HSV, RGB) goes through ``Image.convert("RGB")``.

Example:
    >>> from graphdsl.preprocess.image import ImageConfig, preprocess_image
    >>> cfg = ImageConfig.from_hf({"size": {"shortest_edge": 224}, "crop_size": 224})
    >>> preprocess_image("cat.jpg", cfg).shape
    (3, 224, 224)
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image, ImageOps

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)
MODES = ("clip", "siglip", "pad")
# 8000 x 8000. Pillow itself warns above ~89.5 M pixels and refuses above twice that.
DEFAULT_MAX_PIXELS = 64_000_000
# Output (target) size: 4096 x 4096, four times the largest fixed input of the encoders graphdsl
# knows (Gemma 3's 896^2, Qwen2-VL's default cap of 12.8 M pixels aside); its float32 output is
# 200 MB. A larger target is almost surely a typo (`--size 20000` took 60 s and ~15 GB).
DEFAULT_MAX_OUT_PIXELS = 4096 * 4096
# Smallest per-channel std accepted: real processors use 0.2 .. 1 on [0, 1] pixels (up to ~80 on
# 0..255). Below this, (x - mean) / std leaves the range any encoder was trained on and a
# denormal or zero std turns pixels into inf; a file or config saying so is broken.
MIN_STD = 1e-3

ImageSource = str | os.PathLike | bytes | io.IOBase | Image.Image | np.ndarray


@dataclasses.dataclass(frozen=True, kw_only=True)
class HalfNorm:
    """``mean`` / ``std`` at 0.5 (keyword-only): configs whose HF processor defaults to them."""

    mean: tuple[float, float, float] = HALF
    std: tuple[float, float, float] = HALF


def check_norm(who: str, mean, std, shown=None) -> None:
    """Refuse a per-channel normalisation that is not 3 finite means and 3 finite stds >= MIN_STD
    (ValueError naming ``who``; ``shown``: the (mean, std) as the caller was given them). Each
    config converts first (HF allows one value for all three channels in some processors, not all)."""
    if (mean is None or std is None or len(mean) != 3 or len(std) != 3 or not all(math.isfinite(v) for v in mean)
            or not all(math.isfinite(s) and s >= MIN_STD for s in std)):
        given = shown if shown is not None else (mean, std)
        raise ValueError(f"[{who}] need 3 finite means and 3 finite stds >= {MIN_STD:g}, got {given[0]} / {given[1]}")


def positive_int(v: Any, what: str) -> int:
    """``v`` as a Python int >= 1 (NumPy integers too, never a bool); else a ValueError naming ``what``."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{what} must be a positive int, got {v!r}")
    return int(v)


def positive_fields(cfg: Any, *names: str) -> None:
    """Check the named fields of a frozen dataclass with ``positive_int``, storing them as ints."""
    for n in names:
        object.__setattr__(cfg, n, positive_int(getattr(cfg, n), f"[{type(cfg).__name__}] {n}"))


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, Mapping):
        return int(v["height"]), int(v["width"])
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    h, w = v
    return int(h), int(w)


@dataclasses.dataclass(frozen=True)
class ImageConfig:
    """How one vision encoder wants its pixels.

    Args:
        mode: "clip" (resize shortest edge to ``size``, centre-crop ``crop_size``), "siglip"
            (resize to ``size`` (h, w), aspect ratio not kept) or "pad" (LLaVA's: centre the
            image on a square ``pad_color`` canvas, then as clip, so the aspect ratio is kept).
        size: clip/pad: shortest edge (int); siglip: (height, width) or an int for a square.
        crop_size: clip/pad: (height, width) of the centre crop, or None for no crop.
        mean, std: per-channel normalization after rescaling (None: CLIP's for clip/pad, 0.5
            for siglip).
        resample: a ``PIL.Image.Resampling`` value (HF's ``resample`` ints are the same codes).
        pad_color: RGB uint8 colour for alpha compositing and for pad mode (None: white for
            clip/siglip, as HF composites on white; int(mean * 255) for pad, as HF's LLaVA pads).
        rescale_factor: multiplier from uint8 to float (1/255; 1.0 keeps 0..255).
        max_pixels: images with more pixels are refused before decoding; intermediate images
            (LLaVA's square canvas, the resized image before its crop) may reach 4x this.
        max_out_pixels: the largest target the sizes may ask for (siglip size h*w, clip/pad
            size^2 and crop h*w); refused when the config is made, before any image is read.
    """

    mode: str = "clip"
    size: Any = 224
    crop_size: Any = 224
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    resample: int = int(Image.Resampling.BICUBIC)
    pad_color: tuple[int, int, int] | None = None
    rescale_factor: float = 1.0 / 255.0
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_out_pixels: int = DEFAULT_MAX_OUT_PIXELS

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)
        if self.mode not in MODES:
            raise ValueError(f"[ImageConfig] mode must be one of {MODES}, got {self.mode!r}")
        if self.mode in ("clip", "pad"):
            if not isinstance(self.size, (int, np.integer)):
                raise ValueError(f"[ImageConfig] {self.mode} mode wants an int shortest edge, got size={self.size!r}")
            set_("size", int(self.size))
            set_("crop_size", None if self.crop_size is None else _pair(self.crop_size))
        else:
            set_("size", _pair(self.size))
            set_("crop_size", None)
        default_ms = HALF if self.mode == "siglip" else None
        set_("mean", tuple(float(m) for m in (self.mean or default_ms or OPENAI_CLIP_MEAN)))
        set_("std", tuple(float(s) for s in (self.std or default_ms or OPENAI_CLIP_STD)))
        check_norm("ImageConfig", self.mean, self.std)
        if self.pad_color is None:
            pad = (255, 255, 255) if self.mode != "pad" else tuple(int(m * 255) for m in self.mean)
            set_("pad_color", pad)
        set_("pad_color", tuple(int(c) for c in self.pad_color))
        set_("resample", int(self.resample))
        dims = list(self.size) if self.mode == "siglip" else [self.size]
        if min(dims + list(self.crop_size or ())) < 1:
            raise ValueError(f"[ImageConfig] sizes must be positive, got size={self.size} crop_size={self.crop_size}")
        targets = [("size", dims[0] * dims[-1])] + ([("crop_size", math.prod(self.crop_size))] if self.crop_size else [])
        for what, n in targets:
            if n > self.max_out_pixels:
                raise ValueError(f"[ImageConfig] {what}={getattr(self, what)} asks for {n} output pixels, more than "
                                 f"max_out_pixels={self.max_out_pixels} (pass a larger max_out_pixels to allow it)")

    def out_shape(self) -> tuple[int, int, int] | None:
        """[3, H, W] of every output, or None when it depends on the input (clip without crop)."""
        if self.mode == "siglip":
            return (3, *self.size)
        if self.crop_size is not None:
            return (3, *self.crop_size)
        return (3, self.size, self.size) if self.mode == "pad" else None

    @classmethod
    def from_hf(cls, cfg: Mapping[str, Any], **overrides: Any) -> ImageConfig:
        """From a HF ``preprocessor_config.json`` dict (CLIP-, SigLIP- or ViT-style processors).

        ``size: {"shortest_edge": n}`` selects clip mode (pad mode when LLaVA's ``do_pad`` is
        set), ``size: {"height", "width"}`` selects siglip mode (fixed resize);
        ``do_center_crop``, ``do_rescale`` and ``do_normalize`` are honoured. Keyword overrides
        replace any resulting field.
        """
        kind = str(cfg.get("image_processor_type", "")).lower()
        size = cfg.get("size", 224)
        if isinstance(size, Mapping) and "shortest_edge" in size:
            mode, size = ("pad" if cfg.get("do_pad") else "clip"), int(size["shortest_edge"])
        elif isinstance(size, Mapping) and {"height", "width"} <= set(size):
            mode, size = "siglip", _pair(size)
        elif isinstance(size, Mapping):
            raise ValueError(f"[ImageConfig.from_hf] unsupported size {dict(size)}: need shortest_edge or height+width")
        else:  # legacy int: CLIP-style processors took it as the shortest edge
            mode = "siglip" if "siglip" in kind else "clip"
        crop = cfg.get("crop_size", size if mode != "siglip" else None)
        if mode != "siglip" and not cfg.get("do_center_crop", True):
            crop = None
        siglip = "siglip" in kind
        mean = cfg.get("image_mean", HALF if siglip else OPENAI_CLIP_MEAN)
        std = cfg.get("image_std", HALF if siglip else OPENAI_CLIP_STD)
        if not cfg.get("do_normalize", True):
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        kw = {
            "mode": mode,
            "size": size,
            "crop_size": crop,
            "mean": tuple(mean) if isinstance(mean, (list, tuple)) else (mean,) * 3,
            "std": tuple(std) if isinstance(std, (list, tuple)) else (std,) * 3,
            "resample": cfg.get("resample", int(Image.Resampling.BICUBIC)),
            "rescale_factor": cfg.get("rescale_factor", 1.0 / 255.0) if cfg.get("do_rescale", True) else 1.0,
        }
        kw.update(overrides)
        return cls(**kw)

    @classmethod
    def from_mmproj(cls, kv: Mapping[str, Any], mode: str = "clip", **overrides: Any) -> ImageConfig:
        """From llama.cpp mmproj metadata already read into a dict (``clip.vision.image_size``,
        ``clip.vision.image_mean``, ``clip.vision.image_std``). The mmproj does not say how to
        resize, so the caller picks ``mode`` (from ``clip.projector_type``)."""
        n = int(kv["clip.vision.image_size"])
        kw = {
            "mode": mode,
            "size": n,
            "crop_size": n,
            "mean": tuple(float(v) for v in kv.get("clip.vision.image_mean", OPENAI_CLIP_MEAN)),
            "std": tuple(float(v) for v in kv.get("clip.vision.image_std", OPENAI_CLIP_STD)),
        }
        kw.update(overrides)
        return cls(**kw)


# --------------------------------------------------------------------------- loading


def load_image(
    source: ImageSource,
    *,
    background: tuple[int, int, int] = (255, 255, 255),
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Open, guard, decode, apply EXIF orientation and convert to RGB.

    Args:
        source: a path, encoded bytes, a binary file object, a PIL image, or a uint8 array
            [H, W] / [H, W, C] with C in (1, 3, 4).
        background: RGB colour transparent pixels are composited on.
        max_pixels: larger images are refused from their header, before any pixel is decoded.

    Returns:
        a decoded PIL image in mode "RGB".

    Raises:
        ValueError: not an image, truncated or corrupt data, or too many pixels.
    """
    name = source if isinstance(source, (str, os.PathLike)) else type(source).__name__
    if isinstance(source, np.ndarray):
        return _decode(_from_array(source), name, background, max_pixels)
    if isinstance(source, Image.Image):
        return _decode(source, name, background, max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(source)
    try:
        opened = Image.open(source)
    except Image.DecompressionBombError as e:
        raise ValueError(f"[load_image] {name}: refused as a decompression bomb: {e}") from e
    except (OSError, SyntaxError, ValueError) as e:  # UnidentifiedImageError is an OSError
        raise ValueError(f"[load_image] {name}: not a readable image: {e}") from e
    with opened:  # multi-frame formats (GIF, TIFF) keep the file open until closed
        return _decode(opened, name, background, max_pixels)


def _decode(img: Image.Image, name: Any, background: tuple[int, int, int], max_pixels: int) -> Image.Image:
    w, h = img.size
    if w * h > max_pixels:
        raise ValueError(f"[load_image] {name}: {w}x{h} = {w * h} pixels exceeds max_pixels={max_pixels}")
    if w < 1 or h < 1:
        raise ValueError(f"[load_image] {name}: empty image {w}x{h}")
    try:
        img.load()  # decode now, so that truncation surfaces here and not inside resize
    except Image.DecompressionBombError as e:
        raise ValueError(f"[load_image] {name}: refused as a decompression bomb: {e}") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # "image file is truncated", ...
        raise ValueError(f"[load_image] {name}: truncated or corrupt image: {e}") from e
    try:
        img = ImageOps.exif_transpose(img)
        rgb = to_rgb(img, background)
    except (OSError, ValueError) as e:
        raise ValueError(f"[load_image] {name}: cannot convert mode {img.mode} to RGB: {e}") from e
    rgb.load()
    return rgb


def _from_array(a: np.ndarray) -> Image.Image:
    if a.dtype != np.uint8:
        raise ValueError(f"[load_image] arrays must be uint8 [H, W] or [H, W, C], got {a.dtype}")
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4)):
        return Image.fromarray(np.ascontiguousarray(a))
    raise ValueError(f"[load_image] arrays must be [H, W] or [H, W, C] with C in (1, 3, 4), got {a.shape}")


def to_rgb(img: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Convert any Pillow mode to RGB by the rule in the module docstring."""
    if img.mode == "RGB":
        return img
    if "A" in img.getbands() or "a" in img.getbands() or img.info.get("transparency") is not None:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if img.mode.startswith("I"):
        # 16-bit data scaled to 8 bits; 'I' (int32) is what Pillow makes of 16-bit PNG/TIFF too.
        a = np.asarray(img, dtype=np.float64)
        a = np.clip(np.rint(a * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        return Image.fromarray(a).convert("RGB")
    if img.mode == "F":
        a = np.asarray(img, dtype=np.float64)
        a = a * 255.0 if np.nanmax(a) <= 1.0 else a
        a = np.clip(np.rint(np.nan_to_num(a)), 0, 255).astype(np.uint8)
        return Image.fromarray(a).convert("RGB")
    return img.convert("RGB")


# --------------------------------------------------------------------------- geometry


def _shortest_edge_size(h: int, w: int, edge: int) -> tuple[int, int]:
    # HF's get_resize_output_image_size(default_to_square=False): long side is truncated.
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = edge, int(edge * long / short)
    return (new_long, new_short) if w <= h else (new_short, new_long)


def _center_crop(a: np.ndarray, ch: int, cw: int) -> np.ndarray:
    """HF's center_crop on [H, W, 3] uint8, including its zero padding of too-small images."""
    h, w = a.shape[:2]
    top, left = (h - ch) // 2, (w - cw) // 2
    if top >= 0 and left >= 0:
        return a[top : top + ch, left : left + cw]
    nh, nw = max(ch, h), max(cw, w)
    canvas = np.zeros((nh, nw, a.shape[2]), dtype=a.dtype)
    tp, lp = math.ceil((nh - h) / 2), math.ceil((nw - w) / 2)
    canvas[tp : tp + h, lp : lp + w] = a
    top, left = top + tp, left + lp
    return canvas[max(0, top) : min(nh, top + ch), max(0, left) : min(nw, left + cw)]


def _check_intermediate(h: int, w: int, cfg: ImageConfig, what: str) -> None:
    # HF's order of operations materialises these images in full; an extreme aspect ratio
    # (1 x 300000 -> 224 x 67 M for CLIP, a 300000^2 canvas for LLaVA) would exhaust memory.
    if h * w > 4 * cfg.max_pixels:
        raise ValueError(
            f"[preprocess_image] {what} would be {w}x{h} pixels (> 4 * max_pixels): aspect ratio too extreme"
        )


def resize_uint8(img: Image.Image, cfg: ImageConfig) -> np.ndarray:
    """Geometry only: the resized (and cropped or padded) RGB image as uint8 [H, W, 3]."""
    if cfg.mode == "siglip":
        th, tw = cfg.size
        return np.asarray(img.resize((tw, th), resample=cfg.resample))
    if cfg.mode == "pad":
        _check_intermediate(max(img.size), max(img.size), cfg, "the square canvas")
        img = pad_to_square(img, cfg.pad_color)
    w, h = img.size
    nh, nw = _shortest_edge_size(h, w, cfg.size)
    _check_intermediate(nh, nw, cfg, "the resized image before its crop")
    a = np.asarray(img.resize((nw, nh), resample=cfg.resample))
    return a if cfg.crop_size is None else _center_crop(a, *cfg.crop_size)


def pad_to_square(img: Image.Image, color: tuple[int, int, int]) -> Image.Image:
    """Centre ``img`` on a max(h, w) square of ``color`` (HF LLaVA's pad_to_square, in uint8)."""
    w, h = img.size
    if w == h:
        return img
    n = max(w, h)
    canvas = Image.new("RGB", (n, n), color)
    canvas.paste(img, ((n - w) // 2, (n - h) // 2))
    return canvas


def normalize(a: np.ndarray, cfg: ImageConfig) -> np.ndarray:
    """uint8 [H, W, 3] -> float32 [3, H, W]: (a * rescale_factor - mean) / std.

    The rescale is a float64 multiply cast to float32 and the normalize is float32, the dtypes
    HF's rescale() and normalize() use, so results are bit-identical to theirs."""
    x = (a.astype(np.float64) * cfg.rescale_factor).astype(np.float32)
    x = (x - np.asarray(cfg.mean, dtype=np.float32)) / np.asarray(cfg.std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess_image(source: ImageSource, cfg: ImageConfig) -> np.ndarray:
    """Load and pre-process one image for the encoder ``cfg`` describes.

    Args:
        source: anything ``load_image`` accepts.
        cfg: the encoder's ImageConfig.

    Returns:
        float32 [3, H, W] (H, W = cfg.out_shape()[1:] when fixed).

    Raises:
        ValueError: unreadable, truncated or oversized image.
    """
    if not isinstance(cfg, ImageConfig) and hasattr(cfg, "preprocess"):  # sizes that follow the image (qwen2vl.py)
        return cfg.preprocess(source)
    img = load_image(source, background=cfg.pad_color, max_pixels=cfg.max_pixels)
    return normalize(resize_uint8(img, cfg), cfg)
