"""Llama 3.2 Vision (mllama): the tiled vision encoder + projector whose output a decoder reads
through cross-attention (projector "mllama", output "cross").

Per image: T = max_tiles tiles of S x S (``preprocess.mllama``: the image's tiles, then zero
tiles), its aspect-ratio id a (1..n_ratios) and its tile count. P = (S / p)^2 patches, P + 1
positions with the class token, padded to Np (a multiple of 8) as HF does.

    x = patch_embd(tile)                                          (T, P, d), no bias
    x = x + tanh(pre_tile_position_embd.gate) * pre_tile_position_embd[a]       (one row per tile)
    x = [class_embd; x]                                           (T, P + 1, d)
    x = x + (1 - tanh(position_embd.gate)) * position_embd
          + tanh(position_embd.gate) * tile_position_embd[a]      (per tile and position)
    x = pad(LayerNorm(pre_ln)(x), Np)  ->  (T * Np, d)            one sequence over all tiles
    h_0 .. h_{L-1} = blk.0 .. blk.{L-1}(x, mask)                  pre-LN layers, no attention biases
    x = LayerNorm(post_ln)(h_{L-1}) + tanh(post_tile_position_embd.gate) * post_tile_position_embd[a]
    x = global.blk.0 .. (x, mask)                                  layers with tanh(attn_gate), tanh(ffn_gate)
    y = [x, h_i0, h_i1, ...]  (positions 0..P of each tile; the h_i interleaved per channel, as
                               HF's torch.stack(..., dim=-1))      (T, P + 1, d (1 + k))
    y = mm.0(y)                                                    (T (P + 1), n_mm_embd)

The mask is HF's: a row is "masked" when it is a padding position or in a zero tile, and -inf
is added only where both the query and the key rows are masked (real rows attend to padding
rows too, which is what HF and Meta's reference compute). Zero tiles are run because real rows
see them. The projector's rows for zero tiles are kept (HF's cross_attention_states has them);
``CrossMemory.n_valid`` marks the real ones.

Example:
    >>> cfg = MllamaConfig(image_size=16, patch_size=4, n_embd=32, n_ff=64, n_head=4, n_layer=3,
    ...                    n_global_layer=2, max_tiles=4, n_ratios=8, layers_out=(0, 2), n_mm_embd=24)
    >>> build(cfg).outputs["embd"].shape       # 4 tiles x (16 patches + class token)
    (1, 68, 24)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import Keys

from .. import blocks, ops
from ..gguf_io.reader import metadata_value, read_gguf
from ..graph import Graph, Tensor
from .common import Block, VitHparams, file_types, weight_shapes_of
from .gguf_keys import T, gguf_vision, tn, vit_keys
from .hf import VISION_PREFIXES, convert_state, hf_dict, sub
from . import settings
from .registry import Arch, ImagePreprocess, register

KEY_GLOBAL_LAYERS = "clip.vision.global.block_count"
KEY_MAX_TILES = "clip.vision.max_num_tiles"
KEY_LAYERS_OUT = "clip.vision.intermediate_layers_indices"
OUTER_EPS = 1e-5  # HF's layernorm_pre / layernorm_post are nn.LayerNorm(d): torch's default eps


@dataclass(frozen=True)
class MllamaConfig(VitHparams):
    """Tower hyperparameters (``VitHparams``: the local transformer), the global transformer,
    the tiling and the projector."""

    n_global_layer: int = 8
    max_tiles: int = 4
    n_ratios: int = 8  # supported aspect ratios (HF max_aspect_ratio_id); the tables have n_ratios + 1 rows
    layers_out: tuple[int, ...] = (3, 7, 15, 23, 30)  # HF intermediate_layers_indices
    n_mm_embd: int = 4096

    def __post_init__(self):
        if not all(0 <= i < self.n_layer for i in self.layers_out):
            raise ValueError(f"[mllama] intermediate layers {list(self.layers_out)} must lie in 0..{self.n_layer - 1}")
        if self.max_tiles < 1 or self.n_ratios < 1:
            raise ValueError(f"[mllama] max_tiles {self.max_tiles} and n_ratios {self.n_ratios} must be >= 1")

    n_out = property(lambda self: self.n_mm_embd)
    n_pos = property(lambda self: (self.image_size // self.patch_size) ** 2 + 1)  # patches + class token
    n_pad = property(lambda self: -(-self.n_pos // 8) * 8)  # HF pads each tile's positions to a multiple of 8
    n_feat = property(lambda self: self.n_embd * (1 + len(self.layers_out)))  # HF vision_output_dim

    @property
    def vit(self) -> blocks.VitParams:
        return blocks.VitParams(self.n_embd, self.n_head, self.n_ff, self.eps, self.act, qkv_bias=(False,) * 3,
                                attn=self.attn, wtype=self.wtype)


def attn_mask(n_tiles: int, cfg: MllamaConfig) -> np.ndarray:
    """HF's _prepare_aspect_ratio_attention_mask for one image: (T Np, T Np) f32, -inf where both
    rows are masked (padding positions, or any position of the zero tiles)."""
    masked = np.ones((cfg.max_tiles, cfg.n_pad), bool)
    masked[:n_tiles, :cfg.n_pos] = False
    m = masked.reshape(-1)
    return np.where(m[:, None] & m[None, :], -np.inf, 0.0).astype(np.float32)


def _layer(x: Tensor, p: blocks.VitParams, mask: Tensor, gated: bool) -> Tensor:
    """HF's MllamaVisionEncoderLayer: pre-LN, attention without biases, plain FFN; the global
    layers scale both branches by tanh of a learned gate."""
    g = x.graph
    h = blocks.norm(x, "ln1", eps=p.eps)
    h = blocks.attention(h, p.n_head, qkv_bias=p.qkv_bias, out_bias=False, impl=p.attn, mask=mask, wtype=p.wtype)
    if gated:
        h = ops.mul(h, ops.tanh(g.weight("attn_gate", (1,)), name="attn_gate.tanh"), name="attn_gated")
    x = ops.add(x, h, name="ffn_inp")
    h = blocks.ffn(blocks.norm(x, "ln2", eps=p.eps), p.n_ff, p.act, wtype=p.wtype)
    if gated:
        h = ops.mul(h, ops.tanh(g.weight("ffn_gate", (1,)), name="ffn_gate.tanh"), name="ffn_gated")
    return ops.add(x, h, name="layer_out")


def _tile_table(x: Tensor, ids: Tensor, name: str, rows: int, shape: tuple[int, ...]) -> Tensor:
    """tanh(name.gate) * name.weight[ids] reshaped to (B, *shape): a gated aspect-ratio embedding."""
    g = x.graph
    table = g.weight(f"{name}.weight", (rows, int(np.prod(shape))))
    e = ops.reshape(ops.get_rows(table, ids, name=f"{name}.rows"), (ids.shape[0], *shape), name=f"{name}.tiles")
    return ops.mul(e, ops.tanh(g.weight(f"{name}.gate", (1,)), name=f"{name}.gate.tanh"), name=name)


class MllamaVision(Block):
    """Images as tiles -> (B, T (P + 1), n_mm_embd) cross-attention memories.

    Called on pixels (B T, 3, S, S) (each image's T tiles in turn) it declares two more inputs,
    ``{pixels}.aspect_ratio_ids`` i32 (B,) and ``{pixels}.attn_mask`` f32 (B, T Np, T Np); in a mixed batch
    ``build_items`` feeds them from ``preprocess.mllama.MllamaImage`` items.
    """

    kind = "image"
    output = "cross"
    example = property(lambda self: ((self.cfg.max_tiles, 3, self.cfg.image_size, self.cfg.image_size), "f32"))

    def _build(self, pixels: Tensor) -> Tensor:
        g, b = pixels.graph, max(pixels.shape[0] // self.cfg.max_tiles, 1)
        n = self.cfg.max_tiles * self.cfg.n_pad
        ids = g.input(f"{pixels.name}.aspect_ratio_ids", (b,), "i32")
        return self.encode(pixels, ids, g.input(f"{pixels.name}.attn_mask", (b, n, n)))

    def encode(self, pixels: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
        """The recipe of the module doc on (B T, 3, S, S) pixels, (B,) ids and (B, T Np, T Np) mask."""
        c, g = self.cfg, pixels.graph
        b, t, d, n_pos, n_pad = ids.shape[0], c.max_tiles, c.n_embd, c.n_pos, c.n_pad
        want = (b * t, 3, c.image_size, c.image_size)
        if pixels.shape != want or ids.shape != (b,) or mask.shape != (b, t * n_pad, t * n_pad):
            raise ValueError(f"[mllama] pixels {pixels.shape}, ids {ids.shape}, mask {mask.shape}: want {want}, "
                             f"({b},), ({b}, {t * n_pad}, {t * n_pad}) (T = {t} tiles per image)")
        with g.scope("v"):
            x = ops.conv_2d(g.weight("patch_embd.weight", (d, 3, c.patch_size, c.patch_size)), pixels,
                            stride=c.patch_size, name="patch_embd.conv")
            x = ops.permute(ops.reshape(x, (b, t, d, n_pos - 1), name="patch_embd.flat"), (0, 1, 3, 2),
                            name="patch_embd")  # (B, T, P, d)
            pre = _tile_table(x, ids, "pre_tile_position_embd", c.n_ratios + 1, (t, 1, d))
            x = ops.add(x, pre, name="inp_pre_tile")
            cls = ops.reshape(g.weight("class_embd", (d,)), (1, 1, 1, d), name="inp_cls.tok")
            x = ops.concat([ops.repeat(cls, (b, t, 1, d), name="inp_cls.rep"), x], axis=2, name="inp_cls")
            gate = ops.tanh(g.weight("position_embd.gate", (1,)), name="position_embd.gate.tanh")
            pos = ops.mul(g.weight("position_embd.weight", (n_pos, d)), 1.0 - gate, name="position_embd.gated")
            x = ops.add(x, pos, name="inp_pos")
            tiles = g.weight("tile_position_embd.weight", (c.n_ratios + 1, t * n_pos * d))
            tiles = ops.reshape(ops.get_rows(tiles, ids, name="tile_position_embd.rows"), (b, t, n_pos, d),
                                name="tile_position_embd.tiles")
            x = ops.add(x, ops.mul(tiles, gate, name="tile_position_embd"), name="inp_tile_pos")
            x = blocks.norm(x, "pre_ln", eps=OUTER_EPS)
            x = ops.pad(x, ((0, 0), (0, 0), (0, n_pad - n_pos), (0, 0)), name="inp_pad")
            x = ops.reshape(x, (b, t * n_pad, d), name="inp_seq")
            if b == 1:  # one image: an (n, n) mask, which flash attention takes (a batch needs the softmax form)
                mask = ops.reshape(mask, (t * n_pad, t * n_pad), name="attn_mask.one")
            hs = []
            for il in range(c.n_layer):
                with g.scope(f"blk.{il}"):
                    hs.append(x := _layer(x, c.vit, mask, gated=False))
            x = ops.reshape(blocks.norm(x, "post_ln", eps=OUTER_EPS), (b, t, n_pad, d), name="post_ln.tiles")
            x = ops.add(x, _tile_table(x, ids, "post_tile_position_embd", c.n_ratios + 1, (t, 1, d)),
                        name="post_tile")
            x = ops.reshape(x, (b, t * n_pad, d), name="global_inp")
            with g.scope("global"):
                for il in range(c.n_global_layer):
                    with g.scope(f"blk.{il}"):
                        x = _layer(x, c.vit, mask, gated=True)
            # HF stacks the intermediate states on a new last axis: channel-major, layer-minor
            inter = [ops.reshape(hs[i], (b, t * n_pad, d, 1), name=f"layers_out.{i}") for i in c.layers_out]
            parts = [ops.reshape(x, (b, t, n_pad, d), name="global_out")]
            if inter:
                st = ops.concat(inter, axis=3, name="layers_out") if len(inter) > 1 else inter[0]
                parts.append(ops.reshape(ops.cont(st, name="layers_out.cont"), (b, t, n_pad, d * len(inter)),
                                         name="layers_out.tiles"))
            y = ops.concat(parts, axis=3, name="features") if len(parts) > 1 else parts[0]
            y = ops.cont(ops.view(y, 2, 0, n_pos, name="features.unpad"), name="features.rows")
        with g.scope("mm"):
            y = blocks.linear(y, "0", c.n_mm_embd, wtype=c.wtype)
        return ops.reshape(y, (b, t * n_pos, c.n_mm_embd), name="mm.out")

    # -- mixed batches -----------------------------------------------------------------------------
    def _image(self, data: Any):
        """An item (``preprocess.mllama.MllamaImage`` or anything with pixel_values,
        aspect_ratio_id, n_tiles) checked against this model."""
        c = self.cfg
        try:
            px = np.asarray(data.pixel_values, np.float32)
            a, k = int(data.aspect_ratio_id), int(data.n_tiles)
        except (AttributeError, TypeError, ValueError) as e:
            raise ValueError(f"[mllama] an image item must be a preprocess.mllama.MllamaImage, got "
                             f"{type(data).__name__} ({e})") from None
        want = (c.max_tiles, 3, c.image_size, c.image_size)
        if px.shape != want or not 1 <= a <= c.n_ratios or not 1 <= k <= c.max_tiles:
            raise ValueError(f"[mllama] image pixels {px.shape} (want {want}), aspect ratio id {a} "
                             f"(1..{c.n_ratios}), {k} tiles (1..{c.max_tiles})")
        return px, a, k

    def feeds(self, datas) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(pixels (B T, 3, S, S), aspect ratio ids i32 (B,), attention masks (B, T Np, T Np))."""
        ims = [self._image(d) for d in datas]
        px = np.ascontiguousarray(np.concatenate([p for p, _, _ in ims]))
        return px, np.array([a for _, a, _ in ims], np.int32), np.stack([attn_mask(k, self.cfg) for _, _, k in ims])

    def build_items(self, g: Graph, prefix: str, datas, batch_kinds=()) -> tuple[dict, list[Tensor], tuple]:
        """The mixed-batch hook (``embed``): all images of the batch in one run; each item gives
        its T (P + 1) rows."""
        px, ids, mask = self.feeds(datas)
        names = (f"{prefix}.pixels", f"{prefix}.aspect_ratio_ids", f"{prefix}.attn_mask")
        with file_types(g, self.cfg.wtypes):
            out = self.encode(g.input(names[0], px.shape), g.input(names[1], ids.shape, "i32"),
                              g.input(names[2], mask.shape))
        rows = out.shape[1:]
        outs = [ops.reshape(out if len(datas) == 1 else ops.view(out, 0, i, i + 1, name=f"{prefix}.{i}.rows"), rows,
                            name=f"{prefix}.{i}") for i in range(len(datas))]
        return dict(zip(names, (px, ids, mask))), outs, ()

    def valid_rows(self, data) -> int:
        """Rows of the item's memory that come from real tiles (the rest: zero tiles)."""
        return self._image(data)[2] * self.cfg.n_pos


def hf_cross_attention_mask(emb, cfg: MllamaConfig) -> np.ndarray:
    """A mixed batch's image memories (``embed.Embeddings``) -> HF's ``cross_attention_mask``
    int64 (1, n_tokens, n_images, max_tiles), read off the generic row mask (one row per tile)."""
    n = sum(m.kind == "image" for m in emb.cross)
    if not n:
        return np.zeros((1, emb.embd.shape[0], 1, cfg.max_tiles), np.int64)
    rows = emb.cross_mask("image")[:, ::cfg.n_pos]  # the first row of every tile
    return rows.reshape(1, rows.shape[0], n, cfg.max_tiles).astype(np.int64)


def build(cfg: MllamaConfig, n_images: int = 1) -> Graph:
    """A graph with inputs ``pixels`` (B T, 3, S, S), ``pixels.aspect_ratio_ids``,
    ``pixels.attn_mask`` (see ``MllamaVision``) and output ``embd`` (B, T (P + 1), n_mm_embd)."""
    g = Graph("mllama")
    g.output("embd", MllamaVision(cfg)(g.input("pixels", (n_images * cfg.max_tiles, 3, cfg.image_size,
                                                          cfg.image_size))))
    return g


def weight_shapes(cfg: MllamaConfig) -> dict[str, tuple[int, ...]]:
    return weight_shapes_of(MllamaVision(cfg))


def config_from_hf(hf: Any) -> MllamaConfig:
    """From an HF MllamaConfig (vision_config, text_config) or a bare MllamaVisionConfig."""
    d = hf_dict(hf, "mllama")
    v = sub(d, "vision_config") or d
    t = sub(d, "text_config")
    ratios = v.get("supported_aspect_ratios") or [[1, 1], [1, 2], [1, 3], [1, 4], [2, 1], [2, 2], [3, 1], [4, 1]]
    # HF MllamaVisionConfig's defaults (Llama 3.2 11B's tower, at 448 px), for keys a dict leaves out
    kw = dict(image_size=v.get("image_size", 448), patch_size=v.get("patch_size", 14),
              n_embd=v.get("hidden_size", 1280), n_ff=v.get("intermediate_size", 5120),
              n_head=v.get("attention_heads", v.get("num_attention_heads", 16)), n_layer=v.get("num_hidden_layers", 32),
              eps=v.get("norm_eps", 1e-5), act=blocks.act_of(v.get("hidden_act", "gelu")))
    layers_out = tuple(v.get("intermediate_layers_indices") or (3, 7, 15, 23, 30))
    cfg = MllamaConfig(**kw, n_global_layer=v.get("num_global_layers", 8), max_tiles=v.get("max_num_tiles", 4),
                       n_ratios=len(ratios), layers_out=layers_out, n_mm_embd=t.get("hidden_size", 4096))
    if v.get("vision_output_dim", cfg.n_feat) != cfg.n_feat:
        raise ValueError(f"[mllama.config_from_hf] vision_output_dim {v['vision_output_dim']} != hidden_size x "
                         f"(1 + {len(layers_out)} intermediate layers) = {cfg.n_feat}")
    return cfg


def config_from_gguf(src: Any) -> MllamaConfig:
    """From an mmproj GGUF with projector "mllama" (keys and tensors in the README)."""
    m, v, kw = gguf_vision(src, ("mllama",), "mllama")
    f = read_gguf(m.path)
    n_global = metadata_value(f, KEY_GLOBAL_LAYERS, int)
    head = "v.global.blk."
    stored = len({n[len(head):].split(".", 1)[0] for n in m.shapes if n.startswith(head)})
    if n_global != stored:
        raise m.error(f"{KEY_GLOBAL_LAYERS} is {n_global} but the file holds {stored} global blocks")
    pre = m.shapes.get("v.pre_tile_position_embd.weight")
    mm = m.shapes.get(tn(T.V_MMPROJ, bid=0))
    if pre is None or mm is None:
        raise m.error("no v.pre_tile_position_embd.weight or mm.0.weight")
    return MllamaConfig(**kw, n_global_layer=n_global, max_tiles=metadata_value(f, KEY_MAX_TILES, int),
                        n_ratios=pre[0] - 1, n_mm_embd=mm[0],
                        layers_out=tuple(int(i) for i in metadata_value(f, KEY_LAYERS_OUT, "ints")))


def config_to_gguf(cfg: MllamaConfig, image_mean=(0.5,) * 3, image_std=(0.5,) * 3) -> list[tuple[str, object]]:
    V = Keys.ClipVision
    return [(Keys.Clip.PROJECTOR_TYPE, "mllama"), *vit_keys(cfg, image_mean, image_std),
            (V.PROJECTION_DIM, cfg.n_mm_embd), (KEY_GLOBAL_LAYERS, cfg.n_global_layer),
            (KEY_MAX_TILES, cfg.max_tiles), (KEY_LAYERS_OUT, [int(i) for i in cfg.layers_out])]


def _rules():
    per_layer = [("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"), ("self_attn.v_proj", "attn_v"),
                 ("self_attn.o_proj", "attn_out"), ("input_layernorm", "ln1"),
                 ("post_attention_layernorm", "ln2"), ("mlp.fc1", "ffn_up"), ("mlp.fc2", "ffn_down")]
    rules = [("patch_embedding.weight", "v.patch_embd.weight"), ("class_embedding", "v.class_embd"),
             ("gated_positional_embedding.embedding", "v.position_embd.weight"),
             ("gated_positional_embedding.gate", "v.position_embd.gate"),
             ("gated_positional_embedding.tile_embedding.weight", "v.tile_position_embd.weight"),
             ("multi_modal_projector.weight", "mm.0.weight"), ("multi_modal_projector.bias", "mm.0.bias")]
    for side in ("pre", "post"):
        rules += [(f"{side}_tile_positional_embedding.embedding.weight", f"v.{side}_tile_position_embd.weight"),
                  (f"{side}_tile_positional_embedding.gate", f"v.{side}_tile_position_embd.gate")]
    for hf, gg in (("transformer.layers", "v.blk"), ("global_transformer.layers", "v.global.blk")):
        for s in ("weight", "bias"):
            rules += [(f"{hf}.{{bid}}.{a}.{s}", f"{gg}.{{bid}}.{b}.{s}") for a, b in per_layer]
        rules += [(f"{hf}.{{bid}}.gate_attn", f"{gg}.{{bid}}.attn_gate"),
                  (f"{hf}.{{bid}}.gate_ffn", f"{gg}.{{bid}}.ffn_gate")]
    for hf, gg in (("layernorm_pre", "v.pre_ln"), ("layernorm_post", "v.post_ln")):
        rules += [(f"{hf}.weight", f"{gg}.weight"), (f"{hf}.bias", f"{gg}.bias")]
    return rules


def hf_to_gguf(state_dict, config) -> dict[str, np.ndarray]:
    """HF MllamaForConditionalGeneration tensors (vision_model., multi_modal_projector.) -> gguf names."""
    cfg = config if isinstance(config, MllamaConfig) else config_from_hf(config)
    return convert_state(state_dict, ("model.vision_model.", "vision_model.", "model.", *VISION_PREFIXES),
                         _rules(), weight_shapes(cfg), "mllama")


def frames(source, mmproj, text_info=None, max_seconds=None):
    """An image as HF's MllamaImageProcessor cuts it (tiles of the tower's size) with the file's
    carried settings (resample, rescale, normalization, mean/std), up to its max_tiles: a
    ``preprocess.mllama.MllamaImage`` item."""
    from ..preprocess.mllama import MllamaImageConfig, mllama_image
    c = mmproj.vision.cfg
    return mllama_image(source, MllamaImageConfig(tile_size=c.image_size, max_image_tiles=c.max_tiles,
                                                  **settings.image_kw(ARCH, mmproj)))


def _hf_ratios(v, checkpoint) -> bool:
    n = settings.lookup(checkpoint.get("config"), "vision_config.max_num_tiles")
    n = 4 if n is settings.MISSING else n
    return [list(p) for p in v] != [[w, h] for w in range(1, n + 1) for h in range(1, n + 1) if w * h <= n]


_V = Keys.ClipVision
SETTINGS = (
    *(settings.carried("config", "vision_config." + k, key) for k, key in (
        ("hidden_size", _V.EMBEDDING_LENGTH), ("intermediate_size", _V.FEED_FORWARD_LENGTH),
        ("num_hidden_layers", _V.BLOCK_COUNT), ("attention_heads", _V.Attention.HEAD_COUNT),
        ("image_size", _V.IMAGE_SIZE), ("patch_size", _V.PATCH_SIZE), ("norm_eps", _V.Attention.LAYERNORM_EPS),
        ("hidden_act", "graphdsl.vision.act"), ("num_global_layers", KEY_GLOBAL_LAYERS),
        ("max_num_tiles", KEY_MAX_TILES), ("intermediate_layers_indices", KEY_LAYERS_OUT))),
    settings.unless("config", "vision_config.num_channels", 3, "graphdsl decodes images to RGB: 3 channels"),
    settings.Setting("config", "vision_config.supported_aspect_ratios", refuse=_hf_ratios,
                     reason="graphdsl numbers the aspect ratios as HF derives them from max_num_tiles"),
    settings.irrelevant("config", "vision_config.vision_output_dim", "hidden_size x (1 + intermediate layers), "
                        "which config_from_hf checks"),
    settings.decoder(), settings.carried("config", "text_config.hidden_size", _V.PROJECTION_DIM),
    settings.Setting("processor", "max_image_tiles", refuse=settings.other_than("vision_config.max_num_tiles", 4),
                     reason="graphdsl cuts the model's vision_config.max_num_tiles (the aspect-ratio ids "
                            "number that many tiles' ratios)"),
    settings.irrelevant("processor", "do_pad", "pads an image's tiles to max_image_tiles with zero tiles, which "
                        "the aspect-ratio mask hides"),
    *settings.image_processor("siglip", (0.5,) * 3, (0.5,) * 3, 2),
)


ARCH = register(Arch(
    "mllama", "image", MllamaVision, MllamaConfig, config_from_hf, config_from_gguf, config_to_gguf, hf_to_gguf,
    projectors=("mllama",), hf_model_types=("mllama",), prepare=frames,
    # HF's class defaults: 224 tiles (Llama 3.2 Vision's files say 560); 32 layers: its feature layers exist
    image=ImagePreprocess("siglip", defaults={"image_size": 224, "patch_size": 14, "n_layer": 32}),
    output="cross", settings=SETTINGS,
    examples=(MllamaConfig(image_size=16, patch_size=4, n_embd=32, n_ff=64, n_head=4, n_layer=3, n_global_layer=2,
                           max_tiles=4, n_ratios=8, layers_out=(0, 2), n_mm_embd=24, act="gelu_erf"),)))
