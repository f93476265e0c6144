"""LLaVA-NeXT / LLaVA-1.6 "anyres": the CLIP tower + LLaVA MLP projector of ``models.clip`` run on
an image's views (``preprocess.anyres``: a base view, then a grid of tiles), packed as HF's
``LlavaNextModel.get_image_features`` + ``pack_image_features`` pack them:

    f      = mm.2(GELU(mm.0(clip(views)[feature_layer][1:])))     (n_views, p*p, d), as models.clip
    base   = f[0]                                                (p*p rows, raster order)
    grid   = f[1:] as (rows*p, cols*p, d): tile (r, c) patch (i, j) at (r*p + i, c*p + j)
    grid   = grid[top:bottom, left:right]                        (unpad: drop the letterbox rows/cols)
    grid   = [grid | v.image_newline]                            (one newline ending every row)
    out    = [base; grid.reshape(-1, d)]                          (p*p + H' (W' + 1) rows)

Several images share one batch of views (one tower run over all their tiles); each image's rows
follow in batch order, as HF's list of packed features. The layout (original size and grid of
each image) is fixed when the graph is built: ``build(cfg, images)``, or ``build_items`` in a
mixed batch.

Only vision_feature_select_strategy "default" can be packed: "full" keeps CLIP's class token,
and p*p + 1 rows per tile are no grid (HF's pack_image_features fails on it too).

File (llama.cpp's LLaVA-1.6 mmproj): projector "mlp" with ``v.image_newline``,
``clip.vision.image_grid_pinpoints`` flattened as (width, height) pairs (clip.cpp reads each pair
into a clip_image_size {width, height}; HF's config lists (height, width)), and
``clip.vision.mm_patch_merge_type`` "spatial_unpad". graphdsl follows HF: the class token is
position 0 and is dropped before the projector, where llama.cpp's mtmd appends it after the
patches (upstream issue #25814). mtmd also appears to load the newline without using it (no
unpad step and no caller of ``clip_get_newline_tensor`` since ``clip_llava_handle_patches`` was
removed: read, not run here), in which case its LLaVA-1.6 rows differ from HF's in count too.

Example:
    >>> cfg = LlavaNextConfig(image_size=32, patch_size=8, n_embd=64, n_ff=128, n_head=4, n_layer=2,
    ...                       n_mm_embd=48, grid_pinpoints=((32, 64), (64, 32), (64, 64)))
    >>> g = build(cfg, [((45, 70), (1, 2))])     # one 70x45 image: base + 1x2 tiles
    >>> g.inputs["pixels"].shape, g.outputs["embd"].shape    # 16 base rows + 4 rows x (6 unpadded + newline)
    ((3, 3, 32, 32), (44, 48))
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from .. import ops
from ..gguf_io.reader import metadata_value, read_gguf
from ..graph import Graph, Tensor
from ..inp_embd import shape_guard
from ..preprocess.anyres import LLAVA_NEXT_PINPOINTS, AnyresConfig, AnyresImage, anyres_images, unpad_crop
from . import clip
from .common import Block, file_types, weight_shapes_of
from .gguf_keys import mmproj_config
from .hf import VISION_PREFIXES, as_dict, convert_state
from . import settings
from .registry import Arch, ImagePreprocess, register

IMAGE_NEWLINE = clip.IMAGE_NEWLINE  # "v.image_newline" (clip-impl.h TN_IMAGE_NEWLINE)
KEY_PINPOINTS = "clip.vision.image_grid_pinpoints"
KEY_MERGE_TYPE = "clip.vision.mm_patch_merge_type"
KEY_CROP_RESOLUTION = "clip.vision.image_crop_resolution"


@dataclass(frozen=True)
class LlavaNextConfig(clip.ClipConfig):
    """``ClipConfig`` (tower, feature layers, projector) and the candidate resolutions."""

    grid_pinpoints: tuple[tuple[int, int], ...] = LLAVA_NEXT_PINPOINTS  # (height, width), HF's orientation

    def __post_init__(self):
        pts = AnyresConfig(grid_pinpoints=self.grid_pinpoints, size=self.image_size, crop_size=self.image_size)
        object.__setattr__(self, "grid_pinpoints", pts.grid_pinpoints)
        if self.select != "default" or self.projector != "mlp":
            raise ValueError(f"[llava_next] needs select 'default' and projector 'mlp', got {self.select!r} / "
                             f"{self.projector!r}: with the class token kept ('full') a tile's p*p + 1 rows form no "
                             f"grid to unpad (HF's pack_image_features fails on it too)")

    @property
    def patches_per_side(self) -> int:
        return self.image_size // self.patch_size


Layout = tuple[tuple[int, int], tuple[int, int]]  # ((height, width) of the original image, (rows, cols) of tiles)


def layout_of(item: Any) -> Layout:
    """((H, W), (rows, cols)) of an ``AnyresImage`` or such a pair."""
    if isinstance(item, AnyresImage):
        return tuple(item.image_size), tuple(item.grid)
    try:
        (h, w), (r, c) = item
        out = (int(h), int(w)), (int(r), int(c))
    except (TypeError, ValueError):
        raise ValueError(f"[llava_next] an image layout is an AnyresImage or ((H, W), (rows, cols)), got {item!r}") \
            from None
    if min(*out[0], *out[1]) < 1:
        raise ValueError(f"[llava_next] sizes and grid must be positive, got {out}")
    return out


class LlavaNextVision(Block):
    """Views f32 (n_views, 3, S, S) of the images in ``layouts`` -> their rows (n_rows, n_mm_embd).

    Without layouts the input is one view alone (HF's single-view branch: its p*p rows and one
    newline), which is what ``example`` declares the weights on.
    """

    kind = "image"
    example = property(lambda self: ((1, 3, self.cfg.image_size, self.cfg.image_size), "f32"))

    def __init__(self, cfg: LlavaNextConfig, layouts: Sequence[Any] | None = None):
        super().__init__(cfg)
        self.layouts = None if layouts is None else [layout_of(x) for x in layouts]

    def rows(self, data) -> np.ndarray:
        raise ValueError("[llava_next] an anyres image is several views with a layout, not one batch row: embed it "
                         "through build_items (graphdsl.embed's mixed batch) or build(cfg, images)")

    def views(self, images: Sequence[AnyresImage]) -> np.ndarray:
        """The views of ``images``, concatenated in order, checked against this tower's size."""
        s = self.cfg.image_size
        arrays = []
        for i, im in enumerate(images):
            if not isinstance(im, AnyresImage):
                raise ValueError(f"[llava_next] image {i}: expected preprocess.anyres.AnyresImage, got "
                                 f"{type(im).__name__} (see preprocess.anyres_images)")
            a = np.asarray(im.pixel_values, np.float32)
            if a.ndim != 4 or a.shape[1:] != (3, s, s) or a.shape[0] != 1 + im.grid[0] * im.grid[1]:
                raise ValueError(f"[llava_next] image {i}: views {a.shape} do not fit a {im.grid} grid of "
                                 f"(3, {s}, {s}) tiles plus the base view")
            arrays.append(a)
        return np.ascontiguousarray(np.concatenate(arrays))

    def build_items(self, g: Graph, prefix: str, datas: Sequence[AnyresImage], batch_kinds=()):
        """The mixed batch's hook: all images' views as one input, one (n_i, d) output per image,
        and the layouts as the executor-cache key."""
        pixels = self.views(datas)
        layouts = [layout_of(im) for im in datas]
        name = f"{prefix}.pixels"
        with file_types(g, self.cfg.wtypes):
            outs = self.pack(self.tower(g.input(name, pixels.shape)), layouts)
        return {name: pixels}, outs, ("llava_next", tuple(layouts))

    def tower(self, pixels: Tensor) -> Tensor:
        """(n_views, 3, S, S) -> (n_views, p*p, d): models.clip's tower and projector."""
        return clip.ClipVision(self.cfg)(pixels)

    def pack(self, f: Tensor, layouts: Sequence[Layout]) -> list[Tensor]:
        """Each image's rows from the projected views ``f`` (n_views, p*p, d), as HF packs them."""
        c, g = self.cfg, f.graph
        p, d = c.patches_per_side, c.n_mm_embd
        newline = ops.reshape(g.weight(IMAGE_NEWLINE, (d,)), (1, 1, d), name="v.newline")
        n = sum(1 + r * k for _, (r, k) in layouts)
        if n != f.shape[0]:
            raise ValueError(f"[llava_next] the layouts need {n} views, the input has {f.shape[0]}")
        outs, v0 = [], 0
        for i, (hw, (rows, cols)) in enumerate(layouts):
            base = ops.reshape(ops.view(f, 0, v0, v0 + 1, name=f"anyres.{i}.base_view"), (p * p, d),
                               name=f"anyres.{i}.base")
            top, bottom, left, right = unpad_crop(hw, (rows * p, cols * p))
            if bottom == top:  # an extreme aspect ratio leaves no row: the base view alone, as HF
                outs.append(base)
            elif right == left:  # ... or no column: one newline per row, as HF
                nl = ops.repeat(newline, (bottom - top, 1, d), name=f"anyres.{i}.newlines")
                outs.append(ops.concat([base, ops.reshape(nl, (bottom - top, d))], axis=0, name=f"anyres.{i}"))
            else:
                grid = self._grid(ops.view(f, 0, v0 + 1, v0 + 1 + rows * cols, name=f"anyres.{i}.tile_views"),
                                  (rows, cols), (top, bottom, left, right), newline, f"anyres.{i}")
                outs.append(ops.concat([base, grid], axis=0, name=f"anyres.{i}"))
            v0 += 1 + rows * cols
        return outs

    def _grid(self, tiles: Tensor, grid: tuple[int, int], crop: tuple[int, int, int, int], newline: Tensor,
              name: str) -> Tensor:
        """(rows*cols, p*p, d) tile features -> the unpadded grid's rows, each ended by a newline."""
        (rows, cols), (top, bottom, left, right) = grid, crop
        p, d = self.cfg.patches_per_side, self.cfg.n_mm_embd
        # (rows, cols, p, p*d) -> (rows, p, cols, p*d): patch (i, j) of tile (r, c) at (r*p + i, c*p + j)
        x = ops.reshape(tiles, (rows, cols, p, p * d), name=f"{name}.tiles")
        x = ops.permute(x, (0, 2, 1, 3), name=f"{name}.tile_rows")
        x = ops.reshape(ops.cont(x, name=f"{name}.cont"), (rows * p, cols * p, d), name=f"{name}.grid")
        if (top, bottom) != (0, rows * p):
            x = ops.view(x, 0, top, bottom, name=f"{name}.unpad_rows")
        if (left, right) != (0, cols * p):
            x = ops.view(x, 1, left, right, name=f"{name}.unpad_cols")
        nl = ops.repeat(newline, (bottom - top, 1, d), name=f"{name}.newlines")
        x = ops.concat([x, nl], axis=1, name=f"{name}.rows")
        return ops.reshape(x, (x.shape[0] * x.shape[1], d), name=f"{name}.unpadded")

    def _build(self, pixels: Tensor) -> Tensor:
        c, g = self.cfg, pixels.graph
        if self.layouts is not None:  # before the tower, whose nodes would fail first on another count
            shape_guard(g, "v.views_guard", pixels, "[llava_next] the views are fixed by the layouts")
        f = self.tower(pixels)
        if self.layouts is None:  # one view alone
            if f.ndim == 3 and f.shape[0] != 1:
                raise ValueError(f"[llava_next] {f.shape[0]} views without layouts; build(cfg, images) says how "
                                 f"they form images")
            f = ops.reshape(f, f.shape[-2:], name="anyres.base")
            nl = ops.reshape(g.weight(IMAGE_NEWLINE, (c.n_mm_embd,)), (1, c.n_mm_embd), name="v.newline")
            return ops.concat([f, nl], axis=0, name="anyres")
        outs = self.pack(f, self.layouts)
        return ops.concat(outs, axis=0, name="anyres") if len(outs) > 1 else outs[0]


def build(cfg: LlavaNextConfig, images: Sequence[Any]) -> Graph:
    """A graph with input ``pixels`` (all views of ``images`` in order) and output ``embd`` (their
    rows, image after image); ``images``: AnyresImage objects or ((H, W), (rows, cols)) layouts."""
    block = LlavaNextVision(cfg, images)
    n = sum(1 + r * k for _, (r, k) in block.layouts)
    g = Graph("llava_next")
    g.output("embd", block(g.input("pixels", (n, 3, cfg.image_size, cfg.image_size))))
    return g


def weight_shapes(cfg: LlavaNextConfig) -> dict[str, tuple[int, ...]]:
    return weight_shapes_of(LlavaNextVision(cfg))


def _with(base: clip.ClipConfig, **kw) -> LlavaNextConfig:
    return LlavaNextConfig(**{f.name: getattr(base, f.name) for f in fields(base)}, **kw)


def config_from_hf(hf: Any) -> LlavaNextConfig:
    """From an HF LlavaNextConfig (CLIP vision_config, feature layer(s), image_grid_pinpoints)."""
    d = as_dict(hf)
    if d.get("model_type") != "llava_next":
        raise ValueError(f"[llava_next.config_from_hf] model_type {d.get('model_type')!r} is not 'llava_next'")
    base = clip.config_from_hf({**d, "model_type": "llava"})  # the tower and projector LLaVA has
    return _with(base, grid_pinpoints=tuple(tuple(p) for p in d.get("image_grid_pinpoints", LLAVA_NEXT_PINPOINTS)))


def config_from_gguf(src: Any) -> LlavaNextConfig:
    """From a LLaVA-1.6 mmproj: models.clip's reading and the (width, height) pinpoints."""
    m = mmproj_config(src)
    pts = [int(x) for x in metadata_value(read_gguf(m.path), KEY_PINPOINTS, "ints", [])]
    if not pts or len(pts) % 2:
        raise m.error(f"{KEY_PINPOINTS} must list (width, height) pairs, got {pts}")
    if m.shapes.get(IMAGE_NEWLINE) is None:
        raise m.error(f"a LLaVA-1.6 file needs {IMAGE_NEWLINE} (older files name it model.image_newline: rename it)")
    try:
        return _with(clip.config_from_gguf(m), grid_pinpoints=tuple(zip(pts[1::2], pts[0::2])))
    except ValueError as e:  # the pinpoints' checks (multiples of the tile, max_tiles), naming the file
        raise m.error(str(e)) from None


def config_to_gguf(cfg: LlavaNextConfig, image_mean=clip.CLIP_MEAN, image_std=clip.CLIP_STD) -> list[tuple]:
    """models.clip's metadata, the pinpoints as llama.cpp reads them ((width, height) pairs) and LLaVA-1.6's keys."""
    wh = np.array([v for h, w in cfg.grid_pinpoints for v in (w, h)], np.int32)
    return [*clip.config_to_gguf(cfg, image_mean, image_std), (KEY_PINPOINTS, wh),
            (KEY_MERGE_TYPE, "spatial_unpad"), (KEY_CROP_RESOLUTION, int(cfg.image_size))]


def hf_to_gguf(state_dict, config) -> dict[str, np.ndarray]:
    """HF LlavaNextForConditionalGeneration tensors -> gguf names (NumPy f32)."""
    cfg = config if isinstance(config, LlavaNextConfig) else config_from_hf(config)
    return convert_state(state_dict, VISION_PREFIXES, [*clip._rules(), ("image_newline", IMAGE_NEWLINE)],
                         weight_shapes(cfg), "llava_next")


def frames(source, mmproj, text_info=None, max_seconds=None) -> AnyresImage:
    """An image as HF's LlavaNextImageProcessor cuts it, for a file's tower (crop = its image_size,
    its pinpoints) with the file's carried shortest edge, resample, rescale and normalization."""
    c = mmproj.vision.cfg
    kw = settings.image_kw(ARCH, mmproj)
    edge = kw.pop("shortest_edge", c.image_size)
    return anyres_images(source, AnyresConfig(grid_pinpoints=c.grid_pinpoints, size=edge, crop_size=c.image_size, **kw))


SETTINGS = (
    *(s for s in clip.SETTINGS if s.path != "do_pad"),  # LLaVA's pad to square; LLaVA-NeXT's do_pad is not it
    settings.carried("config", "image_grid_pinpoints", KEY_PINPOINTS),
    settings.Setting("processor", "image_grid_pinpoints",
                     refuse=settings.other_than("image_grid_pinpoints", LLAVA_NEXT_PINPOINTS),
                     reason="the processor's grids must be the model's config.json image_grid_pinpoints, which "
                            "graphdsl uses for both"),
    settings.irrelevant("processor", "do_pad", "pads a batch's images to the same number of tiles, which the "
                        "model drops: an image's rows do not change"),
)


ARCH = register(Arch(
    "llava_next", "image", LlavaNextVision, LlavaNextConfig, config_from_hf, config_from_gguf, config_to_gguf,
    hf_to_gguf, projectors=("mlp",), hf_model_types=("llava_next",),
    claims=lambda m: IMAGE_NEWLINE in m.shapes or "model.image_newline" in m.shapes,
    image=ImagePreprocess("siglip", clip.CLIP_MEAN, clip.CLIP_STD,  # the base view: a square resize
                          # llava-hf's 336 (the class default, 224, does not divide its own default pinpoints)
                          defaults={"image_size": 336, "patch_size": 14}),
    prepare=frames, settings=SETTINGS,
    examples=(LlavaNextConfig(image_size=32, patch_size=8, n_embd=32, n_ff=64, n_head=4, n_layer=2,
                              feature_layer=(2,), n_mm_embd=48, mm_act="gelu_erf",
                              grid_pinpoints=((32, 64), (64, 32), (64, 64), (96, 32))),)))
