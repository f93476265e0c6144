"""InternVL 2.5 / 3: InternViT + pixel shuffle + a LayerNorm MLP projector (projector "internvl").

    x = [class_embd; patch_embd(tile) + patch_embd.bias] + position_embd
    per layer:  h = x + ls1 * attn_out(attention(ln1(x)))          (q/k RMS-normed over the whole
                x = h + ls2 * ffn_down(act(ffn_up(ln2(h))))         width when the file has attn_q_norm)
    x = LayerNorm(v.post_ln)(x)                                     (only when the file has it)
    x = pixel_shuffle(x without the class token, s)                 (s x s patches -> one token)
    y = mm.model.mlp.3(gelu(mm.model.mlp.1(LayerNorm(mm.model.mlp.0)(x))))   (its eps: torch's 1e-5)

ln1 / ln2 are LayerNorms (InternViT-300M) or RMSNorms without bias (InternViT-6B, HF's
``norm_type="rms_norm"``). An image is several tiles (``preprocess.internvl_images``: tiles row by
row, then the thumbnail), each ``image_size`` square; each gives (n_patches / s^2) tokens.

HF's q_norm / k_norm use eps 1e-6 whatever ``layer_norm_eps`` says; so does this graph.
llama.cpp's mtmd differs from HF in three ways this file does not follow: it appends the class
token after the patches (HF: first, with position 0), picks RMSNorm only for a 3200-wide 45-layer
tower (graphdsl: ``graphdsl.internvl.norm_type``, else RMSNorm where ln1 has no bias) and runs tanh-GELU
(graphdsl: ``graphdsl.vision.act`` / ``graphdsl.vision.projector_act``, HF's exact ones).

Example:
    >>> cfg = InternVLConfig(image_size=32, patch_size=4, n_embd=32, n_ff=64, n_head=4, n_layer=2,
    ...                      scale_factor=2, n_mm_embd=48)
    >>> build(cfg, n_tiles=3).outputs["embd"].shape       # 8x8 patches, 2x2 shuffled -> 16 tokens
    (3, 16, 48)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import Keys

from .. import blocks, ops
from ..gguf_io import KEY_MM_ACT
from ..gguf_io.reader import metadata_value
from ..graph import Graph, Tensor
from ..inp_embd import build_inp_embd
from ..preprocess.image import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from .common import SquareFrames, VitHparams, graph_of, square_grid, weight_shapes_of
from .gguf_keys import T, gguf_vision, tn, vit_keys
from .hf import convert_state, hf_dict, sub
from . import settings
from .registry import Arch, ImagePreprocess, register

KEY_NORM = "graphdsl.internvl.norm_type"
QK_EPS = 1e-6  # HF's InternVLVisionRMSNorm default; q_norm / k_norm are built without layer_norm_eps
MM_EPS = 1e-5  # the projector's nn.LayerNorm default


@dataclass(frozen=True)
class InternVLConfig(VitHparams):
    """Tower hyperparameters (``VitHparams``), InternViT's variants and the projector's."""

    norm: str = "layer"  # "layer" (InternViT-300M) or "rms" (InternViT-6B)
    qk_norm: bool = False
    attn_bias: bool = True  # HF's attention_bias
    post_ln: bool = False  # HF's use_mean_pooling=False: a LayerNorm after the last layer
    scale_factor: int = 2  # 1 / downsample_ratio
    mm_act: str = "gelu_erf"
    n_mm_embd: int = 896
    eps: float = 1e-6
    act: str = "gelu_erf"
    image_size: int = 448
    patch_size: int = 14

    @property
    def n_out(self) -> int:
        return self.n_mm_embd

    @property
    def vit(self) -> blocks.VitParams:
        return blocks.VitParams(self.n_embd, self.n_head, self.n_ff, self.eps, self.act, norm=self.norm,
                                qkv_bias=(self.attn_bias,) * 3, attn=self.attn, wtype=self.wtype)


def _layer(x: Tensor, c: InternVLConfig) -> Tensor:
    """One InternViT layer: blocks.vit_layer with the layer scales ls1 / ls2 (a copy, not a flag)."""
    g, p, nb = x.graph, c.vit, c.norm == "layer"
    hook = blocks.qk_norm(QK_EPS, kind="rms", per_head=False) if c.qk_norm else None
    h = blocks.norm(x, "ln1", eps=c.eps, kind=c.norm, bias=nb)
    h = blocks.attention(h, p.n_head, qkv_bias=p.qkv_bias, impl=p.attn, wtype=p.wtype, qk_hook=hook)
    h = ops.mul(h, g.weight("ls1.weight", (c.n_embd,)), name="ls1")
    x = ops.add(x, h, name="ffn_inp")
    h = blocks.norm(x, "ln2", eps=c.eps, kind=c.norm, bias=nb)
    h = blocks.ffn(h, c.n_ff, c.act, wtype=c.wtype)
    h = ops.mul(h, g.weight("ls2.weight", (c.n_embd,)), name="ls2")
    return ops.add(x, h, name="layer_out")


class InternVLVision(SquareFrames):
    """Tiles f32 (n_tiles, 3, S, S) -> (n_tiles, n_tokens, n_mm_embd)."""

    what, see = "[internvl] tiles", "preprocess.internvl_images"

    def _build(self, tiles: Tensor) -> Tensor:
        c, g = self.cfg, tiles.graph
        grid = square_grid(tiles, c.patch_size, "v.tile_guard", "[internvl] tiles are image_size squares")
        with g.scope("v"):
            x = build_inp_embd("image", tiles, n_embd=c.n_embd, patch_size=c.patch_size, image_size=c.image_size,
                               patch_bias=True, class_embd=True)
            for il in range(c.n_layer):
                with g.scope(f"blk.{il}"):
                    x = _layer(x, c)
            if c.post_ln:
                x = blocks.norm(x, "post_ln", eps=c.eps)
            x = ops.view(x, x.ndim - 2, 1, x.shape[-2], name="patches")  # the class token goes
        with g.scope("mm"):
            x = blocks.pixel_shuffle(x, grid, c.scale_factor, name="shuffle")
            x = blocks.norm(x, "model.mlp.0", eps=MM_EPS)
            x = blocks.activation(blocks.linear(x, "model.mlp.1", c.n_mm_embd, wtype=c.wtype), c.mm_act, name="act")
            return blocks.linear(x, "model.mlp.3", c.n_mm_embd, wtype=c.wtype)


def build(cfg: InternVLConfig, n_tiles: int = 1) -> Graph:
    """A graph with input ``pixels`` (n_tiles, 3, S, S) and output ``embd``."""
    return graph_of(InternVLVision(cfg), (n_tiles, 3, cfg.image_size, cfg.image_size), "internvl")


def weight_shapes(cfg: InternVLConfig) -> dict[str, tuple[int, ...]]:
    return weight_shapes_of(InternVLVision(cfg))


def _square(v: Any, what: str) -> int:
    a = list(v) if isinstance(v, (list, tuple)) else [v, v]
    if len(a) != 2 or a[0] != a[1]:
        raise ValueError(f"[internvl.config_from_hf] vision_config.{what} {v!r}: graphdsl builds square tiles only")
    return int(a[0])


def config_from_hf(hf: Any) -> InternVLConfig:
    """From an HF InternVLConfig (vision_config, downsample_ratio, projector_hidden_act, text_config)."""
    d = hf_dict(hf, "internvl")
    v, t = sub(d, "vision_config"), sub(d, "text_config")
    ratio = d.get("downsample_ratio", 0.5)
    s = int(round(1 / ratio))
    if abs(s * ratio - 1) > 1e-9:
        raise ValueError(f"[internvl.config_from_hf] downsample_ratio {ratio}: graphdsl needs 1 / an integer")
    norm = {"layer_norm": "layer", "rms_norm": "rms"}.get(v.get("norm_type", "layer_norm"))
    if norm is None:
        raise ValueError(f"[internvl.config_from_hf] vision_config.norm_type {v.get('norm_type')!r} is not "
                         "'layer_norm' or 'rms_norm'")
    return InternVLConfig(image_size=_square(v.get("image_size", 448), "image_size"),
                          patch_size=_square(v.get("patch_size", 14), "patch_size"),
                          n_embd=v.get("hidden_size", 1024), n_ff=v.get("intermediate_size", 4096),
                          n_head=v.get("num_attention_heads", 16), n_layer=v.get("num_hidden_layers", 24),
                          eps=v.get("layer_norm_eps", 1e-6), act=blocks.act_of(v.get("hidden_act", "gelu")),
                          norm=norm, qk_norm=bool(v.get("use_qk_norm", False)),
                          attn_bias=bool(v.get("attention_bias", False)), post_ln=not v.get("use_mean_pooling", True),
                          scale_factor=s, mm_act=blocks.act_of(d.get("projector_hidden_act", "gelu")),
                          n_mm_embd=t.get("hidden_size", 896))


def config_from_gguf(src: Any) -> InternVLConfig:
    """From an mmproj GGUF with projector "internvl" (llama.cpp's: clip.vision.projector.scale_factor,
    mm.model.mlp.0 / 1 / 3, its TN_MVLM_PROJ_MLP); q/k norms, biases and post_ln told by the tensors."""
    m, v, kw = gguf_vision(src, ("internvl",), "InternVL")
    fc = m.shapes[tn(T.V_MMPROJ_MLP, "weight", 1)]
    s = v.n_merge or int(round((fc[1] / v.n_embd) ** 0.5))
    if s * s * v.n_embd != fc[1]:
        raise m.error(f"mm.model.mlp.1.weight {list(fc)} does not take {v.n_embd} x scale_factor^2 ({s}^2) inputs")
    # llama.cpp's files lack the key: RMSNorm has no bias (llama.cpp itself asks for 3200 x 45 layers)
    norm = metadata_value(m.file, KEY_NORM, str, "layer" if tn(T.V_ENC_INPUT_NORM, "bias", 0) in m.shapes else "rms")
    if norm not in ("layer", "rms"):
        raise m.error(f"{KEY_NORM} must be 'layer' or 'rms', got {norm!r}")
    has = lambda t, suffix="weight": tn(t, suffix, 0) in m.shapes  # noqa: E731
    return InternVLConfig(**kw, norm=str(norm), qk_norm=has(T.V_ENC_ATTN_Q_NORM), attn_bias=has(T.V_ENC_ATTN_Q, "bias"),
                          post_ln=tn(T.V_POST_NORM) in m.shapes, scale_factor=s, mm_act=v.projector_act,
                          n_mm_embd=fc[0])


def config_to_gguf(cfg: InternVLConfig, image_mean=OPENAI_CLIP_MEAN,
                   image_std=OPENAI_CLIP_STD) -> list[tuple[str, object]]:
    V = Keys.ClipVision
    return [(Keys.Clip.PROJECTOR_TYPE, "internvl"), *vit_keys(cfg, image_mean, image_std),
            (V.Projector.SCALE_FACTOR, cfg.scale_factor), (V.PROJECTION_DIM, cfg.n_mm_embd),
            (KEY_MM_ACT, cfg.mm_act), (KEY_NORM, cfg.norm)]


def _rules():
    L = "encoder.layer.{bid}."
    per_layer = [("attention.q_proj", T.V_ENC_ATTN_Q), ("attention.k_proj", T.V_ENC_ATTN_K),
                 ("attention.v_proj", T.V_ENC_ATTN_V), ("attention.projection_layer", T.V_ENC_ATTN_O),
                 ("attention.q_norm", T.V_ENC_ATTN_Q_NORM), ("attention.k_norm", T.V_ENC_ATTN_K_NORM),
                 ("layernorm_before", T.V_ENC_INPUT_NORM), ("layernorm_after", T.V_ENC_POST_ATTN_NORM),
                 ("mlp.fc1", T.V_ENC_FFN_UP), ("mlp.fc2", T.V_ENC_FFN_DOWN)]
    rules = [("embeddings.cls_token", tn(T.V_ENC_EMBD_CLS, None)),
             ("embeddings.position_embeddings", tn(T.V_ENC_EMBD_POS)),
             (L + "lambda_1", tn(T.V_LAYER_SCALE_1)),
             (L + "lambda_2", tn(T.V_LAYER_SCALE_2))]
    for s in ("weight", "bias"):
        rules += [(f"embeddings.patch_embeddings.projection.{s}", tn(T.V_ENC_EMBD_PATCH, s)),
                  (f"layernorm.{s}", tn(T.V_POST_NORM, s))]
        rules += [(f"{L}{hf}.{s}", tn(t, s)) for hf, t in per_layer]
        rules += [(f"multi_modal_projector.{hf}.{s}", tn(T.V_MMPROJ_MLP, s, i))
                  for hf, i in (("layer_norm", 0), ("linear_1", 1), ("linear_2", 3))]
    return rules


def _flat(out: dict) -> dict:
    # HF keeps the class token (1, 1, d) and the position table (1, n + 1, d) with a batch axis
    for k in (tn(T.V_ENC_EMBD_CLS, None), tn(T.V_ENC_EMBD_POS)):
        if k in out:
            out[k] = out[k].reshape(out[k].shape[-2:] if k.endswith("weight") else out[k].shape[-1:])
    return out


def hf_to_gguf(state_dict, config) -> dict[str, np.ndarray]:
    """HF InternVLForConditionalGeneration / InternVLModel tensors -> gguf names (NumPy f32)."""
    cfg = config if isinstance(config, InternVLConfig) else config_from_hf(config)
    return convert_state(state_dict, ("model.vision_tower.", "vision_tower.", "model.", ""), _rules(),
                         weight_shapes(cfg), "internvl", fix=_flat)


def image_config(mmproj):
    """The file's ``InternVLImageConfig``: its carried processor settings (``SETTINGS``; a key the
    file lacks reads as HF's default), tiles of the tower's size."""
    from ..preprocess.internvl import InternVLImageConfig
    c = mmproj.vision.cfg
    d = settings.read(ARCH, mmproj.config.file, c)
    return InternVLImageConfig(
        tile_size=c.image_size, min_patches=d["min_patches"], max_patches=d["max_patches"], resample=d["resample"],
        mean=d["image_mean"] if d["do_normalize"] else (0.0,) * 3,
        std=d["image_std"] if d["do_normalize"] else (1.0,) * 3,
        rescale_factor=d["rescale_factor"] if d["do_rescale"] else 1.0)


def tiles(source, mmproj, text_info=None, max_seconds=None) -> np.ndarray:
    """An image as InternVLProcessor cuts it (tiles row by row, then the thumbnail), with the
    file's settings (``image_config``)."""
    from ..preprocess.internvl import internvl_images
    return internvl_images(source, image_config(mmproj))


def _not_tile(v, ck) -> bool:
    # vision_config.image_size is a pair in HF's config.json ([448, 448]), size.height / width one int
    want = settings.lookup(ck.get("config"), "vision_config.image_size")
    want = 448 if want is settings.MISSING else want
    return v not in (list(want) if isinstance(want, (list, tuple)) else [want])


def _no_tiling(v, ck) -> bool:
    return v is False and settings.lookup(ck.get("processor"), "max_patches") in (0, 1)


_P, _V = "graphdsl.internvl.", Keys.ClipVision
SETTINGS = (
    *settings.vit_config(), settings.decoder(),
    settings.carried("config", "text_config.hidden_size", _V.PROJECTION_DIM),
    settings.carried("config", "downsample_ratio", _V.Projector.SCALE_FACTOR),
    settings.carried("config", "projector_hidden_act", KEY_MM_ACT),
    settings.carried("config", "vision_config.norm_type", KEY_NORM),
    settings.carried("config", "vision_config.use_qk_norm", "tensor " + tn(T.V_ENC_ATTN_Q_NORM, "weight", 0)),
    settings.carried("config", "vision_config.attention_bias", "tensor " + tn(T.V_ENC_ATTN_Q, "bias", 0)),
    settings.carried("config", "vision_config.use_mean_pooling", "tensor " + tn(T.V_POST_NORM)),
    settings.unless("config", "vision_config.use_absolute_position_embeddings", True,
                    "InternViT's learned position table is part of every InternVL checkpoint"),
    settings.unless("config", "vision_feature_layer", -1, "llama.cpp's internvl graph and graphdsl's read the last "
                    "layer"),
    settings.unless("config", "vision_feature_select_strategy", "default", "HF's 'full' keeps the class token, "
                    "whose features its own pixel shuffle cannot reshape"),
    settings.irrelevant("config", "vision_config.use_mask_token", "masked image modelling (bool_masked_pos), "
                        "which InternVL's forward never passes"),
    settings.irrelevant("config", "vision_config.layer_scale_init_value", "the initial ls1 / ls2; a checkpoint "
                        "stores their values"),
    settings.irrelevant("config", "vision_config.projection_dropout", "dropout: training only"),
    settings.irrelevant("config", "image_seq_length", "the processor's count of <IMG_CONTEXT> tokens per tile; "
                        "the rows per tile follow from the tower (n_patches / scale_factor^2)"),
    settings.unless("processor", "do_convert_rgb", True, "graphdsl always converts images to RGB"),
    settings.irrelevant("processor", "crop_to_patches", "InternVLProcessor calls the image processor with "
                        "crop_to_patches=True (its images_kwargs default) whatever the saved value says"),
    settings.Setting("processor", "do_resize", refuse=_no_tiling, default=True,
                     reason="without tiles (max_patches 1) HF skips the resize and the tower gets the image's "
                            "own size, which it does not take"),
    settings.Setting("processor", "size.height", refuse=_not_tile,
                     reason="tiles of another size than the tower's need interpolated positions"),
    settings.Setting("processor", "size.width", refuse=_not_tile,
                     reason="tiles of another size than the tower's need interpolated positions"),
    settings.carried("processor", "min_patches", _V.PREPROC_MIN_TILES, 1),
    settings.carried("processor", "max_patches", _V.PREPROC_MAX_TILES, 12),
    settings.carried("processor", "resample", _P + "resample", 3, to_gguf=int),  # PIL BICUBIC
    settings.carried("processor", "do_rescale", _P + "do_rescale", True),
    settings.carried("processor", "rescale_factor", _P + "rescale_factor", 1 / 255),
    settings.carried("processor", "do_normalize", _P + "do_normalize", True),
    # GotOcr2's class defaults are OpenAI CLIP's; InternVL's checkpoints write ImageNet's
    settings.carried("processor", "image_mean", _V.IMAGE_MEAN, list(OPENAI_CLIP_MEAN)),
    settings.carried("processor", "image_std", _V.IMAGE_STD, list(OPENAI_CLIP_STD)),
)


ARCH = register(Arch(
    "internvl", "image", InternVLVision, InternVLConfig, config_from_hf, config_from_gguf, config_to_gguf,
    hf_to_gguf, projectors=("internvl",), hf_model_types=("internvl",),
    image=ImagePreprocess("siglip", OPENAI_CLIP_MEAN, OPENAI_CLIP_STD,
                          defaults={"image_size": 384, "patch_size": 16}),  # GotOcr2's class default: 384
    prepare=tiles, settings=SETTINGS,
    examples=(InternVLConfig(image_size=32, patch_size=4, n_embd=32, n_ff=64, n_head=4, n_layer=2, scale_factor=2,
                             n_mm_embd=48, norm="rms", qk_norm=True, post_ln=True),)))
