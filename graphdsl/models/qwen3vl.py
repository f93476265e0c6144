"""Qwen3-VL vision (projector "qwen3vl_merger"): any-size images, learned positions resampled to each
grid, 2-D RoPE, a 2x2 patch merger, and deepstack mergers whose rows feed the decoder's first layers.

    x   = patches @ [patch_embd.weight | patch_embd.weight.1]^T + patch_embd.bias   (HF's Conv3d)
    x  += bilinear(position_embd, (h, w))    (HF fast_pos_embed_interpolate: the square table
                                              resampled to each image's grid, align_corners)
    x   = blk.0 .. blk.{n-1}(x)              (pre-LN, fused attn_qkv, q/k turned by 2-D vision RoPE,
                                              each image attends only to itself)
    ds_k = deepstack.{l_k}: fc2(GELU(fc1(norm(patch_merge(x after blk.l_k)))))   (LayerNorm over 4d)
    y   = mm.2(GELU(mm.0(patch_merge(post_ln(x)))))                               (LayerNorm over d)
    out = [y | ds_0 | ds_1 | ...]            (n_tokens, n_mm_embd * (1 + len(deepstack)))

The output is mtmd's layout (clip.cpp's qwen3vl graph concatenates the same way): the main merger's
rows, then each deepstack merger's, in layer order; the decoder adds ds_k to the hidden state after
its layer k (HF ``_deepstack_process``). ``Qwen3VLVision.n_per_layer`` says how many there are.

Input and packing as Qwen2-VL (``qwen2vl.patchify``: merge-order patches of HF's ``pixel_values``,
sides multiples of patch * merge = 32; several images in one sequence with a block-diagonal mask).
The decoder's M-RoPE ids are Qwen2-VL's for an image (HF's Qwen3VLModel.get_rope_index); the
decoder interleaves the t / h / w sections over its frequencies (``mrope_interleaved``), which is
how it reads the ids, not what they are.

llama.cpp's names: the converter keeps HF's fused ``qkv`` as ``v.blk.N.attn_qkv``, splits the Conv3d
into two kernels, names each deepstack merger by its layer (``v.deepstack.8.fc1``) and writes
``clip.vision.is_deepstack_layers``, which decides here (clip.cpp finds the layers by their tensors,
as graphdsl does for a file without the key).
Its graph uses ggml's tanh GELU in the mergers, HF's nn.GELU() is the erf one: graphdsl follows HF.

Example:
    >>> cfg = Qwen3VLConfig(n_embd=32, n_ff=64, n_head=4, n_layer=3, n_mm_embd=24, n_pos=16, deepstack=(0, 1))
    >>> build(cfg, [(1, 4, 6), (1, 2, 2)]).outputs["embd"].shape   # 24 + 4 patches -> 6 + 1 tokens
    (7, 72)
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import Keys

from .. import blocks, ops
from ..graph import Graph, Tensor
from ..gguf_io import tn
from . import qwen2vl, settings
from .common import weight_shapes_of
from .gguf_keys import T
from .hf import convert_state, hf_dict, sub
from .qwen2vl import (PREFIXES, Grid, MergerTower, Qwen2VLVision, SmartResize, _CLIP_NORM, _patch_kernel, _rope_hook,
                      frame_lengths, frames, gguf_kw, grid_of, n_tokens, processor_settings, rope_positions, split_qwen,
                      vision_settings)
from .qwen2vl import config_to_gguf as _qwen2_keys
from .registry import Arch, register

KEY_DEEPSTACK = Keys.ClipVision.IS_DEEPSTACK_LAYERS


@dataclass(frozen=True)
class Qwen3VLConfig(MergerTower):
    """Tower hyperparameters (``VitHparams``), the merger's width, the position table and the
    deepstack layers (HF ``deepstack_visual_indexes``, ascending: the order of the output blocks).

    image_size is llama.cpp's: the table's side in pixels, sqrt(n_pos) * patch_size.
    """

    image_size: int = 768
    patch_size: int = 16
    n_embd: int = 1152
    n_ff: int = 4304
    n_head: int = 16
    n_layer: int = 27
    act: str = "gelu"
    n_pos: int = 2304
    deepstack: tuple[int, ...] = (8, 16, 24)

    projector = "qwen3vl_merger"

    def __post_init__(self):
        self.check_tower("qwen3vl")
        if self.n_pos < 1:
            raise ValueError(f"[qwen3vl] n_pos (num_position_embeddings) must be >= 1, got {self.n_pos}")
        ds = tuple(self.deepstack)
        if list(ds) != sorted(set(ds)) or any(not 0 <= i < self.n_layer for i in ds):
            raise ValueError(f"[qwen3vl] deepstack layers {ds} must be ascending, distinct and in "
                             f"0..{self.n_layer - 1}")

    @property
    def side(self) -> int:
        """The position table's side (HF num_grid_per_side)."""
        return math.isqrt(self.n_pos)

    @property
    def vit(self) -> blocks.VitParams:
        return blocks.VitParams(self.n_embd, self.n_head, self.n_ff, self.eps, self.act, attn=self.attn,
                                wtype=self.wtype, qkv="fused")


# -- the learned positions of a packed batch (NumPy, before the graph) ----------------------------------
def _axis_taps(index: np.ndarray, size: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    # HF _interpolation_axis_taps_weights, bilinear with align_corners, in its float32 steps
    src = index.astype(np.float32) * np.float32(side - 1) / np.float32(max(size - 1, 1))
    floor = np.floor(src)
    offsets = np.arange(2, dtype=np.float32)
    taps = np.clip(floor[:, None].astype(np.int64) + np.arange(2), 0, side - 1)
    weights = np.maximum(np.float32(1) - np.abs(src[:, None] - floor[:, None] - offsets), np.float32(0))
    return taps, weights.astype(np.float32)


def pos_taps(grids: Sequence[Grid], side: int, merge: int) -> tuple[np.ndarray, np.ndarray]:
    """Each patch's four rows of the (side^2, d) table and their weights (i32 (4, N), f32 (4, N)),
    patches in merge order, frames repeating theirs: HF's get_vision_interpolation_indices_and_weights
    (bilinear, align_corners) that fast_pos_embed_interpolate sums over."""
    idx, wts = [], []
    for (t, h, w), pos in zip(grids, (rope_positions([gr], merge) for gr in grids)):
        (ht, hw), (wt, ww) = _axis_taps(pos[0], h, side), _axis_taps(pos[1], w, side)
        idx.append((ht[:, :, None] * side + wt[:, None, :]).reshape(-1, 4))
        wts.append((hw[:, :, None] * ww[:, None, :]).reshape(-1, 4))
    return np.concatenate(idx).T.astype(np.int32), np.concatenate(wts).T.astype(np.float32)


# -- the graph --------------------------------------------------------------------------------------------
def _positions(g: Graph, c: Qwen3VLConfig, grids: Sequence[Grid]) -> Tensor:
    """sum_k table[idx_k] * w_k: the table resampled to every item's grid, rows in patch order."""
    table = g.weight("position_embd.weight", (c.n_pos, c.n_embd))
    idx, wts = pos_taps(grids, c.side, c.merge)
    out = None
    for k in range(4):
        rows = ops.get_rows(table, g.const(f"pos_idx.{k}", idx[k], dtype="i32"), name=f"pos_rows.{k}")
        tap = ops.mul(rows, g.const(f"pos_w.{k}", wts[k][:, None]), name=f"pos_tap.{k}")
        out = tap if out is None else ops.add(out, tap, name=f"pos_sum.{k}")
    return out


def _merger_mlp(x: Tensor, c: Qwen3VLConfig, fc: tuple[str, str]) -> Tensor:
    # HF Qwen3VLVisionPatchMerger on merged tokens (m^2 d), after its norm: fc1, GELU (nn.GELU: erf), fc2
    x = blocks.linear(x, fc[0], c.merge ** 2 * c.n_embd, wtype=c.wtype)
    x = blocks.activation(x, "gelu_erf", name="act")
    return blocks.linear(x, fc[1], c.n_mm_embd, wtype=c.wtype)


def encode(patches: Tensor, c: Qwen3VLConfig, grids: Sequence[Grid]) -> Tensor:
    """Packed patches (N, 3*2*p*p) of the items ``grids`` -> (sum of tokens, n_mm_embd * (1 + deepstack))."""
    g = patches.graph
    grids = [tuple(int(v) for v in gr) for gr in grids]
    if (patches.ndim != 2 or patches.shape[1] != c.n_patch_in or not grids
            or sum(t * h * w for t, h, w in grids) != patches.shape[0]
            or any(t < 1 or h < 1 or w < 1 or h % c.merge or w % c.merge for t, h, w in grids)):
        raise ValueError(f"[qwen3vl] patches {patches.shape} do not fit grids {grids}: need (sum t*h*w, "
                         f"{c.n_patch_in}) with h, w multiples of {c.merge}")
    lengths = frame_lengths(grids)
    with g.scope("v"):
        x = ops.mul_mat(patches, _patch_kernel(g, c), name="inp_patches")
        x = ops.add(x, g.weight("patch_embd.bias", (c.n_embd,)), name="patch_bias")
        x = ops.add(x, _positions(g, c, grids), name="inp_pos")
        mask = blocks.seq_mask(g, lengths, name="attn_mask") if len(lengths) > 1 else None
        hook = _rope_hook(g.const("inp_pos_ids", rope_positions(grids, c.merge), dtype="i32"), c.rope_theta)
        hs = blocks.vit(x, c.vit, c.n_layer, mask, qk_hook=hook)
        stack = []
        for il in c.deepstack:  # HF's deepstack_merger_list, by the layer whose output it reads
            with g.scope(f"deepstack.{il}"):
                x = blocks.norm(blocks.patch_merge(hs[il + 1], c.merge), "norm", eps=c.eps)  # over m^2 d
                stack.append(_merger_mlp(x, c, ("fc1", "fc2")))
        x = blocks.norm(hs[-1], "post_ln", eps=c.eps)  # over d, before the merge
    with g.scope("mm"):
        x = _merger_mlp(blocks.patch_merge(x, c.merge), c, ("0", "2"))
    return ops.concat([x, *stack], axis=1, name="embd_stack") if stack else x


class Qwen3VLVision(Qwen2VLVision):
    """Packed patches f32 (N, 3*2*p*p) -> (N / merge^2, n_mm_embd * (1 + n_per_layer)): the main
    merger's rows, then the deepstack mergers' (see the module doc), for the items ``grids``.

    Packing, ``items`` and the M-RoPE ``positions`` of an image are Qwen2-VL's (``Qwen2VLVision``).
    """

    n_per_layer = property(lambda self: len(self.cfg.deepstack))

    def _encode(self, patches: Tensor, grids: Sequence[Grid]) -> Tensor:
        return encode(patches, self.cfg, grids)

    def positions(self, data: Any, start: int) -> tuple[np.ndarray, int]:
        """An image's M-RoPE ids (3, n_tokens) at ``start`` and the next text position (HF's
        get_rope_index). A clip of several temporal patches is refused: Qwen3-VL places each
        after its own timestamp text, so each must be its own item."""
        t = grid_of(data, self.cfg)[0]
        if t != 1:
            raise ValueError(f"[qwen3vl] an item of {t} temporal patches: Qwen3-VL's prompt puts a timestamp "
                             "before each, so pass every two frames as their own item")
        return super().positions(data, start)


def build(cfg: Qwen3VLConfig, grids: Sequence[Grid] | None = None) -> Graph:
    """A graph with input ``pixels`` (packed patches of ``grids``) and output ``embd``."""
    return qwen2vl.build(cfg, grids, Qwen3VLVision)


def weight_shapes(cfg: Qwen3VLConfig) -> dict[str, tuple[int, ...]]:
    return weight_shapes_of(Qwen3VLVision(cfg))


# -- configs and files ------------------------------------------------------------------------------------
def config_from_hf(hf: Any) -> Qwen3VLConfig:
    """From an HF Qwen3VLConfig's vision_config (hidden_size, intermediate_size, out_hidden_size,
    num_position_embeddings, deepstack_visual_indexes)."""
    d = hf_dict(hf, "qwen3vl")
    v = sub(d, "vision_config") or d
    rope = v.get("rope_parameters") or {}
    n_pos, patch = int(v.get("num_position_embeddings", 2304)), int(v.get("patch_size", 16))
    ds = tuple(int(i) for i in v.get("deepstack_visual_indexes", (8, 16, 24)))
    if list(ds) != sorted(set(ds)):
        raise ValueError(f"[qwen3vl.config_from_hf] deepstack_visual_indexes {list(ds)}: graphdsl (and llama.cpp's "
                         "files, which name each merger by its layer) need them ascending and distinct")
    return Qwen3VLConfig(image_size=math.isqrt(n_pos) * patch, patch_size=patch, n_embd=v.get("hidden_size", 1152),
                         n_ff=v.get("intermediate_size", 4304), n_head=v.get("num_heads", 16),
                         n_layer=v.get("depth", 27), eps=1e-6,
                         act=blocks.act_of(v.get("hidden_act", "gelu_pytorch_tanh")),
                         n_mm_embd=v.get("out_hidden_size", 3584), merge=v.get("spatial_merge_size", 2),
                         temporal_patch=v.get("temporal_patch_size", 2),
                         rope_theta=float(rope.get("rope_theta", 10000.0)), n_pos=n_pos, deepstack=ds)


def config_from_gguf(src: Any) -> Qwen3VLConfig:
    """From an mmproj GGUF with projector "qwen3vl_merger": the table's rows from its shape, the
    deepstack layers from is_deepstack_layers, else from their tensors (as clip.cpp finds them)."""
    m, kw = gguf_kw(src, ("qwen3vl_merger",), "Qwen3-VL")
    table = m.shapes.get(tn(T.V_ENC_EMBD_POS))
    if table is None:
        raise m.error("no v.position_embd.weight (the learned position table)")
    found = [il for il in range(kw["n_layer"]) if f"v.deepstack.{il}.fc1.weight" in m.shapes]
    ds, f = found, m.file
    if f is not None and KEY_DEEPSTACK in f.metadata:  # the key decides, so the loader names a missing merger
        flags = np.asarray(f.metadata[KEY_DEEPSTACK]).ravel()
        if flags.size != kw["n_layer"]:
            raise m.error(f"{KEY_DEEPSTACK} has {flags.size} entries for {kw['n_layer']} layers")
        ds = [i for i, b in enumerate(flags) if b]
        stray = sorted(set(found) - set(ds))
        if stray:
            raise m.error(f"deepstack tensors v.deepstack.{stray[0]}.* for layers {stray} that {KEY_DEEPSTACK} "
                          f"does not mark (it marks {ds})")
    kw["wtype"] = m.dtypes.get("v.blk.0.attn_qkv.weight", "f32")
    return Qwen3VLConfig(**kw, n_pos=int(table[0]), deepstack=tuple(ds))


def config_to_gguf(cfg: Qwen3VLConfig, image_mean=None, image_std=None) -> list[tuple[str, object]]:
    flags = [il in cfg.deepstack for il in range(cfg.n_layer)]
    return _qwen2_keys(cfg, image_mean, image_std) + [(KEY_DEEPSTACK, flags)]


def _split_kernel(out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    # the Conv3d kernel as llama.cpp's two per-frame kernels; q/k/v stay fused (attn_qkv), as its files have them
    conv = {k: out[k] for k in ("v.patch_embd.conv3d",) if k in out}
    return {**{k: v for k, v in out.items() if k not in conv}, **split_qwen(conv)}


def hf_to_gguf(state_dict, config) -> dict[str, np.ndarray]:
    """HF Qwen3VLForConditionalGeneration / Qwen3VLMoeForConditionalGeneration tensors (``model.visual.*``)
    -> gguf names (NumPy f32)."""
    cfg = config if isinstance(config, Qwen3VLConfig) else config_from_hf(config)
    per_layer = [("norm1", T.V_ENC_INPUT_NORM), ("norm2", T.V_ENC_POST_ATTN_NORM), ("attn.qkv", T.V_ENC_ATTN_QKV),
                 ("attn.proj", T.V_ENC_ATTN_O), ("mlp.linear_fc1", T.V_ENC_FFN_UP),
                 ("mlp.linear_fc2", T.V_ENC_FFN_DOWN)]
    merger = [("norm", T.V_POST_NORM, None), ("linear_fc1", T.V_MMPROJ, 0), ("linear_fc2", T.V_MMPROJ, 2)]
    deep = [("norm", T.V_DS_NORM), ("linear_fc1", T.V_DS_FC1), ("linear_fc2", T.V_DS_FC2)]
    rules = [("pos_embed.weight", tn(T.V_ENC_EMBD_POS)), ("patch_embed.proj.weight", "v.patch_embd.conv3d"),
             ("patch_embed.proj.bias", tn(T.V_ENC_EMBD_PATCH, "bias"))]
    for s in ("weight", "bias"):
        rules += [(f"blocks.{{bid}}.{hf}.{s}", tn(t, s)) for hf, t in per_layer]
        rules += [(f"merger.{hf}.{s}", tn(t, s, bid)) for hf, t, bid in merger]
        # HF numbers the deepstack mergers 0, 1, ...; llama.cpp's files by the layer each reads
        rules += [(f"deepstack_merger_list.{i}.{hf}.{s}", tn(t, s, il)) for i, il in enumerate(cfg.deepstack)
                  for hf, t in deep]
    return convert_state(state_dict, PREFIXES, rules, weight_shapes(cfg), "qwen3vl", fix=_split_kernel)


class SmartResize16(SmartResize):
    """Qwen2VLImageProcessor at Qwen3-VL's patch of 16 (its checkpoints' preprocessor_config.json)."""

    def config(self, image_size: int | None = None, mean=None, std=None, **kw):
        return super().config(image_size, mean, std, **{"patch_size": 16, **kw})


def _settings() -> tuple:
    V = Keys.ClipVision
    shared = [s for s in (*vision_settings(), *processor_settings(*_CLIP_NORM.values()))
              if s.path not in ("vision_config.tokens_per_second", "patch_size")]
    return (
        *shared,
        settings.carried("config", "vision_config.hidden_size", V.EMBEDDING_LENGTH),
        settings.carried("config", "vision_config.intermediate_size", V.FEED_FORWARD_LENGTH),
        settings.carried("config", "vision_config.out_hidden_size", V.PROJECTION_DIM),
        settings.carried("config", "vision_config.num_position_embeddings", "tensor v.position_embd.weight (its rows)"),
        settings.carried("config", "vision_config.deepstack_visual_indexes", KEY_DEEPSTACK),
        settings.Setting("processor", "patch_size", refuse=settings.other_than("vision_config.patch_size", 16),
                         reason="the patches are the tower's vision_config.patch_size"),
    )


SETTINGS = _settings()

ARCH = register(Arch(
    "qwen3vl", "image", Qwen3VLVision, Qwen3VLConfig, config_from_hf, config_from_gguf, config_to_gguf, hf_to_gguf,
    projectors=("qwen3vl_merger",), hf_model_types=("qwen3_vl", "qwen3_vl_moe"),
    image=SmartResize16("qwen2vl", **_CLIP_NORM), prepare=frames, settings=SETTINGS,
    examples=(Qwen3VLConfig(image_size=64, n_embd=32, n_ff=64, n_head=4, n_layer=3, n_mm_embd=24, n_pos=16,
                            deepstack=(0, 2)),)))
