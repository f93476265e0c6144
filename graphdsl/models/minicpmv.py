"""MiniCPM-V 2.5 / 2.6: a SigLIP tower run at each slice's own size + the resampler (projector "resampler").

    x = patch_embd(slice) + patch_embd.bias + position_embd[ids]       (slice (3, h, w), any multiple of p)
        ids[i, j] = (70 i // gh) * 70 + (70 j // gw)                    (2-D bucketing into the 70 x 70 table)
    x = blk.0 .. blk.{n-1}(x)  [+ LayerNorm(v.post_ln)]                 (pre-LN layers, tanh-GELU)
    v = LayerNorm(ln_kv)(kv(x));  k = v + sincos2d(gh, gw)              (D = n_mm_embd)
    q = LayerNorm(ln_q)(query)                                          (n_query learned queries)
    y = attn(q, k, v)  (heads of 128, attn.q/k/v/out with biases);  y = LayerNorm(ln_post)(y) proj^T

    sincos2d: per patch (row i, col j): [sin(j w), cos(j w), sin(i w), cos(i w)], w_k = 10000^(-k / (D/4))

Each slice (and the overview) becomes n_query embeddings. ``preprocess.minicpmv`` cuts the image
and gives the marker layout; ``frames``-free: ``image_items`` turns one image into the batch items
(marker ids as text chunks, each slice an image item) that ``embed_files`` splices in, the
chunks llama.cpp's mtmd makes too. In a mixed batch the slices go through ``build_items``:
slices of one size share one batched tower.

The 70 of the bucketing is the position table's side (sqrt of its rows: SigLIP-so400m at
980 / 14), as in MiniCPM-V's modeling_navit_siglip; graphdsl computes the buckets in integers
(exact), as llama.cpp does; HF-style float bucketing can land one bucket off.

Example:
    >>> cfg = MiniCPMVConfig(image_size=56, patch_size=14, n_embd=32, n_ff=64, n_head=4, n_layer=1,
    ...                      n_mm_embd=128, n_query=8, n_pos_side=8)
    >>> build(cfg, (28, 42)).outputs["embd"].shape     # any slice size -> n_query rows
    (8, 128)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import Keys

from .. import blocks, ops
from ..graph import Graph, Tensor
from .common import Block, VitHparams, graph_of, weight_shapes_of
from .gguf_keys import T, gguf_vision, tn, vit_keys
from .hf import remote_code_only
from .registry import Arch, ImagePreprocess, Prepared, register

KEY_VERSION, KEY_QUERY_NUM = "clip.minicpmv_version", "clip.minicpmv_query_num"
D_HEAD = 128  # the resampler's head width (MiniCPM-V: num_heads = embed_dim // 128)


@dataclass(frozen=True)
class MiniCPMVConfig(VitHparams):
    """SigLIP tower hyperparameters (``VitHparams``; image_size is the slice size) and the resampler's."""

    version: int = 3  # clip.minicpmv_version: 2 = MiniCPM-Llama3-V 2.5, 3 = 2.6 (marker layouts differ)
    n_query: int = 64
    n_mm_embd: int = 3584
    n_pos_side: int = 70  # the learned position table is n_pos_side^2 rows
    post_ln: bool = False
    max_slices: int = 9
    act: str = "gelu"

    @property
    def n_out(self) -> int:
        return self.n_mm_embd


def bucket_ids(gh: int, gw: int, side: int) -> np.ndarray:
    """Position-table rows of a gh x gw patch grid (exact integer buckets, row-major)."""
    bh, bw = (side * np.arange(gh)) // gh, (side * np.arange(gw)) // gw
    return (bh[:, None] * side + bw[None, :]).reshape(-1).astype(np.int32)


def sincos_2d(gh: int, gw: int, d: int) -> np.ndarray:
    """(gh*gw, d) 2-D sin-cos embedding of the resampler's keys (MiniCPM-V's get_2d_sincos_pos_embed)."""
    omega = 1.0 / 10000.0 ** (np.arange(d // 4, dtype=np.float64) / (d // 4))
    i, j = np.divmod(np.arange(gh * gw), gw)
    tw, th = j[:, None] * omega, i[:, None] * omega
    return np.concatenate([np.sin(tw), np.cos(tw), np.sin(th), np.cos(th)], axis=1).astype(np.float32)


class MiniCPMVVision(Block):
    """Slices f32 ([B,] 3, h, w) -> ([B,] n_query, n_mm_embd); the bucketed position ids and the
    sin-cos table of the slice's grid are constants computed from its shape (``slice_inputs``)."""

    kind = "image"
    example = property(lambda self: ((3, self.cfg.image_size, self.cfg.image_size), "f32"))

    def slice_inputs(self, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        c = self.cfg
        if h % c.patch_size or w % c.patch_size or h < c.patch_size or w < c.patch_size:
            raise ValueError(f"[minicpmv] a slice of {h}x{w} is not a multiple of the {c.patch_size}-pixel patch "
                             "(see preprocess.minicpmv_slices)")
        gh, gw = h // c.patch_size, w // c.patch_size
        return bucket_ids(gh, gw, c.n_pos_side), sincos_2d(gh, gw, c.n_mm_embd)

    def _build(self, pixels: Tensor) -> Tensor:
        """([B,] 3, h, w) slices of one size -> ([B,] n_query, D)."""
        x = self.tower(pixels, self._const_ids(pixels, "v.pos_ids"))
        pos = self._const_sincos(pixels, "resampler.sincos")
        if x.ndim == 3:
            c = self.cfg
            return ops.concat([ops.reshape(self.resampler(ops.reshape(ops.view(x, 0, b, b + 1, name=f"item{b}"),
                                                                       x.shape[1:], name=f"feat{b}"), pos),
                                           (1, c.n_query, c.n_mm_embd), name=f"out{b}") for b in range(x.shape[0])],
                              axis=0, name="resampler.batch")
        return self.resampler(x, pos)

    # the bucketed position ids and the sin-cos table follow the slice's shape: constants, not inputs
    def _const_ids(self, pixels: Tensor, name: str) -> Tensor:
        p, side = self.cfg.patch_size, self.cfg.n_pos_side
        return pixels.graph.const(name, lambda s: bucket_ids(s[-2] // p, s[-1] // p, side), shape_of=[pixels])

    def _const_sincos(self, pixels: Tensor, name: str) -> Tensor:
        p, d = self.cfg.patch_size, self.cfg.n_mm_embd
        return pixels.graph.const(name, lambda s: sincos_2d(s[-2] // p, s[-1] // p, d), shape_of=[pixels])

    def tower(self, pixels: Tensor, ids: Tensor) -> Tensor:
        """([B,] 3, h, w) -> ([B,] gh*gw, n_embd)."""
        c, g, p = self.cfg, pixels.graph, self.cfg.patch_size
        *b, _, h, w = pixels.shape
        n = (h // p) * (w // p)
        with g.scope("v"):
            x = ops.conv_2d(g.weight("patch_embd.weight", (c.n_embd, 3, p, p), c.wtype), pixels, stride=p,
                            name="patch_embd.conv")
            x = ops.permute(ops.reshape(x, (*b, c.n_embd, n), name="patch_embd.flat"),
                            (*range(len(b)), len(b) + 1, len(b)), name="patch_embd.t")
            x = ops.add(x, g.weight("patch_embd.bias", (c.n_embd,)), name="patch_embd")
            table = g.weight("position_embd.weight", (c.n_pos_side ** 2, c.n_embd))
            x = ops.add(x, ops.get_rows(table, ids, name="pos_rows"), name="inp_pos")
            x = blocks.vit(x, c.vit, n_layer=c.n_layer)[-1]
            return blocks.norm(x, "post_ln", eps=c.eps) if c.post_ln else x

    def resampler(self, x: Tensor, pos: Tensor) -> Tensor:
        """(n, n_embd) patch features + (n, D) sin-cos -> (n_query, D)."""
        c, g, d = self.cfg, x.graph, self.cfg.n_mm_embd
        nh, n = d // D_HEAD, x.shape[0]
        with g.scope("resampler"):
            v = blocks.linear(x, "kv", d, bias=False, wtype=c.wtype)
            v = blocks.norm(v, "ln_kv", eps=c.eps)
            q = blocks.norm(g.weight("query", (c.n_query, d)), "ln_q", eps=c.eps)
            k = ops.add(v, pos, name="k_pos")
            with g.scope("attn"):
                heads = []
                for t, nm, m in ((q, "q", c.n_query), (k, "k", n), (v, "v", n)):
                    t = blocks.linear(t, nm, d, wtype=c.wtype)
                    heads.append(ops.permute(ops.reshape(t, (m, nh, D_HEAD), name=f"{nm}.heads"), (1, 0, 2),
                                             name=f"{nm}.perm"))
                a = ops.flash_attn_ext(*heads, scale=1.0 / math.sqrt(D_HEAD), name="attn")  # (nq, h, dh)
                a = blocks.linear(ops.reshape(a, (c.n_query, d), name="merged"), "out", d, wtype=c.wtype)
            a = blocks.norm(a, "ln_post", eps=c.eps)
            return ops.mul_mat(a, g.weight("proj.weight", (d, d), c.wtype), name="proj")

    def build_items(self, g: Graph, prefix: str, datas, batch_kinds=()) -> tuple[dict, list, tuple]:
        """Slices of any sizes (each (3, h, w)); slices of one size share one batched tower."""
        sizes: dict[tuple[int, int], list[int]] = {}
        arrs = []
        for j, d in enumerate(datas):
            a = np.asarray(d, np.float32)
            if a.ndim != 3 or a.shape[0] != 3:
                raise ValueError(f"[minicpmv] item {j}: a slice must be pixels f32 (3, h, w), got {a.shape}")
            self.slice_inputs(*a.shape[1:])
            arrs.append(a)
            sizes.setdefault(a.shape[1:], []).append(j)
        feeds, outs = {}, [None] * len(arrs)
        for k, (hw, members) in enumerate(sizes.items()):
            name = f"{prefix}.{k}"
            feeds[name] = np.stack([arrs[j] for j in members])
            px = g.input(name, feeds[name].shape)
            x = self.tower(px, self._const_ids(px, f"{name}.pos"))
            pos = self._const_sincos(px, f"{name}.sincos")
            for b, j in enumerate(members):
                f = ops.reshape(ops.view(x, 0, b, b + 1, name=f"{name}.item{b}"), x.shape[1:], name=f"{name}.feat{b}")
                outs[j] = self.resampler(f, pos)
        return feeds, outs, tuple(a.shape[1:] for a in arrs)


def build(cfg: MiniCPMVConfig, slice_hw: tuple[int, int] | None = None) -> Graph:
    """A graph over one slice: input ``pixels`` (3, h, w), output ``embd``."""
    h, w = slice_hw or (cfg.image_size, cfg.image_size)
    return graph_of(MiniCPMVVision(cfg), (3, h, w), "minicpmv")


def weight_shapes(cfg: MiniCPMVConfig) -> dict[str, tuple[int, ...]]:
    return weight_shapes_of(MiniCPMVVision(cfg))


config_from_hf = remote_code_only("minicpmv", "MiniCPM-V", "legacy-models/minicpmv-convert-image-encoder-to-gguf.py")


def config_from_gguf(src: Any) -> MiniCPMVConfig:
    """From an mmproj GGUF with projector "resampler" (llama.cpp's names: resampler.*, clip.minicpmv_*)."""
    m, v, kw = gguf_vision(src, ("resampler",), "MiniCPM-V")
    raw = _minicpmv_keys(m.path) if m.path else {}
    version = raw.get(KEY_VERSION) or 2  # llama.cpp's defaults: version 2, 96 queries for it, else 64
    n_query = raw.get(KEY_QUERY_NUM) or (96 if version == 2 else 64)
    if version not in (2, 3, 4, 5, 6):
        raise m.error(f"{KEY_VERSION} {version}: graphdsl knows MiniCPM-V versions 2 (2.5) to 6")
    pos = m.shapes.get(tn(T.V_ENC_EMBD_POS))
    side = int(round(math.sqrt(pos[0]))) if pos else 70
    if pos is None or side * side != pos[0]:
        raise m.error(f"v.position_embd.weight {pos} is not a square table of positions")
    if "resampler.proj.weight" not in m.shapes:
        raise m.error("projector 'resampler' without resampler.proj.weight")
    d = m.shapes["resampler.proj.weight"][0]
    if d % D_HEAD:
        raise m.error(f"the resampler width {d} is not a multiple of its {D_HEAD}-wide heads")
    return MiniCPMVConfig(**kw, version=version, n_query=n_query, n_mm_embd=d, n_pos_side=side,
                          post_ln=tn(T.V_POST_NORM) in m.shapes)


def _minicpmv_keys(path) -> dict[str, int]:
    """clip.minicpmv_version / clip.minicpmv_query_num (MmprojConfig does not keep them)."""
    from gguf import GGUFReader
    r = GGUFReader(path)
    out = {}
    for k in (KEY_VERSION, KEY_QUERY_NUM):
        f = r.fields.get(k)
        if f is not None:
            out[k] = int(f.parts[f.data[0]][0])
    return out


def config_to_gguf(cfg: MiniCPMVConfig, image_mean=(0.5,) * 3, image_std=(0.5,) * 3) -> list[tuple[str, object]]:
    if cfg.max_slices != 9:  # no key carries it: a file would be sliced up to 9 by graphdsl and mtmd alike
        raise ValueError(f"[minicpmv] max_slices {cfg.max_slices}: llama.cpp's mmproj format has no key for it "
                         "(mtmd hard-codes 9 slices: tools/mtmd/mtmd-image.cpp, max_slice_nums)")
    return [(Keys.Clip.PROJECTOR_TYPE, "resampler"), *vit_keys(cfg, image_mean, image_std),
            (KEY_VERSION, np.int32(cfg.version)), (KEY_QUERY_NUM, cfg.n_query),
            (Keys.ClipVision.PROJECTION_DIM, cfg.n_mm_embd)]


def hf_to_gguf(state_dict, config) -> dict[str, np.ndarray]:
    return config_from_hf(config)


def image_items(source, mmproj, text_info, policy: str = "minicpmv") -> tuple[list, str]:
    """One image -> the batch items in the decoder's order (marker ids as ("text", ids), each slice
    as ("image", pixels)) and a line describing the grid."""
    from ..preprocess.minicpmv import MiniCPMVImageConfig, marker_layout, minicpmv_slices
    c, v = mmproj.vision.cfg, mmproj.config.vision
    sl = minicpmv_slices(source, MiniCPMVImageConfig(
        slice_size=c.image_size, patch_size=c.patch_size, max_slices=c.max_slices, mean=tuple(v.image_mean),
        std=tuple(v.image_std), policy=policy))
    ids = marker_ids(text_info)
    items, run = [], []
    grid = sl.grid if sl.slices else None  # an image kept whole has the grid (0, 0): no slices, no slice markers
    for piece in marker_layout(c.version, grid):
        if isinstance(piece, str):
            run.append(ids[piece])
            continue
        if run:
            items.append(("text", np.asarray(run, np.int32)))
            run = []
        items.append(("image", sl.overview if piece == 0 else sl.slices[piece - 1]))
    if run:
        items.append(("text", np.asarray(run, np.int32)))
    hw = [tuple(sl.overview.shape[1:])] + [tuple(s.shape[1:]) for s in sl.slices[:1]]
    grid = f"{sl.grid[0]} x {sl.grid[1]} slices of {hw[1][1]}x{hw[1][0]}" if grid else "no slices"
    return items, f"minicpmv: overview {hw[0][1]}x{hw[0][0]}, {grid}, {c.n_query} tokens each"


def prepare(source, mmproj, text_info=None, max_seconds=None) -> Prepared:
    """``embed_files``' pre-processing (``Arch.prepare``): one image as its slices and marker tokens."""
    return Prepared(*image_items(source, mmproj, text_info))


def marker_ids(info) -> dict[str, int]:
    """The ids of MiniCPM-V's markers in a text model's vocabulary (as mtmd looks them up)."""
    toks = {t: i for i, t in enumerate(info.tokens)}
    want = {"<image>": ("<image>",), "</image>": ("</image>",), "<slice>": ("<slice>",), "</slice>": ("</slice>",),
            "\n": ("\n", "<0x0A>", "\u010a")}
    out, missing = {}, []
    for k, forms in want.items():
        hit = next((toks[f] for f in forms if f in toks), None)
        if hit is None:
            missing.append(k)
        out[k] = hit
    if missing:
        raise ValueError(f"{getattr(info, 'path', 'text model')}: its vocabulary lacks MiniCPM-V's markers "
                         f"{missing}")
    return out


ARCH = register(Arch(
    "minicpmv", "image", MiniCPMVVision, MiniCPMVConfig, config_from_hf, config_from_gguf, config_to_gguf,
    hf_to_gguf, projectors=("resampler",), image=ImagePreprocess("siglip"), prepare=prepare, needs_text=True,
    examples=(MiniCPMVConfig(image_size=56, patch_size=14, n_embd=32, n_ff=64, n_head=4, n_layer=1, n_mm_embd=128,
                             n_query=8, n_pos_side=8, version=3),)))
