"""Pixtral vision (projector "pixtral"): LLaVA's Pixtral tower, and Mistral-3's patch merger.

    x = patches @ patch_embd^T                      (HF's patch_conv: a p x p conv, stride p, no bias)
    x = RMSNorm(v.pre_ln)(x)
    x = blk.0 .. blk.{n-1}(x)      (RMSNorm, attention without biases, SwiGLU; q, k turned by Pixtral's
                                    2-D RoPE at each patch's (row, col); each image attends only to itself)
    x = mm.patch_merger(unfold_m(RMSNorm(mm.input_norm)(x)))         (Mistral-3 only: m x m -> one token)
    y = mm.2(GELU(mm.1(x)))                                           (LlavaMultiModalProjector)
    rows: each image's tokens row by row, v.token_embd.img_break after every row but the last

Input: patches f32 (N, 3 p p): each image's p x p patches in raster order, flattened as
(channel, row, col) (``patchify``; pixels from ``preprocess.pixtral``, sides multiples of p * m),
several images one after the other. Their (h, w) patch grids fix the RoPE positions, the
block-diagonal mask, the merge and the row layout; the mixed batch passes them through
``build_items`` (one graph whatever the sizes).

The [IMG_BREAK] / [IMG_END] layout: HF's PixtralProcessor writes an image as rows of [IMG]
tokens, [IMG_BREAK] after each row and [IMG_END] instead of the last one. llama.cpp's file holds
the [IMG_BREAK] embedding (``v.token_embd.img_break``) and its graph interleaves it; mtmd then
adds [IMG_END] as text. A file converted here from a full HF checkpoint also holds the [IMG_END]
row (``v.token_embd.img_end``, a graphdsl name llama.cpp ignores): then each image's rows are
exactly HF's span of the decoder input, [IMG_END] included; without it, they are llama.cpp's.

llama.cpp's converter permutes the q/k rows (``LlamaModel.permute``) so that ggml's normal RoPE
pairs apply: the graph here uses that layout (``ops.rope_2d(layout="normal")``).

Example:
    >>> cfg = PixtralConfig(image_size=64, patch_size=8, n_embd=32, n_ff=64, n_head=4, n_layer=2, n_mm_embd=48)
    >>> build(cfg, [(4, 6), (2, 2)]).outputs["embd"].shape   # 24 + 3 breaks, 4 + 1 break
    (32, 48)
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gguf import Keys

from .. import blocks, ops
from ..dtypes import storage_type
from ..gguf_io import KEY_MM_ACT
from ..graph import Graph, Tensor
from ..ops.rope import grid_positions, neox_to_normal
from ..preprocess.image import OPENAI_CLIP_MEAN as CLIP_MEAN, OPENAI_CLIP_STD as CLIP_STD
from .common import Block, VitHparams, file_types, weight_shapes_of
from .gguf_keys import T, gguf_vision, tn, vit_keys
from .hf import as_dict, convert_state, sub
from .pixtral_convert import SETTINGS, hf_dir, hf_rules
from .registry import Arch, ImagePreprocess, register

Grid = tuple[int, int]  # (h, w) in patches
IMG_BREAK, IMG_END = tn(T.V_TOK_EMBD_IMG_BREAK, None), "v.token_embd.img_end"


@dataclass(frozen=True)
class PixtralConfig(VitHparams):
    """Tower hyperparameters (``VitHparams``; image_size is the longest edge images keep), the
    projector's and Mistral-3's merger (merge > 1)."""

    image_size: int = 1024
    n_embd: int = 1024
    n_ff: int = 4096
    n_head: int = 16
    n_layer: int = 24
    eps: float = 1e-5
    act: str = "silu"
    rope_theta: float = 10000.0
    n_mm_embd: int = 5120
    mm_act: str = "gelu_erf"  # HF's projector_hidden_act "gelu"; llama.cpp's files: "gelu" (tanh)
    mm_bias: bool = True
    merge: int = 1  # Mistral-3's spatial_merge_size (1: no patch merger, Pixtral-12B)
    mm_eps: float = 1e-5  # the merger's RMSNorm
    projector: bool = True  # False: the tower's features (HF PixtralVisionModel)
    img_break: bool = True
    img_end: bool = False
    # HF token ids of [IMG_BREAK] / [IMG_END], for hf_to_gguf (a file holds the rows themselves)
    token_ids: Mapping[str, int] = field(default_factory=dict, hash=False, compare=False, repr=False)

    def __post_init__(self):
        if self.merge < 1 or (self.n_embd // max(self.n_head, 1)) % 4:
            raise ValueError(f"[pixtral] merge {self.merge} must be >= 1 and head_dim "
                             f"{self.n_embd // max(self.n_head, 1)} a multiple of 4 (2-D RoPE)")

    @property
    def n_out(self) -> int:
        return self.n_mm_embd if self.projector else self.n_embd

    @property
    def n_patch_in(self) -> int:
        return 3 * self.patch_size ** 2


# -- the layout of a packed batch (NumPy, before the graph) ---------------------------------------------
def patchify(pixels: Any, cfg: PixtralConfig) -> tuple[np.ndarray, Grid]:
    """Pixels f32 (3, H, W), H and W multiples of patch * merge -> (patches (h*w, 3 p p), (h, w)):
    raster order, each patch as (channel, row, col), the order HF's Conv2d kernel meets."""
    a = np.asarray(getattr(pixels, "pixel_values", pixels), dtype=np.float32)
    p, m = cfg.patch_size, cfg.merge
    if a.ndim != 3 or a.shape[0] != 3 or a.shape[1] % (p * m) or a.shape[2] % (p * m) or 0 in a.shape:
        raise ValueError(f"[pixtral] an image must be pixels f32 (3, H, W) with H and W multiples of {p * m} "
                         f"(see preprocess.pixtral), got {getattr(a, 'shape', '?')}")
    h, w = a.shape[1] // p, a.shape[2] // p
    x = a.reshape(3, h, p, w, p).transpose(1, 3, 0, 2, 4)
    return np.ascontiguousarray(x.reshape(h * w, 3 * p * p)), (h, w)


def n_tokens(grid: Grid, cfg: PixtralConfig) -> int:
    """Rows one image gives: its merged tokens, plus the marker rows the file holds."""
    h, w = grid[0] // cfg.merge, grid[1] // cfg.merge
    if not cfg.projector:
        return h * w
    return h * w + (h - 1) * cfg.img_break + cfg.img_end


def row_index(grids: Sequence[Grid], cfg: PixtralConfig) -> np.ndarray:
    """i32 rows of [tokens; img_break; img_end] in the decoder's order, every image one after the other."""
    n = sum(h * w for h, w in grids) // cfg.merge ** 2
    out, base = [], 0
    for gh, gw in grids:
        h, w = gh // cfg.merge, gw // cfg.merge
        for r in range(h):
            out.extend(range(base + r * w, base + (r + 1) * w))
            if cfg.img_break and r < h - 1:
                out.append(n)
        if cfg.img_end:
            out.append(n + cfg.img_break)
        base += h * w
    return np.asarray(out, np.int32)


# -- the graph --------------------------------------------------------------------------------------------
def _rope_hook(pos: Tensor, theta: float):
    def hook(q, k, il):
        return (ops.rope_2d(q, pos, freq_base=theta, layout="normal", name="attn_q.rope"),
                ops.rope_2d(k, pos, freq_base=theta, layout="normal", name="attn_k.rope"))
    return hook


def _layer(x: Tensor, c: PixtralConfig, mask: Tensor | None, hook, il: int) -> Tensor:
    # blocks.vit_layer with what Pixtral lacks: no norm, attention or FFN biases at all
    h = blocks.norm(x, "ln1", eps=c.eps, kind="rms", bias=False)
    h = blocks.attention(h, c.n_head, qkv_bias=(False, False, False), out_bias=False, qk_hook=hook, il=il,
                         impl=c.attn, mask=mask, wtype=c.wtype)
    x = ops.add(x, h, name="ffn_inp")
    h = blocks.norm(x, "ln2", eps=c.eps, kind="rms", bias=False)
    h = blocks.ffn(h, c.n_ff, c.act, bias=False, wtype=c.wtype, gated=True)
    return ops.add(x, h, name="layer_out")


def _merge(x: Tensor, c: PixtralConfig, grids: Sequence[Grid]) -> Tensor:
    """Mistral3PatchMerger: each m x m group of an image -> one row, features (channel, a, b) as
    torch's unfold orders them, then mm.patch_merger."""
    g, m, d = x.graph, c.merge, c.n_embd
    x = blocks.norm(x, "input_norm", eps=c.mm_eps, kind="rms", bias=False)
    idx, base = [], 0
    for h, w in grids:  # each group's m^2 rows consecutive (rows a, then columns b)
        idx.append(blocks.merge_order_index((h, w), m) + base)
        base += h * w
    x = ops.get_rows(x, g.const("merge_idx", np.concatenate(idx).astype(np.int32), dtype="i32"), name="merge_order")
    n = x.shape[0] // (m * m)
    x = ops.permute(ops.reshape(x, (n, m * m, d), name="merge_groups"), 0, 2, 1, name="merge_unfold")
    x = ops.reshape(x, (n, d * m * m), name="merged")
    return blocks.linear(x, "patch_merger", d, bias=False, wtype=c.wtype)


def encode(patches: Tensor, c: PixtralConfig, grids: Sequence[Grid]) -> Tensor:
    """Packed patches (N, 3 p p) of the images ``grids`` -> their rows (``n_tokens`` each), in order."""
    g = patches.graph
    grids = [(int(h), int(w)) for h, w in grids]
    if (patches.ndim != 2 or patches.shape[1] != c.n_patch_in or not grids
            or sum(h * w for h, w in grids) != patches.shape[0]
            or any(h < 1 or w < 1 or h % c.merge or w % c.merge for h, w in grids)):
        raise ValueError(f"[pixtral] patches {patches.shape} do not fit grids {grids}: need (sum h*w, "
                         f"{c.n_patch_in}) with h, w multiples of {c.merge}")
    d, p = c.n_embd, c.patch_size
    with g.scope("v"):
        shape = (d, 3, p, p)
        kernel = g.weight("patch_embd.weight", shape, storage_type(g.qualify("patch_embd.weight"), shape, c.wtype))
        x = ops.mul_mat(patches, ops.reshape(kernel, (d, 3 * p * p), name="patch_embd.mat"), name="inp_patches")
        x = blocks.norm(x, "pre_ln", eps=c.eps, kind="rms", bias=False)
        pos = g.const("inp_pos", np.concatenate([grid_positions(h, w, 1, rows=2) for h, w in grids], 1), dtype="i32")
        mask = blocks.seq_mask(g, [h * w for h, w in grids]) if len(grids) > 1 else None
        hook = _rope_hook(pos, c.rope_theta)
        for il in range(c.n_layer):
            with g.scope(f"blk.{il}"):
                x = _layer(x, c, mask, hook, il)
        if not c.projector:
            return x
    with g.scope("mm"):
        if c.merge > 1:
            x = _merge(x, c, grids)
        x = blocks.linear(x, "1", c.n_mm_embd, bias=c.mm_bias, wtype=c.wtype)
        x = blocks.activation(x, c.mm_act, name="act")
        x = blocks.linear(x, "2", c.n_mm_embd, bias=c.mm_bias, wtype=c.wtype)
    if not (c.img_break or c.img_end):
        return x
    with g.scope("v"):
        marks = [ops.reshape(g.weight(name[2:], (c.n_mm_embd,)), (1, c.n_mm_embd), name=f"{name[2:]}.row")
                 for name, on in ((IMG_BREAK, c.img_break), (IMG_END, c.img_end)) if on]
    table = ops.concat([x, *marks], axis=0, name="rows_table")
    return ops.get_rows(table, g.const("rows_idx", row_index(grids, c), dtype="i32"), name="rows")


class PixtralVision(Block):
    """Packed patches f32 (N, 3 p p) -> the decoder's rows of every image, for the images ``grids``.

    Called on one tensor it takes ``grids`` from the constructor (default: one square image of
    image_size); the mixed batch calls ``build_items`` with pixels of any sizes.
    """

    kind = "image"

    def __init__(self, cfg: PixtralConfig, grids: Sequence[Grid] | None = None):
        super().__init__(cfg)
        side = max(cfg.merge, (cfg.image_size // cfg.patch_size) // cfg.merge * cfg.merge)
        self.grids = [tuple(gr) for gr in grids] if grids else [(side, side)]

    example = property(lambda self: ((sum(h * w for h, w in self.grids), self.cfg.n_patch_in), "f32"))
    # Mmproj.image_config: sides multiples of the merged patch (HF's PixtralProcessor: patch * merge)
    image_kw = property(lambda self: {"patch_size": self.cfg.patch_size * self.cfg.merge})

    def _build(self, patches: Tensor) -> Tensor:
        return encode(patches, self.cfg, self.grids)

    def items(self, datas: Sequence[Any]) -> tuple[np.ndarray, list[Grid]]:
        """Pixels of each image -> (packed patches, grids)."""
        pieces = [patchify(d, self.cfg) for d in datas]
        return np.concatenate([p for p, _ in pieces]), [gr for _, gr in pieces]

    def build_items(self, g: Graph, prefix: str, datas: Sequence[Any], batch_kinds=()):
        """The mixed batch's hook: every image in one packed sequence (see ``embed``)."""
        x, grids = self.items(datas)
        name = f"{prefix}.patches"
        with file_types(g, self.cfg.wtypes):
            out = encode(g.input(name, x.shape), self.cfg, grids)
        outs, r0 = [], 0
        for i, gr in enumerate(grids):
            r1 = r0 + n_tokens(gr, self.cfg)
            outs.append(out if len(grids) == 1 else ops.view(out, 0, r0, r1, name=f"{prefix}.{i}"))
            r0 = r1
        return {name: x}, outs, tuple(grids)


def build(cfg: PixtralConfig, grids: Sequence[Grid] | None = None) -> Graph:
    """A graph with input ``pixels`` (packed patches of ``grids``, see ``patchify``) and output ``embd``."""
    block = PixtralVision(cfg, grids)
    g = Graph("pixtral")
    g.output("embd", block(g.input("pixels", *block.example)))
    return g


def weight_shapes(cfg: PixtralConfig) -> dict[str, tuple[int, ...]]:
    return weight_shapes_of(PixtralVision(cfg))


# -- configs and files ------------------------------------------------------------------------------------
def config_from_hf(hf: Any) -> PixtralConfig:
    """From an HF LlavaConfig with a Pixtral tower, a Mistral3Config, or a bare PixtralVisionConfig.

    [IMG_BREAK] / [IMG_END] rows need their token ids (``image_break_token_id`` /
    ``image_end_token_id``, as Mistral's own configs say, or read from the tokenizer files by
    ``graphdsl convert``): without them the rows are HF's get_image_features alone.
    """
    d = as_dict(hf)
    mt = d.get("model_type")
    v = sub(d, "vision_config") if "vision_config" in d else d
    if v.get("model_type", "pixtral") != "pixtral" or mt not in ("llava", "mistral3", "pixtral", None):
        raise ValueError(f"[pixtral.config_from_hf] model_type {mt!r} with a {v.get('model_type')!r} tower is not "
                         "Pixtral (LLaVA + pixtral, mistral3, pixtral)")
    rope = v.get("rope_parameters") or {}
    kw = dict(image_size=v.get("image_size", 1024), patch_size=v.get("patch_size", 16),
              n_embd=v.get("hidden_size", 1024), n_ff=v.get("intermediate_size", 4096),
              n_head=v.get("num_attention_heads", 16), n_layer=v.get("num_hidden_layers", 24),
              eps=1e-5, act=blocks.act_of(v.get("hidden_act", "gelu")),  # HF hard-codes 1e-5
              rope_theta=float(rope.get("rope_theta", v.get("rope_theta", 10000.0))))
    if "vision_config" not in d:
        return PixtralConfig(**kw, projector=False, img_break=False)
    fl = d.get("vision_feature_layer", -1)
    if not isinstance(fl, int) or d.get("vision_feature_select_strategy", "full") != "full":
        raise ValueError(f"[pixtral.config_from_hf] vision_feature_layer {fl!r} / select strategy "
                         f"{d.get('vision_feature_select_strategy')!r}: one layer, 'full', as Pixtral's")
    if not 0 < fl % (kw["n_layer"] + 1):
        raise ValueError(f"[pixtral.config_from_hf] vision_feature_layer {fl} selects no transformer layer")
    kw["n_layer"] = fl % (kw["n_layer"] + 1)  # the file stores the blocks up to the feature layer
    t = sub(d, "text_config")
    ids = {k: int(src[f"image_{k[4:]}_token_id"]) for k in ("img_break", "img_end")
           for src in (d, v) if src.get(f"image_{k[4:]}_token_id") is not None}
    merge = int(d.get("spatial_merge_size", 1)) if mt == "mistral3" else 1
    return PixtralConfig(**kw, n_mm_embd=t.get("hidden_size", 5120),
                         mm_act=blocks.act_of(d.get("projector_hidden_act", "gelu")),
                         mm_bias=d.get("multimodal_projector_bias", mt != "mistral3"), merge=merge,
                         mm_eps=float(t.get("rms_norm_eps", 1e-5)) if merge > 1 else kw["eps"],
                         img_break="img_break" in ids, img_end="img_end" in ids, token_ids=ids)


def config_from_gguf(src: Any) -> PixtralConfig:
    """From an mmproj GGUF with projector "pixtral" (llama.cpp's layout, Mistral-3's merger included)."""
    m, v, kw = gguf_vision(src, ("pixtral",), "Pixtral")
    out = m.shapes.get(tn(T.V_MMPROJ, "weight", 2))
    if out is None:
        raise m.error("no mm.2.weight (the projector's output)")
    merge = v.n_merge or 1
    if (merge > 1) != (tn(T.V_MM_PATCH_MERGER) in m.shapes):
        raise m.error(f"spatial_merge_size {merge} and the presence of mm.patch_merger.weight disagree")
    return PixtralConfig(**kw, n_mm_embd=out[0], mm_act=v.projector_act, mm_bias=tn(T.V_MMPROJ, "bias", 1) in m.shapes,
                         merge=merge, mm_eps=kw["eps"], img_break=IMG_BREAK in m.shapes, img_end=IMG_END in m.shapes)


def config_to_gguf(cfg: PixtralConfig, image_mean=CLIP_MEAN, image_std=CLIP_STD) -> list[tuple[str, object]]:
    V = Keys.ClipVision
    # llama.cpp hard-codes these for "pixtral"; a file cannot say otherwise
    if not cfg.projector or cfg.rope_theta != 10000.0 or cfg.mm_eps != cfg.eps:
        raise ValueError(f"[pixtral.config_to_gguf] llama.cpp's pixtral files need the projector, rope_theta 10000 "
                         f"and the merger's eps equal to the tower's; got projector={cfg.projector}, "
                         f"rope_theta={cfg.rope_theta}, merger eps {cfg.mm_eps} vs {cfg.eps}")
    kv = [(Keys.Clip.PROJECTOR_TYPE, "pixtral"), *vit_keys(cfg, image_mean, image_std),
          (V.PROJECTION_DIM, cfg.n_mm_embd), (KEY_MM_ACT, cfg.mm_act)]
    return kv + ([(V.SPATIAL_MERGE_SIZE, cfg.merge)] if cfg.merge > 1 else [])


def hf_to_gguf(state_dict, config) -> dict[str, np.ndarray]:
    """HF LlavaForConditionalGeneration (Pixtral) / Mistral3ForConditionalGeneration tensors -> gguf
    names (NumPy f32): q/k rows permuted for ggml's normal RoPE, the marker rows cut from the
    decoder's token table (as llama.cpp's converter does)."""
    cfg = config if isinstance(config, PixtralConfig) else config_from_hf(config)

    def fix(out):
        for name in [k for k in out if k.endswith((".attn_q.weight", ".attn_k.weight"))]:
            out[name] = np.ascontiguousarray(neox_to_normal(out[name], cfg.n_head))
        table = out.pop("token_embd", None)
        for key, gg, on in (("img_break", IMG_BREAK, cfg.img_break), ("img_end", IMG_END, cfg.img_end)):
            if on and table is not None and key in cfg.token_ids:
                out[gg] = np.ascontiguousarray(table[cfg.token_ids[key]])
        return out
    return convert_state(state_dict, ("model.",), hf_rules(), weight_shapes(cfg), "pixtral", fix=fix)


class LongestEdge(ImagePreprocess):
    """HF's PixtralImageProcessor: the longest edge capped, sides multiples of the patch (``preprocess.pixtral``)."""

    def config(self, image_size: int | None = None, mean=None, std=None, patch_size: int = 16,
               longest_edge: int | None = None, **kw):
        from ..preprocess.pixtral import PixtralImageConfig
        return PixtralImageConfig(longest_edge=longest_edge or image_size or 1024, patch_size=patch_size,
                                  mean=tuple(mean or self.mean), std=tuple(std or self.std), **kw)


def frames(source, mmproj, text_info=None, max_seconds=None) -> np.ndarray:
    """An image resized as HF's processor does for this file: the longest edge its carried
    size.longest_edge (clip.vision.image_size when absent), sides multiples of the processor's
    patch_size (the tower's when absent) * merge, the file's mean / std: pixels (3, H, W)."""
    from ..preprocess.pixtral import pixtral_image
    return pixtral_image(source, mmproj.image_config())



ARCH = register(Arch(
    "pixtral", "image", PixtralVision, PixtralConfig, config_from_hf, config_from_gguf, config_to_gguf, hf_to_gguf,
    projectors=("pixtral",), hf_model_types=("llava/pixtral", "mistral3", "pixtral"),
    image=LongestEdge("pixtral", CLIP_MEAN, CLIP_STD), prepare=frames, hf_dir=hf_dir, settings=SETTINGS,
    examples=(PixtralConfig(image_size=64, patch_size=8, n_embd=32, n_ff=64, n_head=4, n_layer=2, n_mm_embd=48,
                            mm_act="gelu_erf"),
              PixtralConfig(image_size=56, patch_size=7, n_embd=32, n_ff=64, n_head=4, n_layer=2, n_mm_embd=48,
                            merge=2, mm_bias=False, img_end=True))))
