"""Phi-4-multimodal vision: a SigLIP tower over dynamic HD crops, 2x2 token compression, row and
view separators and a GELU MLP (projector "phi4", as llama.cpp's mtmd names it).

Per image (``preprocess.phi4.phi4_image``: the global image then rows x cols crops, each with a
patch mask; patches wholly in the white padding are masked):

    x = patch_embd(crop) + patch_embd.bias + position_embd[pos]     (pos: HF's bucketed positions,
                                                                     stretched over the crop's valid patches)
    x = blk.0 .. blk.{n-1}(x, keys of padded patches masked)        (HF's hidden_states[feature_layer])
    t = avg_pool_2x2(x on its (P, P) grid)                          ((P/2)^2 tokens per crop)
    sub  = crops' tokens as one (rows * P/2, cols * P/2) grid, cut to the rows / columns whose
           top-left patch is valid, each row followed by v.image_newline (HF's sub_GN)
    glob = the global image's (P/2, P/2) grid, each row followed by v.image_newline
    y = mm.2(gelu_erf(mm.0([sub; v.view_seperator (HF's glb_GN); glob])))

Several images of any crop counts run as one batch of crops (``build_items``): one tower call,
per-crop masks and positions fed as inputs, the assembly per image in the graph.

llama.cpp's mtmd runs Phi-4 vision at one dynamic size without the HD layout; its names are
kept for what both have (``mm.0`` / ``mm.2``, the tower), and the separators take the gguf
names of the same roles elsewhere (``v.image_newline``: LLaVA-NeXT's row end; ``v.view_seperator``:
DeepSeek-OCR's view separator). HF's projector GELU is the erf form (llama.cpp uses tanh).

Example:
    >>> cfg = Phi4VisionConfig(image_size=32, patch_size=4, n_embd=32, n_ff=64, n_head=4, n_layer=2, n_mm_embd=48)
    >>> build(cfg).outputs["embd"].shape     # 1 x 1 crop: 4*5 + 1 + 4*5 rows
    (41, 48)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import Keys

from .. import blocks, ops
from ..graph import Graph, Tensor
from ..preprocess.phi4 import Phi4Image
from .common import Block, VitHparams, weight_shapes_of
from .gguf_keys import T, gguf_vision, tn, vit_keys
from .hf import as_dict, convert_state, hf_vit_rules, sub
from . import settings
from .registry import Arch, ImagePreprocess, register

HF_PREFIXES = ("model.embed_tokens_extend.image_embed.", "embed_tokens_extend.image_embed.", "image_embed.")
NEWLINE, VIEW_SEP = tn(T.V_ENC_EMBD_IMGNL, None), tn(T.V_ENC_EMBD_VSEP, None)


@dataclass(frozen=True)
class Phi4VisionConfig(VitHparams):
    """Tower hyperparameters (``VitHparams``; n_layer: the layers run, HF's num_hidden_layers +
    feature_layer + 1) and the projector's output width."""

    n_mm_embd: int = 3072
    act: str = "gelu"  # HF's gelu_pytorch_tanh

    @property
    def n_out(self) -> int:
        return self.n_mm_embd

    @property
    def side(self) -> int:
        """Patches per crop side."""
        return self.image_size // self.patch_size


def _check_cfg(c: Phi4VisionConfig) -> None:
    if c.image_size % c.patch_size or c.side % 2:
        raise ValueError(f"[phi4_vision] crop {c.image_size} / patch {c.patch_size} must be an even whole number of "
                         "patches (HF pads odd grids by reflection, which graphdsl does not build)")


def positions(mask: np.ndarray) -> np.ndarray:
    """HF's position ids of one crop (P, P) bool mask: valid patches spread over the P x P table by
    float32 bucketing (``Phi4MultimodalVisionEmbeddings``), padded ones at 0. -> (P*P,) int32."""
    p = mask.shape[0]
    step = 1.0 / p  # torch.arange(1/p, 1, 1/p) in float32, values computed in double
    bounds = (step + step * np.arange(int(np.ceil((1.0 - step) / step)))).astype(np.float32)
    out = []
    for n in (int(mask[:, 0].sum()), int(mask[0, :].sum())):
        frac = np.arange(p, dtype=np.float32) * (np.float32(1.0) / np.float32(max(n, 1)))
        frac = np.minimum(frac, np.float32(1.0 - 1e-6))
        out.append(np.searchsorted(bounds, frac, side="right"))
    pos = out[0][:, None] * p + out[1][None, :]
    return np.where(mask, pos, 0).astype(np.int32).reshape(-1)


def kept(img: Phi4Image) -> tuple[int, int]:
    """(rows, cols) of compressed tokens kept from an image's crop grid: those whose top-left patch is valid."""
    r, c = img.grid
    m = img.patch_mask[1:1 + r * c, 0::2, 0::2]
    s = m.shape[-1]
    m = m.reshape(r, c, s, s).transpose(0, 2, 1, 3).reshape(r * s, c * s)
    return int(m[:, 0].sum()), int(m[0, :].sum())


def as_image(data: Any, side: int, size: int) -> Phi4Image:
    """A batch item: a ``Phi4Image`` (or a (pixels, mask, grid) triple), checked against the tower."""
    img = data if isinstance(data, Phi4Image) else Phi4Image(*data) if isinstance(data, tuple) else None
    if img is None:
        raise ValueError(f"[phi4_vision] an image must be preprocess.phi4.phi4_image's result, got {type(data).__name__}")
    px, m = np.asarray(img.pixel_values), np.asarray(img.patch_mask)
    r, c = img.grid
    n = 1 + r * c
    if r < 1 or c < 1 or px.shape != (n, 3, size, size) or m.shape != (n, side, side):
        raise ValueError(f"[phi4_vision] grid {img.grid} needs pixels ({n}, 3, {size}, {size}) and mask ({n}, {side}, "
                         f"{side}), got {px.shape} and {m.shape}")
    if not m[:, 0, 0].all():
        raise ValueError("[phi4_vision] every crop's top-left patch must be valid (phi4_image never pads a whole crop)")
    return Phi4Image(np.ascontiguousarray(px, np.float32), m.astype(bool), (int(r), int(c)))


class Phi4Vision(Block):
    """Phi-4-multimodal images -> (n_i, n_mm_embd) each; see the module doc."""

    kind = "image"
    # the global image and one crop (a 1 x 1 grid): declares every weight
    example = property(lambda self: ((2, 3, self.cfg.image_size, self.cfg.image_size), "f32"))

    def n_tokens(self, img: Phi4Image) -> int:
        s = self.cfg.side // 2
        uh, uw = kept(img)
        return uh * (uw + 1) + 1 + s * (s + 1)

    def _build(self, pixels: Tensor) -> Tensor:
        """Crops f32 (1 + k, 3, S, S), read as one image of 1 x k full crops."""
        n = pixels.shape[0]
        p = self.cfg.side
        img = Phi4Image(np.zeros((n, 3, 1, 1), np.float32), np.ones((n, p, p), bool), (1, n - 1))
        pos = pixels.graph.const("v.inp_pos_ids", np.concatenate([positions(m) for m in img.patch_mask]), dtype="i32")
        return self._images(pixels, pos, None, [img])[0]

    def build_items(self, g: Graph, prefix: str, datas, batch_kinds=()):
        """All crops of all images as one batch; inputs ``{prefix}.pixels``, ``.pos``, ``.mask``."""
        c = self.cfg
        imgs = [as_image(d, c.side, c.image_size) for d in datas]
        masks = np.concatenate([im.patch_mask for im in imgs])
        feeds = {f"{prefix}.pixels": np.concatenate([im.pixel_values for im in imgs]),
                 f"{prefix}.pos": np.concatenate([positions(m) for m in masks]),
                 # padded patches are hidden as keys (HF's patch_attention_mask); (N, n, n) per crop
                 f"{prefix}.mask": np.ascontiguousarray(np.broadcast_to(
                     np.where(masks.reshape(len(masks), 1, -1), 0.0, -np.inf).astype(np.float32),
                     (len(masks), c.side ** 2, c.side ** 2)))}
        px = g.input(f"{prefix}.pixels", feeds[f"{prefix}.pixels"].shape)
        pos = g.input(f"{prefix}.pos", feeds[f"{prefix}.pos"].shape, "i32")
        mask = g.input(f"{prefix}.mask", feeds[f"{prefix}.mask"].shape)
        with g.weight_types(getattr(c, "wtypes", None)):
            outs = self._images(px, pos, mask, imgs)
        return feeds, outs, tuple((im.grid, kept(im)) for im in imgs)

    def _images(self, pixels: Tensor, pos: Tensor, mask: Tensor | None, imgs: list[Phi4Image]) -> list[Tensor]:
        c, g = self.cfg, pixels.graph
        _check_cfg(c)
        n, p, d = pixels.shape[0], c.side, c.n_embd
        with g.scope("v"):
            x = ops.conv_2d(g.weight("patch_embd.weight", (d, 3, c.patch_size, c.patch_size)), pixels,
                            stride=c.patch_size, name="patch_embd.conv")
            x = ops.permute(ops.reshape(x, (n, d, p * p), name="patch_embd.flat"), (0, 2, 1), name="patch_embd.t")
            x = ops.add(x, g.weight("patch_embd.bias", (d,)), name="patch_embd")
            table = g.weight("position_embd.weight", (p * p, d))
            x = ops.add(x, ops.reshape(ops.get_rows(table, pos, name="inp_pos_rows"), (n, p * p, d)), name="inp_pos")
            x = blocks.vit(x, c.vit, n_layer=c.n_layer, mask=mask)[-1]
            # 2x2 average over each crop's (P, P) grid -> (n, (P/2)^2, d)
            x = ops.reshape(ops.permute(x, (0, 2, 1), name="grid.t"), (n, d, p, p), name="grid")
            x = ops.pool_2d(x, "avg", 2, name="compress")
            s = p // 2
            x = ops.permute(ops.reshape(x, (n, d, s * s), name="compress.flat"), (0, 2, 1), name="compress.t")
            x = ops.cont(x, name="tokens")
            newline = ops.reshape(g.weight("image_newline", (d,)), (1, 1, d), name="newline")
            sep = ops.reshape(g.weight("view_seperator", (d,)), (1, d), name="view_sep")
            seqs, o = [], 0
            for i, im in enumerate(imgs):
                seqs.append(self._assemble(x, o, im, newline, sep, f"img.{i}"))
                o += 1 + im.grid[0] * im.grid[1]
        with g.scope("mm"):
            y = ops.concat(seqs, axis=0, name="seq") if len(seqs) > 1 else seqs[0]
            y = blocks.linear(y, "0", c.n_mm_embd, wtype=c.wtype)
            y = ops.gelu_erf(y, name="act")
            y = blocks.linear(y, "2", c.n_mm_embd, wtype=c.wtype)
        if len(seqs) == 1:
            return [y]
        outs, r0 = [], 0
        for i, t in enumerate(seqs):
            outs.append(ops.view(y, 0, r0, r0 + t.shape[0], name=f"image.{i}"))
            r0 += t.shape[0]
        return outs

    def _assemble(self, x: Tensor, o: int, im: Phi4Image, newline: Tensor, sep: Tensor, name: str) -> Tensor:
        """[sub grid rows + newlines; view separator; global grid rows + newlines] of one image, (n_i, d)."""
        d, s = x.shape[-1], self.cfg.side // 2
        r, c = im.grid
        uh, uw = kept(im)

        def rows(grid: Tensor, h: int, w: int, what: str) -> Tensor:
            nl = ops.repeat(newline, (h, 1, d), name=f"{name}.{what}.nl")
            t = ops.concat([grid, nl], axis=1, name=f"{name}.{what}.rows")
            return ops.reshape(t, (h * (w + 1), d), name=f"{name}.{what}")

        glob = ops.reshape(ops.view(x, 0, o, o + 1, name=f"{name}.global.crop"), (s, s, d), name=f"{name}.global.grid")
        crops = ops.view(x, 0, o + 1, o + 1 + r * c, name=f"{name}.crops")
        t = ops.reshape(crops, (r, c, s, s * d), name=f"{name}.crops.split")
        t = ops.cont(ops.permute(t, (0, 2, 1, 3), name=f"{name}.crops.perm"), name=f"{name}.crops.cont")
        t = ops.reshape(t, (r * s, c * s, d), name=f"{name}.sub.grid")
        if uh < r * s:
            t = ops.view(t, 0, 0, uh, name=f"{name}.sub.keep_rows")
        if uw < c * s:
            t = ops.cont(ops.view(t, 1, 0, uw, name=f"{name}.sub.keep_cols"), name=f"{name}.sub.kept")
        return ops.concat([rows(t, uh, uw, "sub"), sep, rows(glob, s, s, "glob")], axis=0, name=name)


def build(cfg: Phi4VisionConfig, images: list[Phi4Image] | None = None) -> Graph:
    """A graph of ``images`` (default: one 1 x 1 grid) with inputs ``image.items.*`` and output ``embd``
    (the images' rows, concatenated)."""
    g = Graph("phi4_vision")
    m = Phi4Vision(cfg)
    if images is None:
        p = cfg.side
        images = [Phi4Image(np.zeros((2, 3, cfg.image_size, cfg.image_size), np.float32), np.ones((2, p, p), bool),
                            (1, 1))]
    feeds, outs, _ = m.build_items(g, "image.items", images)
    g.output("embd", ops.concat(outs, axis=0, name="embd") if len(outs) > 1 else outs[0])
    return g


def feeds_of(cfg: Phi4VisionConfig, images: list[Phi4Image]) -> dict[str, np.ndarray]:
    """The inputs of ``build(cfg, images)``."""
    return Phi4Vision(cfg).build_items(Graph("feeds"), "image.items", images)[0]


def weight_shapes(cfg: Phi4VisionConfig) -> dict[str, tuple[int, ...]]:
    return weight_shapes_of(Phi4Vision(cfg))


def config_from_hf(hf: Any) -> Phi4VisionConfig:
    """From an HF Phi4MultimodalConfig (vision_config, hidden_size)."""
    d = as_dict(hf)  # its audio_config is phi4_audio's (model_type phi4_multimodal_audio): not a conflict
    if "vision_config" not in d:
        raise ValueError(f"[phi4_vision.config_from_hf] needs a Phi4MultimodalConfig (vision_config), got "
                         f"model_type {d.get('model_type')!r}")
    v = sub(d, "vision_config")
    n_hidden, fl = v.get("num_hidden_layers", 27), v.get("feature_layer", -2)
    n_layer = n_hidden + fl + 1 if fl < 0 else fl
    if not 1 <= n_layer <= n_hidden:
        raise ValueError(f"[phi4_vision.config_from_hf] feature_layer {fl} of {n_hidden} layers runs no layer")
    if v.get("crop_size", 448) != v.get("image_size", 448):
        raise ValueError(f"[phi4_vision.config_from_hf] crop_size {v.get('crop_size')} != image_size {v.get('image_size')}")
    return Phi4VisionConfig(image_size=v.get("image_size", 448), patch_size=v.get("patch_size", 14),
                            n_embd=v.get("hidden_size", 1152), n_ff=v.get("intermediate_size", 4304),
                            n_head=v.get("num_attention_heads", 16), n_layer=n_layer, eps=v.get("layer_norm_eps", 1e-6),
                            act=blocks.act_of(v.get("hidden_act", "gelu_pytorch_tanh")),
                            n_mm_embd=d.get("hidden_size", 3072))


def config_from_gguf(src: Any) -> Phi4VisionConfig:
    m, v, kw = gguf_vision(src, ("phi4",), "Phi-4")
    name = tn(T.V_MMPROJ, "weight", 2)
    if name not in m.shapes:
        raise m.error(f"no {name}")
    return Phi4VisionConfig(**kw, n_mm_embd=m.shapes[name][0])


def config_to_gguf(cfg: Phi4VisionConfig, image_mean=(0.5,) * 3, image_std=(0.5,) * 3) -> list[tuple[str, object]]:
    V = Keys.ClipVision
    return [(Keys.Clip.PROJECTOR_TYPE, "phi4"), *vit_keys(cfg, image_mean, image_std), (V.PROJECTION_DIM, int(cfg.n_out)),
            ("graphdsl.vision.projector_act", "gelu_erf")]


def _rules():
    tower = [("img_processor." + hf, gg) for hf, gg in hf_vit_rules()]
    proj = [(f"img_projection_{hf}.{s}", tn(T.V_MMPROJ, s, i)) for hf, i in (("up", 0), ("down", 2))
            for s in ("weight", "bias")]
    return [*tower, *proj, ("sub_img_feature_extensor", NEWLINE), ("global_img_feature_extensor", VIEW_SEP)]


def hf_to_gguf(state_dict, config) -> dict[str, np.ndarray]:
    """HF Phi4MultimodalForCausalLM tensors (its image embedding) -> gguf names (NumPy f32); the
    separators (1, 1, [1,] d) become (d,). Only the tower's first n_layer blocks are kept."""
    cfg = config if isinstance(config, Phi4VisionConfig) else config_from_hf(config)

    def fix(out):
        for k in (NEWLINE, VIEW_SEP):
            if k in out:
                out[k] = out[k].reshape(-1)
        return out
    return convert_state(state_dict, HF_PREFIXES, _rules(), weight_shapes(cfg), "phi4_vision", fix)


def frames(src: Any, mmproj, text_info=None, max_seconds=None) -> Phi4Image:
    """``embed_files``' pre-processing: the HD crops of one image with the file's crop size, patch
    size, mean, std and dynamic_hd (``SETTINGS``; HF's 36 crops at most for a file without it)."""
    from ..preprocess.phi4 import Phi4ImageConfig, phi4_image
    c = mmproj.vision.cfg
    got = settings.read(ARCH, mmproj.config.file, c)
    return phi4_image(src, Phi4ImageConfig(crop=c.image_size, patch=c.patch_size, dynamic_hd=got["dynamic_hd"],
                                           mean=tuple(got["image_mean"]), std=tuple(got["image_std"])))


_CROP = "graphdsl's crops are the tower's vision_config.crop_size (= image_size) squares"
SETTINGS = (
    *settings.vit_config(),
    *(settings.decoder(k) for k in (  # the root is the decoder's config; the towers are below it
        "vocab_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
        "hidden_act", "max_position_embeddings", "original_max_position_embeddings", "rms_norm_eps",
        "rope_parameters.*", "sliding_window")),
    settings.carried("config", "hidden_size", Keys.ClipVision.PROJECTION_DIM),
    settings.irrelevant("config", "vision_config.crop_size", "must equal image_size (config_from_hf checks it)"),
    settings.carried("config", "vision_config.feature_layer", Keys.ClipVision.BLOCK_COUNT),  # blocks kept
    settings.carried("processor", "dynamic_hd", "graphdsl.phi4.dynamic_hd", 36),
    settings.carried("processor", "image_mean", Keys.ClipVision.IMAGE_MEAN, [0.5] * 3),
    settings.carried("processor", "image_std", Keys.ClipVision.IMAGE_STD, [0.5] * 3),
    settings.Setting("processor", "size.height", refuse=settings.other_than("vision_config.crop_size", 448), reason=_CROP),
    settings.Setting("processor", "size.width", refuse=settings.other_than("vision_config.crop_size", 448), reason=_CROP),
    settings.Setting("processor", "patch_size", refuse=settings.other_than("vision_config.patch_size", 14),
                     reason="the patch mask is cut by the tower's vision_config.patch_size"),
    settings.unless("processor", "resample", 3, "graphdsl reproduces HF's resizes at their defaults "
                    "(antialiased bilinear crops, bicubic global image)"),
    settings.unless("processor", "do_rescale", True, "graphdsl's Phi-4 crops always rescale by 1/255"),
    settings.unless("processor", "rescale_factor", 1 / 255, "graphdsl's Phi-4 crops always rescale by 1/255"),
    settings.unless("processor", "do_normalize", True, "graphdsl's Phi-4 crops are always normalized"),
    settings.unless("processor", "do_convert_rgb", True, "graphdsl always converts images to RGB"),
)


ARCH = register(Arch(
    "phi4_vision", "image", Phi4Vision, Phi4VisionConfig, config_from_hf, config_from_gguf, config_to_gguf, hf_to_gguf,
    projectors=("phi4",), hf_model_types=("phi4_multimodal",),
    image=ImagePreprocess("siglip", defaults={"image_size": 448, "patch_size": 14}), prepare=frames,
    companions=("phi4_audio",), settings=SETTINGS,
    examples=(Phi4VisionConfig(image_size=32, patch_size=4, n_embd=32, n_ff=64, n_head=4, n_layer=2, n_mm_embd=48),)))
