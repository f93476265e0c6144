"""Qwen2-VL vision (projector "qwen2vl_merger"): any-size images, 2-D RoPE, a 2x2 patch merger.

    x   = patches @ [patch_embd.weight | patch_embd.weight.1]^T     (HF's Conv3d over (t=2, 14, 14))
    x   = blk.0 .. blk.{n-1}(x)          (pre-LN; q, k turned by 2-D vision RoPE at each patch's (row, col);
                                          each image attends only to itself: a block-diagonal mask)
    x   = post_ln(x)                      (HF merger.ln_q)
    y   = mm.2(GELU(mm.0(patch_merge(x, 2))))       (2x2 neighbours -> one token)

Input: patches f32 (N, 3 * 2 * p * p), HF's ``pixel_values`` layout: each image's patches in
*merge order* (every 2x2 group consecutive, ``blocks.merge_order``), the rows of several images
(or video clips) one after the other. ``patchify`` makes them from pixels (3, H, W) (a still
image, its frame repeated) or frames (T, 3, H, W) (a video, two frames per temporal patch) with
H and W multiples of 28 (``preprocess.qwen2vl``'s smart resize makes them so). The per-item
(t, h, w) patch grids fix the RoPE positions, the mask and the output split; the mixed batch
passes them through ``build_items`` (one graph for all sizes).

llama.cpp stores the 3-D kernel as two 2-D ones (``v.patch_embd.weight`` for frame 0, ``.1`` for
frame 1) and q/k/v separately (HF fuses them as ``qkv``); the names here are its names.

Qwen2.5-VL (``qwen2_5vl.py``) adds RMSNorm, SwiGLU and window attention to the same graph.

Example:
    >>> cfg = Qwen2VLConfig(image_size=56, patch_size=14, n_embd=32, n_ff=64, n_head=4, n_layer=2, n_mm_embd=48)
    >>> build(cfg, [(1, 4, 6), (1, 2, 2)]).outputs["embd"].shape   # 24 + 4 patches -> 6 + 1 tokens
    (7, 48)
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import Keys

from .. import blocks, ops
from ..graph import Graph, Tensor
from ..ops.rope import grid_positions
from ..preprocess.image import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from .common import Block, VitHparams, file_types, weight_shapes_of
from .gguf_keys import T
from .hf import convert_state, hf_dict, sub
from .qwen2vl_convert import (PREFIXES, config_to_gguf, gguf_kw, hf_rules, hf_vision_fields, processor_settings,
                              split_qwen, vision_settings)
from . import settings
from .registry import Arch, ImagePreprocess, register

Grid = tuple[int, int, int]  # (t, h, w) in patches: t temporal patches of h x w


@dataclass(frozen=True)
class MergerTower(VitHparams):
    """What the Qwen towers' configs share (Qwen2-VL, 2.5-VL, 3-VL): two-frame patches, 2-D RoPE
    heads, a merger of merge x merge patches to width n_mm_embd (the decoder's)."""

    n_mm_embd: int = 3584
    merge: int = 2
    temporal_patch: int = 2
    rope_theta: float = 10000.0

    def check_tower(self, what: str) -> None:
        if self.temporal_patch != 2:
            raise ValueError(f"[{what}] temporal_patch must be 2 (llama.cpp's two patch kernels), "
                             f"got {self.temporal_patch}")
        if self.merge < 1 or (self.n_embd // max(self.n_head, 1)) % 4:
            raise ValueError(f"[{what}] merge {self.merge} must be >= 1 and head_dim "
                             f"{self.n_embd // max(self.n_head, 1)} a multiple of 4 (2-D RoPE)")

    @property
    def n_out(self) -> int:
        return self.n_mm_embd

    @property
    def n_patch_in(self) -> int:
        return 3 * self.temporal_patch * self.patch_size ** 2


@dataclass(frozen=True)
class Qwen2VLConfig(MergerTower):
    """Tower hyperparameters (``VitHparams``), the merger's width and the Qwen-specific geometry.

    window_size / fullatt are Qwen2.5-VL's: windows of window_size pixels in every layer not
    listed in fullatt (0: full attention everywhere, as Qwen2-VL).
    """

    image_size: int = 560  # llama.cpp's default for these files; the tower takes any multiple of 28
    patch_size: int = 14
    act: str = "gelu_quick"
    window_size: int = 0
    fullatt: tuple[int, ...] = ()

    norm = "layer"  # class-level: the layer kinds of the family, not fields a file stores
    gated = False
    projector = "qwen2vl_merger"

    def __post_init__(self):
        self.check_tower("qwen2vl")

    @property
    def vit(self) -> blocks.VitParams:
        return blocks.VitParams(self.n_embd, self.n_head, self.n_ff, self.eps, self.act, norm=self.norm,
                                attn=self.attn, wtype=self.wtype, ffn="gated" if self.gated else "plain")


# -- the layout of a packed batch (NumPy, before the graph) ---------------------------------------------
def _frames(pixels: Any, cfg: Qwen2VLConfig) -> np.ndarray:
    """Pixels (3, H, W) or frames (T, 3, H, W) as f32 frames, checked against the tower's patch and merge."""
    a = np.asarray(getattr(pixels, "pixel_values", pixels), dtype=np.float32)
    a = a[None] if a.ndim == 3 else a
    pm = cfg.patch_size * cfg.merge
    if a.ndim != 4 or a.shape[1] != 3 or a.shape[2] % pm or a.shape[3] % pm or a.shape[0] < 1:
        raise ValueError(f"[qwen2vl] an image must be pixels f32 (3, H, W) or frames (T, 3, H, W) with H and W "
                         f"multiples of {pm} (see preprocess.qwen2vl), got {getattr(a, 'shape', '?')}")
    return a


def grid_of(pixels: Any, cfg: Qwen2VLConfig) -> Grid:
    """The (t, h, w) patch grid ``patchify`` gives, without making the patches."""
    a, p = _frames(pixels, cfg), cfg.patch_size
    return -(-a.shape[0] // cfg.temporal_patch), a.shape[2] // p, a.shape[3] // p


def patchify(pixels: Any, cfg: Qwen2VLConfig) -> tuple[np.ndarray, Grid]:
    """Pixels f32 (3, H, W) or frames (T, 3, H, W) -> (patches (t*h*w, 3*2*p*p), (t, h, w)).

    HF's layout (Qwen2VLImageProcessor.patchify / Qwen2VLVideoProcessor.patchify): patches in
    merge order, each flattened as (channel, frame, row, col). A still image repeats its frame; a
    video whose frame count is odd repeats its last frame, as HF pads it.
    """
    a = _frames(pixels, cfg)
    p, m, tp = cfg.patch_size, cfg.merge, cfg.temporal_patch
    if a.shape[0] % tp:
        a = np.concatenate([a, np.repeat(a[-1:], tp - a.shape[0] % tp, axis=0)])
    t, h, w = a.shape[0] // tp, a.shape[2] // p, a.shape[3] // p
    x = a.reshape(t, tp, 3, h // m, m, p, w // m, m, p).transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return np.ascontiguousarray(x.reshape(t * h * w, 3 * tp * p * p)), (t, h, w)


def rope_positions(grids: Sequence[Grid], merge: int) -> np.ndarray:
    """i32 (4, N): each patch's (row, col, row, col) in merge order, frames repeating theirs (HF's
    get_vision_position_ids; rows 2, 3 as llama.cpp fills them)."""
    return np.concatenate([np.tile(grid_positions(h, w, merge), (1, t)) for t, h, w in grids], axis=1)


def frame_lengths(grids: Sequence[Grid]) -> list[int]:
    """Patches per attention segment: every frame of every item on its own (HF's cu_seqlens)."""
    return [h * w for t, h, w in grids for _ in range(t)]


def window_index(grids: Sequence[Grid], cfg: Qwen2VLConfig) -> tuple[np.ndarray, list[int]]:
    """Qwen2.5-VL's window order (HF get_vision_window_index): the merge-unit permutation that makes
    each window of window_size pixels consecutive (i32 (N / m^2,)), and the windows' lengths in patches."""
    m, unit = cfg.merge, cfg.merge ** 2
    side = cfg.window_size // cfg.merge // cfg.patch_size
    if side < 1:
        raise ValueError(f"[qwen2.5vl] window_size {cfg.window_size} is smaller than one merged patch "
                         f"({cfg.merge * cfg.patch_size} pixels)")
    index, lengths, base = [], [], 0
    for t, h, w in grids:
        gh, gw = h // m, w // m
        ids = np.arange(t * gh * gw).reshape(t, gh, gw)
        nh, nw = -(-gh // side), -(-gw // side)
        for f in range(t):
            for i in range(nh):
                for j in range(nw):
                    win = ids[f, i * side:(i + 1) * side, j * side:(j + 1) * side].ravel()
                    index.append(win + base)
                    lengths.append(win.size * unit)
        base += t * gh * gw
    return np.concatenate(index).astype(np.int32), lengths


def n_tokens(grid: Grid, merge: int) -> int:
    t, h, w = grid
    return t * h * w // (merge * merge)


# -- the graph --------------------------------------------------------------------------------------------
def _patch_kernel(g: Graph, c: Qwen2VLConfig) -> Tensor:
    """The Conv3d kernel (d, 3, 2, p, p) as the (d, 3 * 2 * p * p) matrix HF's flattened patches meet,
    from llama.cpp's two (d, 3, p, p) kernels (one per frame)."""
    from ..dtypes import storage_type
    d, pp = c.n_embd, c.patch_size ** 2
    ks = []
    for i, name in enumerate(("patch_embd.weight", "patch_embd.weight.1")):
        shape = (d, 3, c.patch_size, c.patch_size)
        k = g.weight(name, shape, storage_type(g.qualify(name), shape, c.wtype))
        ks.append(ops.reshape(k, (d, 3, 1, pp), name=f"patch_embd.k{i}"))
    return ops.reshape(ops.concat(ks, axis=2, name="patch_embd.k"), (d, 3 * 2 * pp), name="patch_embd.mat")


def _rope_hook(pos: Tensor, theta: float):
    # HF's axial vision RoPE: rotate_half pairs (j, j + d/2), h on the first d/4 pairs, w on the next,
    # each ladder theta^(-4k/d): ggml's GGML_ROPE_TYPE_VISION with sections (d/4, d/4)
    def hook(q, k, il):
        return (ops.rope(q, pos, mode="vision", freq_base=theta, name="attn_q.rope"),
                ops.rope(k, pos, mode="vision", freq_base=theta, name="attn_k.rope"))
    return hook


def encode(patches: Tensor, c: Qwen2VLConfig, grids: Sequence[Grid]) -> Tensor:
    """Packed patches (N, 3*2*p*p) of the items ``grids`` -> (sum of tokens, n_mm_embd), items in order."""
    g = patches.graph
    grids = [tuple(int(v) for v in gr) for gr in grids]
    n, d, unit = patches.shape[0], c.n_embd, c.merge ** 2
    if (patches.ndim != 2 or patches.shape[1] != c.n_patch_in or not grids
            or sum(t * h * w for t, h, w in grids) != n
            or any(t < 1 or h < 1 or w < 1 or h % c.merge or w % c.merge for t, h, w in grids)):
        raise ValueError(f"[qwen2vl] patches {patches.shape} do not fit grids {grids}: need (sum t*h*w, "
                         f"{c.n_patch_in}) with h, w multiples of {c.merge}")
    lengths = frame_lengths(grids)
    pos = rope_positions(grids, c.merge)
    with g.scope("v"):
        x = ops.mul_mat(patches, _patch_kernel(g, c), name="inp_patches")
        full = blocks.seq_mask(g, lengths, name="attn_mask") if len(lengths) > 1 else None
        masks: list = [full] * c.n_layer
        if c.window_size:
            idx, wlen = window_index(grids, c)
            pos = pos.reshape(4, n // unit, unit)[:, idx].reshape(4, n)
            x = ops.reshape(x, (n // unit, unit * d), name="inp_units")
            x = ops.get_rows(x, g.const("window_idx", idx, dtype="i32"), name="inp_windows")
            x = ops.reshape(x, (n, d), name="inp_windowed")
            wmask = blocks.seq_mask(g, wlen, name="window_mask") if len(wlen) > 1 else None
            masks = [full if il in c.fullatt else wmask for il in range(c.n_layer)]
        hook = _rope_hook(g.const("inp_pos", pos, dtype="i32"), c.rope_theta)
        x = blocks.vit(x, c.vit, c.n_layer, masks, qk_hook=hook)[-1]
        x = blocks.norm(x, "post_ln", eps=c.eps, kind=c.norm, bias=c.norm == "layer")
    with g.scope("mm"):
        x = blocks.patch_merge(x, c.merge)
        x = blocks.linear(x, "0", unit * d, wtype=c.wtype)
        x = blocks.activation(x, "gelu_erf", name="act")  # HF's nn.GELU(): the erf form
        x = blocks.linear(x, "2", c.n_mm_embd, wtype=c.wtype)
        if c.window_size:  # back to raster (merge) order
            inv = np.argsort(idx).astype(np.int32)
            x = ops.get_rows(x, g.const("window_inv", inv, dtype="i32"), name="out")
    return x


class Qwen2VLVision(Block):
    """Packed patches f32 (N, 3*2*p*p) -> (N / merge^2, n_mm_embd), for the items ``grids``.

    Called on one tensor it takes ``grids`` from the constructor (default: one square image of about
    image_size, a whole number of merge units a side); the mixed batch calls ``build_items`` with pixels of any sizes.
    """

    kind = "image"
    has_positions = True

    def __init__(self, cfg: Qwen2VLConfig, grids: Sequence[Grid] | None = None):
        super().__init__(cfg)
        # the default: one square image about image_size (560 when the file or HF says none), its side
        # in patches rounded down to a multiple of the merge (560 / 14 = 40 patches fit no merge of 3)
        side = max(cfg.merge, cfg.image_size // cfg.patch_size // cfg.merge * cfg.merge)
        self.grids = [tuple(gr) for gr in grids] if grids else [(1, side, side)]

    example = property(lambda self: ((sum(t * h * w for t, h, w in self.grids), self.cfg.n_patch_in), "f32"))

    def _build(self, patches: Tensor) -> Tensor:
        return self._encode(patches, self.grids)

    def _encode(self, patches: Tensor, grids: Sequence[Grid]) -> Tensor:
        """The tower over packed patches of ``grids``: what a family built on this one replaces."""
        return encode(patches, self.cfg, grids)

    def items(self, datas: Sequence[Any]) -> tuple[np.ndarray, list[Grid]]:
        """Pixels / frames of each item -> (packed patches, grids)."""
        pieces = [patchify(getattr(d, "pixel_values", d), self.cfg) for d in datas]
        return np.concatenate([p for p, _ in pieces]), [gr for _, gr in pieces]

    def build_items(self, g: Graph, prefix: str, datas: Sequence[Any], batch_kinds=()):
        """The mixed batch's hook: every item in one packed sequence (see ``embed``)."""
        x, grids = self.items(datas)
        name = f"{prefix}.patches"
        with file_types(g, self.cfg.wtypes):
            out = self._encode(g.input(name, x.shape), grids)
        outs, r0 = [], 0
        for i, gr in enumerate(grids):
            r1 = r0 + n_tokens(gr, self.cfg.merge)
            outs.append(out if len(grids) == 1 else ops.view(out, 0, r0, r1, name=f"{prefix}.{i}"))
            r0 = r1
        return {name: x}, outs, tuple(grids)

    def positions(self, data: Any, start: int) -> tuple[np.ndarray, int]:
        """M-RoPE ids (3, n_tokens) of one item placed at ``start`` and the next text position,
        as HF's get_rope_index (t, h, w of each merged token, offset by start; the text goes on
        at start + max(h, w) / merge). A video's temporal ids step by 1 per temporal patch
        (Qwen2-VL's; Qwen2.5-VL scales them by tokens_per_second * seconds per patch, which the
        frames alone do not say: the same for a 2-frame clip, whose one patch is at t = start)."""
        t, h, w = grid_of(data, self.cfg)
        m = self.cfg.merge
        tt, hh, ww = np.meshgrid(np.arange(t), np.arange(h // m), np.arange(w // m), indexing="ij")
        return np.stack([tt, hh, ww]).reshape(3, -1) + start, start + max(h, w) // m


def build(cfg: Qwen2VLConfig, grids: Sequence[Grid] | None = None, block_type: type | None = None) -> Graph:
    """A graph with input ``pixels`` (packed patches of ``grids``) and output ``embd``; ``block_type``:
    a family built on this tower (default ``Qwen2VLVision``)."""
    block = (block_type or Qwen2VLVision)(cfg, grids)
    g = Graph(cfg.projector)
    g.output("embd", block(g.input("pixels", *block.example)))
    return g


def weight_shapes(cfg: Qwen2VLConfig) -> dict[str, tuple[int, ...]]:
    return weight_shapes_of(Qwen2VLVision(cfg))


# -- configs and files ------------------------------------------------------------------------------------
def config_from_hf(hf: Any) -> Qwen2VLConfig:
    """From an HF Qwen2VLConfig (its vision_config: embed_dim, mlp_ratio, hidden_size = the merger's width)."""
    d = hf_dict(hf, "qwen2vl")
    v = sub(d, "vision_config") or d
    n = v.get("embed_dim", 1280)
    return Qwen2VLConfig(**hf_vision_fields(v), n_embd=n, n_ff=int(n * v.get("mlp_ratio", 4)),
                         act=blocks.act_of(v.get("hidden_act", "quick_gelu")), n_mm_embd=v.get("hidden_size", 3584))


def config_from_gguf(src: Any) -> Qwen2VLConfig:
    """From an mmproj GGUF with projector "qwen2vl_merger" (llama.cpp's layout)."""
    return Qwen2VLConfig(**gguf_kw(src, ("qwen2vl_merger",), "Qwen2-VL")[1])


def hf_to_gguf(state_dict, config) -> dict[str, np.ndarray]:
    """HF Qwen2VLForConditionalGeneration tensors (``visual.*``) -> gguf names (NumPy f32)."""
    cfg = config if isinstance(config, Qwen2VLConfig) else config_from_hf(config)
    rules = hf_rules([("mlp.fc1", T.V_ENC_FFN_UP), ("mlp.fc2", T.V_ENC_FFN_DOWN)])
    return convert_state(state_dict, PREFIXES, rules, weight_shapes(cfg), "qwen2vl", fix=split_qwen)


class SmartResize(ImagePreprocess):
    """HF's Qwen2VLImageProcessor: any size, resized to multiples of patch * merge (``preprocess.qwen2vl``)."""

    takes_size = False  # min / max pixels bound the size, not the tower's image_size

    def config(self, image_size: int | None = None, mean=None, std=None, **kw):
        from ..preprocess.qwen2vl import Qwen2VLImageConfig
        return Qwen2VLImageConfig(mean=tuple(mean or self.mean), std=tuple(std or self.std), **kw)


def frames(source, mmproj, text_info=None, max_seconds=None) -> np.ndarray:
    """An image smart-resized as HF's processor does, with the file's carried settings (min / max
    pixels, resample, rescale, normalization: ``processor_settings``) and the tower's patch / merge:
    pixels (3, H, W), H and W multiples of patch * merge."""
    from ..preprocess.qwen2vl import Qwen2VLImageConfig, qwen2vl_image
    arch = mmproj.archs["image"]
    c = mmproj.vision.cfg
    got = settings.nested(settings.read(arch, mmproj.config.file, c))
    return qwen2vl_image(source, Qwen2VLImageConfig.from_hf({**got, "patch_size": c.patch_size,
                                                               "merge_size": c.merge}))


SETTINGS = (
    *vision_settings(),
    settings.carried("config", "vision_config.embed_dim", Keys.ClipVision.EMBEDDING_LENGTH),
    settings.carried("config", "vision_config.mlp_ratio", Keys.ClipVision.FEED_FORWARD_LENGTH),
    settings.carried("config", "vision_config.hidden_size", Keys.ClipVision.PROJECTION_DIM),  # the merger's width
    *processor_settings(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
)


_CLIP_NORM = dict(mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD)

ARCH = register(Arch(
    "qwen2vl", "image", Qwen2VLVision, Qwen2VLConfig, config_from_hf, config_from_gguf, config_to_gguf, hf_to_gguf,
    projectors=("qwen2vl_merger",), hf_model_types=("qwen2_vl",), image=SmartResize("qwen2vl", **_CLIP_NORM),
    prepare=frames, settings=SETTINGS,
    examples=(Qwen2VLConfig(image_size=56, patch_size=14, n_embd=32, n_ff=64, n_head=4, n_layer=2, n_mm_embd=48),)))
