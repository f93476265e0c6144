"""Idefics3 / SmolVLM image pre-processing: one image -> tiles + a global image, and the prompt
layout that goes with them.

This follows HF's ``Idefics3ImageProcessor`` (its PIL backend, ``Idefics3ImageProcessorPil``):

1. resize so that the longest edge is ``longest_edge`` (up- or down-scaling, aspect ratio kept,
   the short side truncated then made even, everything capped at HF's 4096);
2. with splitting: resize again so that both sides are multiples of ``max_image_size``, cut that
   image into ``max_image_size`` squares row by row, and append the whole image squashed to one
   square (the "global image"); an image that fits one square is kept alone, grid (0, 0);
   without splitting: squash the image of step 1 to one square, grid (0, 0);
3. rescale (float64 multiply, cast to float32) and normalize (float32).

Every resize is Pillow's on the uint8 image, as HF's, so the output is bit-identical to theirs.
Loading (EXIF orientation, colour modes, alpha composited on white as HF does, decompression
bombs) is ``image.load_image``'s; its one departure from HF (16-bit modes scaled, not clipped)
carries over.

Example:
    >>> cfg = Idefics3ImageConfig.from_hf({"size": {"longest_edge": 1536},
    ...                                    "max_image_size": {"longest_edge": 384}})
    >>> out = idefics3_images("cat.jpg", cfg)      # a 640 x 480 photo
    >>> out.pixel_values.shape, out.rows, out.cols
    ((13, 3, 384, 384), 3, 4)
    >>> out.prompt(image_seq_len=81).n_image_tokens
    1053
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from .image import (DEFAULT_MAX_OUT_PIXELS, DEFAULT_MAX_PIXELS, HALF, ImageSource, check_norm, load_image, normalize,
                    positive_int)
from .text import ImageChunk

# HF's MAX_IMAGE_SIZE: the longest edge after step 1 never exceeds it, whatever ``longest_edge`` says.
HF_MAX_EDGE = 4096
# HF has no such bound; 1024 tiles is 60x SmolVLM's largest grid (4 x 4) and keeps a bad config
# (max_image_size 1 with a 4096 edge: 16 M one-pixel tiles) from building millions of arrays.
DEFAULT_MAX_TILES = 1024
FAKE_TOKEN = "<fake_token_around_image>"
IMAGE_TOKEN = "<image>"
GLOBAL_TAG = "<global-img>"


def _edge(v: Any, what: str) -> int:
    # HF writes sizes as {"longest_edge": n}; a bare int is accepted for convenience.
    if isinstance(v, Mapping):
        if "longest_edge" not in v:
            raise ValueError(f"[Idefics3ImageConfig] {what} must be {{'longest_edge': n}}, got {dict(v)}")
        v = v["longest_edge"]
    return positive_int(v, f"[Idefics3ImageConfig] {what}")


def _triple(v: Any) -> tuple[float, float, float] | None:
    # HF allows one float for all three channels; None flags anything else for the caller's error.
    try:
        a = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return tuple(float(x) for x in np.broadcast_to(a, (3,))) if a.size in (1, 3) and a.ndim <= 1 else None


@dataclasses.dataclass(frozen=True)
class Idefics3ImageConfig:
    """How Idefics3 / SmolVLM want their pixels (fields as HF's preprocessor_config.json).

    Args:
        longest_edge: step 1's target for the longest edge (HF ``size["longest_edge"]``), or
            None to skip step 1 (HF ``do_resize=False``).
        max_image_size: side of every tile and of the global image (HF
            ``max_image_size["longest_edge"]``, the vision encoder's input size).
        do_image_splitting: tiles + global image (True) or the global image alone (False).
        resample: a ``PIL.Image.Resampling`` code (HF's default: LANCZOS).
        mean, std: per-channel normalization after rescaling (HF's default: 0.5).
        rescale_factor: multiplier from uint8 to float (1.0 when HF's ``do_rescale`` is off).
        max_pixels: input images with more pixels are refused before decoding.
        max_out_pixels: the largest resized image (before tiling) a config or an image may ask
            for; the default is HF's own 4096^2.
        max_tiles: the most tiles one image may produce.
    """

    longest_edge: int | None = 4 * 364
    max_image_size: int = 364
    do_image_splitting: bool = True
    resample: int = int(Image.Resampling.LANCZOS)
    mean: tuple[float, float, float] = HALF
    std: tuple[float, float, float] = HALF
    rescale_factor: float = 1.0 / 255.0
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_out_pixels: int = DEFAULT_MAX_OUT_PIXELS
    max_tiles: int = DEFAULT_MAX_TILES

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)
        if self.longest_edge is not None:
            set_("longest_edge", _edge(self.longest_edge, "longest_edge"))
        set_("max_image_size", _edge(self.max_image_size, "max_image_size"))
        set_("do_image_splitting", bool(self.do_image_splitting))
        if isinstance(self.resample, bool) or self.resample not in {int(r) for r in Image.Resampling}:
            raise ValueError(f"[Idefics3ImageConfig] resample must be a PIL.Image.Resampling code, got {self.resample!r}")
        set_("resample", int(self.resample))
        mean, std = _triple(self.mean), _triple(self.std)
        check_norm("Idefics3ImageConfig", mean, std, (self.mean, self.std))
        set_("mean", mean)
        set_("std", std)
        m = self.max_image_size
        if m * m > self.max_out_pixels:
            raise ValueError(f"[Idefics3ImageConfig] max_image_size={m} asks for {m * m} pixels per tile, more than "
                             f"max_out_pixels={self.max_out_pixels} (pass a larger max_out_pixels to allow it)")
        if self.longest_edge is not None and self.do_image_splitting:
            # The typical grid (a square image); odd shapes are checked again per image.
            side = math.ceil(min(self.longest_edge, HF_MAX_EDGE) / m)
            _check_grid(side * m, side * m, self, "[Idefics3ImageConfig] a square image")

    @classmethod
    def from_hf(cls, cfg: Mapping[str, Any], **overrides: Any) -> Idefics3ImageConfig:
        """From a HF ``preprocessor_config.json`` dict of an ``Idefics3ImageProcessor``.

        ``do_resize``, ``do_rescale``, ``do_normalize`` and ``do_image_splitting`` are honoured;
        keys this processor does not use (video settings, ``do_pad``, ...) are ignored. Keyword
        overrides replace any resulting field.
        """
        kind = str(cfg.get("image_processor_type", "Idefics3ImageProcessor"))
        if "idefics3" not in kind.lower():
            raise ValueError(f"[Idefics3ImageConfig.from_hf] image_processor_type is {kind!r}, not Idefics3's")
        mean, std = cfg.get("image_mean", HALF), cfg.get("image_std", HALF)
        if not cfg.get("do_normalize", True):
            mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        kw = {
            "longest_edge": cfg.get("size", {"longest_edge": 4 * 364}) if cfg.get("do_resize", True) else None,
            "max_image_size": cfg.get("max_image_size", {"longest_edge": 364}),
            "do_image_splitting": cfg.get("do_image_splitting", True),
            "resample": cfg.get("resample", int(Image.Resampling.LANCZOS)),
            "mean": mean,
            "std": std,
            "rescale_factor": cfg.get("rescale_factor", 1.0 / 255.0) if cfg.get("do_rescale", True) else 1.0,
        }
        kw.update(overrides)
        return cls(**kw)


# --------------------------------------------------------------------------- geometry
# The float expressions below are HF's, operation for operation: int(w / (w / h)) is not always
# h, and a different rounding would move a pixel row and break bit-exact parity.


def longest_edge_size(h: int, w: int, longest_edge: int) -> tuple[int, int]:
    """Step 1's (height, width): HF's rescale-to-max-len, then its scale-below-4096."""
    aspect = w / h
    if w >= h:
        w = longest_edge
        h = int(w / aspect)
        h += h % 2  # HF makes the short side even
    else:
        h = longest_edge
        w = int(h * aspect)
        w += w % 2
    h, w = max(h, 1), max(w, 1)
    aspect = w / h
    if w >= h and w > HF_MAX_EDGE:
        w = HF_MAX_EDGE
        h = int(w / aspect)
    elif h > w and h > HF_MAX_EDGE:
        h = HF_MAX_EDGE
        w = int(h * aspect)
    return max(h, 1), max(w, 1)


def tile_multiple_size(h: int, w: int, m: int) -> tuple[int, int]:
    """Step 2's (height, width): both sides rounded up to multiples of ``m`` (HF's
    resize_for_vision_encoder: the long side is rounded first, the short side follows it)."""
    aspect = w / h
    if w >= h:
        w = math.ceil(w / m) * m
        h = math.ceil(int(w / aspect) / m) * m
    else:
        h = math.ceil(h / m) * m
        w = math.ceil(int(h * aspect) / m) * m
    return h, w


def _check_grid(h: int, w: int, cfg: Idefics3ImageConfig, what: str) -> None:
    n_tiles = (h // cfg.max_image_size) * (w // cfg.max_image_size)
    if h * w > cfg.max_out_pixels:
        raise ValueError(f"{what} would be resized to {w}x{h} = {h * w} pixels before tiling, more than "
                         f"max_out_pixels={cfg.max_out_pixels}")
    if n_tiles > cfg.max_tiles:
        raise ValueError(f"{what} would make {n_tiles} tiles of {cfg.max_image_size}^2, more than "
                         f"max_tiles={cfg.max_tiles}")


# --------------------------------------------------------------------------- images


@dataclasses.dataclass(frozen=True, eq=False)
class Idefics3Images:
    """One image, pre-processed.

    Attributes:
        pixel_values: float32 [n_frames, 3, S, S], S = max_image_size: the tiles row by row,
            then the global image (HF's order); a single frame when rows == cols == 0.
        rows, cols: the tile grid, (0, 0) when the image was not split (HF's convention).
    """

    pixel_values: np.ndarray
    rows: int
    cols: int

    @property
    def n_frames(self) -> int:
        return int(self.pixel_values.shape[0])

    def prompt(self, image_seq_len: int) -> Idefics3Prompt:
        """The prompt layout for this image (see ``idefics3_prompt``)."""
        return idefics3_prompt(self.rows, self.cols, image_seq_len)


def _resize(img: Image.Image, h: int, w: int, resample: int) -> Image.Image:
    return img if img.size == (w, h) else img.resize((w, h), resample=resample)


def idefics3_images(source: ImageSource, cfg: Idefics3ImageConfig) -> Idefics3Images:
    """Load and pre-process one image as HF's Idefics3ImageProcessor does.

    Args:
        source: anything ``image.load_image`` accepts (path, bytes, file, PIL image, uint8 array).
        cfg: the processor's settings.

    Returns:
        Idefics3Images: float32 [n_frames, 3, S, S] frames and the (rows, cols) grid.

    Raises:
        ValueError: unreadable, truncated or oversized image, or one whose grid exceeds the caps.
    """
    img = load_image(source, max_pixels=cfg.max_pixels)
    m, rs = cfg.max_image_size, cfg.resample
    if cfg.longest_edge is not None:
        w, h = img.size
        img = _resize(img, *longest_edge_size(h, w, cfg.longest_edge), rs)
    if not cfg.do_image_splitting:
        frames, rows, cols = [np.asarray(_resize(img, m, m, rs))], 0, 0
    else:
        w, h = img.size
        th, tw = tile_multiple_size(h, w, m)
        _check_grid(th, tw, cfg, f"[idefics3_images] a {w}x{h} image")
        img = _resize(img, th, tw, rs)
        a = np.asarray(img)
        if th > m or tw > m:
            rows, cols = th // m, tw // m
            frames = [a[r * m : (r + 1) * m, c * m : (c + 1) * m] for r in range(rows) for c in range(cols)]
            frames.append(np.asarray(_resize(img, m, m, rs)))
        else:
            frames, rows, cols = [a], 0, 0
    return Idefics3Images(np.stack([normalize(f, cfg) for f in frames]), rows, cols)


def stack_idefics3(samples: Sequence[Sequence[Idefics3Images]]) -> tuple[np.ndarray, np.ndarray]:
    """HF's batched ``pixel_values`` and ``pixel_attention_mask`` for several prompts.

    Args:
        samples: per prompt, its images in prompt order.

    Returns:
        pixel_values float32 [n_prompts, max_frames, 3, S, S] and pixel_attention_mask int64
        [n_prompts, max_frames, S, S]: each prompt's frames concatenated, then zero frames with
        an all-zero mask up to the longest prompt (the only padding, since all frames are S^2).
    """
    flat = [im for images in samples for im in images]
    if not samples or not flat:
        raise ValueError("[stack_idefics3] no images")
    sizes = {im.pixel_values.shape[1:] for im in flat}
    if len(sizes) != 1:
        raise ValueError(f"[stack_idefics3] images made with different max_image_size: frame shapes {sorted(sizes)}")
    (c, s, _), = sizes
    n = max(sum(im.n_frames for im in images) for images in samples)
    pixels = np.zeros((len(samples), n, c, s, s), dtype=np.float32)
    mask = np.zeros((len(samples), n, s, s), dtype=np.int64)
    for i, images in enumerate(samples):
        k = sum(im.n_frames for im in images)
        if k:
            pixels[i, :k] = np.concatenate([im.pixel_values for im in images])
            mask[i, :k] = 1
    return pixels, mask


# --------------------------------------------------------------------------- prompt


def idefics3_image_seq_len(image_size: int, patch_size: int, scale_factor: int) -> int:
    """``<image>`` tokens per frame: patches per side squared, divided by the pixel shuffle's
    scale_factor^2 (HF's formula, with its floor division)."""
    if min(image_size, patch_size, scale_factor) < 1:
        raise ValueError(f"[idefics3_image_seq_len] image_size={image_size}, patch_size={patch_size} and "
                         f"scale_factor={scale_factor} must be positive")
    n = int(((image_size // patch_size) ** 2) / (scale_factor**2))
    if n < 1:
        raise ValueError(f"[idefics3_image_seq_len] image_size={image_size}, patch_size={patch_size}, "
                         f"scale_factor={scale_factor} leave no token per frame")
    return n


@dataclasses.dataclass(frozen=True)
class Idefics3Prompt:
    """What replaces one ``<image>`` in the prompt.

    Attributes:
        pieces: text (the markers around the frames) interleaved with one ``ImageChunk`` per
            frame, whose ``ref`` is the frame's index in ``pixel_values`` and whose ``n_tokens``
            is image_seq_len; frames appear in pixel_values order (tiles, then global).
    """

    pieces: tuple[str | ImageChunk, ...]

    @property
    def frames(self) -> list[ImageChunk]:
        return [p for p in self.pieces if isinstance(p, ImageChunk)]

    @property
    def n_image_tokens(self) -> int:
        return sum(p.n_tokens for p in self.frames)

    @property
    def text(self) -> str:
        """The string HF's Idefics3Processor puts in place of the ``<image>``."""
        return "".join(p if isinstance(p, str) else IMAGE_TOKEN * p.n_tokens for p in self.pieces)


def idefics3_prompt(rows: int, cols: int, image_seq_len: int) -> Idefics3Prompt:
    """The layout HF's Idefics3Processor writes for an image split into rows x cols tiles.

    Split: per tile ``<fake_token_around_image><row_r_col_c>`` + its tokens, a newline after
    each row, then ``\\n<fake_token_around_image><global-img>`` + the global image's tokens +
    ``<fake_token_around_image>``. Not split (0, 0): the global part alone, without newlines.
    """
    for name, v in (("rows", rows), ("cols", cols), ("image_seq_len", image_seq_len)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"[idefics3_prompt] {name} must be an int >= 0, got {v!r}")
    if image_seq_len < 1 or (rows == 0) != (cols == 0):
        raise ValueError(f"[idefics3_prompt] need image_seq_len >= 1 and rows, cols both 0 (not split) or both "
                         f"positive, got rows={rows} cols={cols} image_seq_len={image_seq_len}")
    pieces: list[str | ImageChunk] = []
    text = ""
    for r in range(rows):
        for c in range(cols):
            pieces += [text + f"{FAKE_TOKEN}<row_{r + 1}_col_{c + 1}>", ImageChunk(len(pieces) // 2, image_seq_len)]
            text = ""
        text += "\n"
    global_open = ("\n" if rows else "") + FAKE_TOKEN + GLOBAL_TAG
    pieces += [text + global_open, ImageChunk(rows * cols, image_seq_len), FAKE_TOKEN]
    return Idefics3Prompt(tuple(pieces))
