"""CLIP ViT vision encoder + LLaVA's MLP projector (llama.cpp mmproj names).

    x  = patch_embd(pixels); x = [class_embd; x] + position_embd     (build_inp_embd "image")
    x  = LayerNorm(v.pre_ln)(x)
    hs = [x, blk.0(x), blk.1(...), ...]                              (pre-LN layers, quick-GELU)
    f  = hs[feature_layer]  (a list of layers: concatenated on the feature axis)
    f  = f[1:]             (select "default": drop the class token, as LLaVA)
    y  = mm.2(GELU(mm.0(f)))                                         (LLaVA projector)

``feature_layer`` indexes HF's ``hidden_states`` (length n_layer + 1), negative values
included: -1 is the last layer, -2 (LLaVA's default) the one before; only the layers up to the
deepest selected one are built. ``v.post_ln`` is not used (HF applies it to the pooled class
token only; llama.cpp's LLaVA files omit it).

Example:
    >>> cfg = ClipConfig(image_size=32, patch_size=8, n_embd=64, n_ff=128, n_head=4, n_layer=2, n_mm_embd=96)
    >>> g = build(cfg)
    >>> g.outputs["embd"].shape          # 16 patches, class token dropped, projected to 96
    (16, 96)
    >>> run = graphdsl.compile(g, weights=hf_to_gguf(hf_state_dict, cfg))        # doctest: +SKIP
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gguf import Keys

from .. import blocks, ops
from ..gguf_io import KEY_FEATURE_LAYER, KEY_MM_ACT, KEY_SELECT
from ..graph import Graph, Tensor
from ..inp_embd import build_inp_embd
from .common import (
    Block,
    T,
    VISION_PREFIXES,
    hf_dict,
    convert_state,
    graph_of,
    image_rows,
    mmproj_config,
    sub,
    tn,
    vit_keys,
    weight_shapes_of,
)
from .registry import Arch, ImagePreprocess, register

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ClipConfig:
    """CLIP ViT hyperparameters (defaults: ViT-L/14 @ 336 of LLaVA 1.5) and the projector's."""

    image_size: int = 336
    patch_size: int = 14
    n_embd: int = 1024
    n_ff: int = 4096
    n_head: int = 16
    n_layer: int = 24
    eps: float = 1e-5
    act: str = "gelu_quick"
    feature_layer: int | tuple[int, ...] = -2
    select: str = "default"  # "default": drop the class token; "full": keep it
    projector: str | None = "mlp"  # "mlp" (LLaVA) or None (encoder features only)
    n_mm_embd: int = 4096
    mm_act: str = "gelu_erf"
    mm_bias: bool = True
    attn: str = "flash"  # "flash" or "softmax", see blocks.attention
    wtype: str = "f32"  # storage of the big matrices: "f32", "f16", "q8_0", ...
    # per-tensor storage by gguf name, overriding wtype and the f32 default (a file's own types)
    wtypes: Mapping[str, str] = field(default_factory=dict, hash=False, repr=False)

    @property
    def layers(self) -> tuple[int, ...]:
        """feature_layer as non-negative indices into hidden_states."""
        fl = (self.feature_layer,) if isinstance(self.feature_layer, int) else tuple(self.feature_layer)
        if any(not -(self.n_layer + 1) <= f <= self.n_layer for f in fl):
            raise ValueError(f"[clip] feature_layer {self.feature_layer} out of range for {self.n_layer} layers")
        return tuple(f % (self.n_layer + 1) for f in fl)

    @property
    def vit(self) -> blocks.VitParams:
        return blocks.VitParams(self.n_embd, self.n_head, self.n_ff, self.eps, self.act,
                                attn=self.attn, wtype=self.wtype)

    @property
    def n_out(self) -> int:
        return self.n_mm_embd if self.projector else self.n_embd * len(self.layers)


class ClipVision(Block):
    """CLIP vision tower + LLaVA projector as a callable block.

    Call on pixels f32 (3, H, W) or (B, 3, H, W) -> ([B,] n_tokens, n_out). H, W may differ from
    the trained size (position embeddings are resized bicubically, as HF's
    ``interpolate_pos_encoding=True``).
    """

    kind = "image"

    # an input (shape, dtype) whose graph declares every weight
    example = property(lambda self: ((1, 3, self.cfg.image_size, self.cfg.image_size), "f32"))

    def n_tokens(self, h: int, w: int) -> int:
        c = self.cfg
        return (h // c.patch_size) * (w // c.patch_size) + (c.select == "full")

    def rows(self, pixels) -> np.ndarray:
        """One image (3, H, W) as a batch of one."""
        return image_rows(pixels, "clip")

    def _build(self, pixels: Tensor) -> Tensor:
        c, g = self.cfg, pixels.graph
        with g.scope("v"):
            x = build_inp_embd("image", pixels, n_embd=c.n_embd, patch_size=c.patch_size,
                               image_size=c.image_size, class_embd=True)
            x = blocks.norm(x, "pre_ln", eps=c.eps)
            hs = blocks.vit(x, c.vit, n_layer=max(c.layers))
        x = ops.concat([hs[i] for i in c.layers], axis=-1, name="v.features")
        if c.select == "default":
            x = ops.view(x, -2, 1, x.shape[-2], name="v.features_no_cls")
        elif c.select != "full":
            raise ValueError(f"[clip] select must be 'default' or 'full', got {c.select!r}")
        if c.projector is None:
            return x
        if c.projector != "mlp":
            raise ValueError(f"[clip] unknown projector {c.projector!r}; this file has 'mlp' (LLaVA)")
        with g.scope("mm"):
            x = blocks.linear(x, "0", c.n_mm_embd, bias=c.mm_bias, wtype=c.wtype)
            x = blocks.activation(x, c.mm_act, name="act")
            x = blocks.linear(x, "2", c.n_mm_embd, bias=c.mm_bias, wtype=c.wtype)
        return x


def build(cfg: ClipConfig, image_hw: tuple[int, int] | None = None, n_images: int = 0) -> Graph:
    """A graph with input ``pixels`` ((3, H, W), or (n_images, 3, H, W) when n_images > 0) and output ``embd``."""
    h, w = image_hw or (cfg.image_size, cfg.image_size)
    return graph_of(ClipVision(cfg), (n_images, 3, h, w) if n_images else (3, h, w), "clip")


def weight_shapes(cfg: ClipConfig) -> dict[str, tuple[int, ...]]:
    """Every weight the graph of this config uses: gguf name -> shape."""
    return weight_shapes_of(ClipVision(cfg))


_LLAVA_KEYS = ("vision_feature_layer", "vision_feature_select_strategy", "projector_hidden_act", "image_token_index")


def config_from_hf(hf: Any) -> ClipConfig:
    """ClipConfig from an HF config (dict or object): CLIPVisionConfig, CLIPConfig or LlavaConfig.

    A bare vision config or a two-tower CLIPConfig (text_config + vision_config) gives the vision
    encoder alone with feature_layer -1 (last_hidden_state) and the class token kept; a LLaVA
    config (model_type "llava" or LLaVA's keys) gives its feature layer(s), select strategy and projector.
    """
    d = hf_dict(hf, "clip")
    llava = "vision_config" in d and (d.get("model_type") == "llava" or any(k in d for k in _LLAVA_KEYS))
    v = sub(d, "vision_config") if "vision_config" in d else d
    kw = dict(image_size=v.get("image_size", 224), patch_size=v.get("patch_size", 32),
              n_embd=v.get("hidden_size", 768), n_ff=v.get("intermediate_size", 3072),
              n_head=v.get("num_attention_heads", 12), n_layer=v.get("num_hidden_layers", 12),
              eps=v.get("layer_norm_eps", 1e-5), act=blocks.act_of(v.get("hidden_act", "quick_gelu")))
    if not llava:
        return ClipConfig(**kw, feature_layer=-1, select="full", projector=None)
    fl = d.get("vision_feature_layer", -2)
    return ClipConfig(**kw, feature_layer=fl if isinstance(fl, int) else tuple(fl),
                      select=d.get("vision_feature_select_strategy", "default"), projector="mlp",
                      n_mm_embd=sub(d, "text_config").get("hidden_size", 4096),
                      mm_act=blocks.act_of(d.get("projector_hidden_act", "gelu")),
                      mm_bias=d.get("multimodal_projector_bias", True))


def config_from_gguf(src: Any) -> ClipConfig:
    """ClipConfig from an mmproj GGUF (a path, ``load_mmproj``'s result or its ``MmprojConfig``).

    Projector "mlp" (LLaVA: mm.0 / mm.2) or "none" (the tower alone); feature layers, select
    strategy and activations from the metadata, the projector's width from mm.2 (or mm.0), and
    every tensor's stored type as ``wtypes``.
    """
    m = mmproj_config(src)
    v = m.vision
    if v is None:
        raise m.error("no vision encoder (clip.has_vision_encoder is false)")
    if v.projector_type not in ("mlp", "none"):
        raise m.error(f"vision projector type {v.projector_type!r} is not a CLIP/LLaVA one ('mlp' or 'none')")
    if tn(T.V_ENC_EMBD_CLS, None) not in m.shapes:
        raise m.error("a CLIP tower needs v.class_embd (a tower without it is SigLIP-like: see models.siglip)")
    proj = v.projector_type == "mlp"
    mm = next((n for n in (tn(T.V_MMPROJ, "weight", 2), tn(T.V_MMPROJ, "weight", 0)) if n in m.shapes), None)
    if proj and mm is None:
        raise m.error("projector 'mlp' without mm.0.weight")
    q = m.dtypes.get(tn(T.V_ENC_ATTN_Q, "weight", 0), "f32")
    return ClipConfig(image_size=v.image_size, patch_size=v.patch_size, n_embd=v.n_embd, n_ff=v.n_ff,
                      n_head=v.n_head, n_layer=v.n_layer, eps=v.eps, act=v.act,
                      feature_layer=tuple(v.feature_layer) or (v.n_layer,), select=v.select,
                      projector="mlp" if proj else None, n_mm_embd=m.shapes[mm][0] if proj else 4096,
                      mm_act=v.projector_act, mm_bias=tn(T.V_MMPROJ, "bias", 0) in m.shapes or not proj,
                      wtype=q, wtypes=dict(m.dtypes))


def config_to_gguf(cfg: ClipConfig, image_mean=CLIP_MEAN, image_std=CLIP_STD) -> list[tuple[str, object]]:
    """The metadata of a file holding ``cfg``; ``config_from_gguf`` reads it back (with the
    tensors, which give the projector's width and biases). The file stores the blocks up to the
    deepest feature layer (``hf_to_gguf`` keeps only those), and block_count says so."""
    V = Keys.ClipVision
    kv = [(Keys.Clip.PROJECTOR_TYPE, cfg.projector or "none"), *vit_keys(cfg, image_mean, image_std, max(cfg.layers)),
          (KEY_FEATURE_LAYER, np.array(cfg.layers, np.int32)), (KEY_SELECT, cfg.select),
          (V.PROJECTION_DIM, int(cfg.n_out)), (KEY_MM_ACT, cfg.mm_act)]
    return kv


def _rules():
    L = "encoder.layers.{bid}."
    per_layer = [("self_attn.q_proj", T.V_ENC_ATTN_Q), ("self_attn.k_proj", T.V_ENC_ATTN_K),
                 ("self_attn.v_proj", T.V_ENC_ATTN_V), ("self_attn.out_proj", T.V_ENC_ATTN_O),
                 ("layer_norm1", T.V_ENC_INPUT_NORM), ("layer_norm2", T.V_ENC_POST_ATTN_NORM),
                 ("mlp.fc1", T.V_ENC_FFN_UP), ("mlp.fc2", T.V_ENC_FFN_DOWN)]
    rules = [("embeddings.class_embedding", tn(T.V_ENC_EMBD_CLS, None)),
             ("embeddings.patch_embedding.weight", tn(T.V_ENC_EMBD_PATCH)),
             ("embeddings.position_embedding.weight", tn(T.V_ENC_EMBD_POS))]
    for hf, t in [("pre_layrnorm", T.V_PRE_NORM), ("post_layernorm", T.V_POST_NORM)]:
        rules += [(f"{hf}.{s}", tn(t, s)) for s in ("weight", "bias")]
    for hf, t in per_layer:
        rules += [(f"{L}{hf}.{s}", tn(t, s)) for s in ("weight", "bias")]
    for hf, bid in [("multi_modal_projector.linear_1", 0), ("multi_modal_projector.linear_2", 2)]:
        rules += [(f"{hf}.{s}", tn(T.V_MMPROJ, s, bid)) for s in ("weight", "bias")]
    return rules


def hf_to_gguf(state_dict, config) -> dict[str, np.ndarray]:
    """HF CLIPVisionModel / CLIPModel / LlavaForConditionalGeneration tensors -> gguf names (NumPy f32).

    Returns exactly the tensors the graph of ``config`` uses (a ClipConfig or an HF config).
    """
    cfg = config if isinstance(config, ClipConfig) else config_from_hf(config)
    return convert_state(state_dict, VISION_PREFIXES, _rules(), weight_shapes(cfg), "clip")


ARCH = register(Arch(
    "clip", "image", ClipVision, ClipConfig, config_from_hf, config_from_gguf, config_to_gguf, hf_to_gguf,
    projectors=("mlp", "none"), hf_model_types=("clip", "clip_vision_model", "llava"),
    claims=lambda m: tn(T.V_ENC_EMBD_CLS, None) in m.shapes,  # "none": a tower with a class token
    image=ImagePreprocess("clip", CLIP_MEAN, CLIP_STD),
    examples=(ClipConfig(image_size=32, patch_size=8, n_embd=32, n_ff=64, n_head=4, n_layer=2, feature_layer=(2,),
                         select="default", n_mm_embd=48, mm_act="gelu_erf"),
              ClipConfig(image_size=32, patch_size=8, n_embd=32, n_ff=64, n_head=4, n_layer=3, feature_layer=(1, 3),
                         select="full", projector=None, act="gelu"))))
