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

from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import Keys

from .. import blocks, ops
from ..gguf_io import KEY_FEATURE_LAYER, KEY_MM_ACT, KEY_SELECT
from ..graph import Graph, Tensor
from ..inp_embd import build_inp_embd
from ..preprocess.image import OPENAI_CLIP_MEAN as CLIP_MEAN, OPENAI_CLIP_STD as CLIP_STD
from .common import Block, VitHparams, graph_of, image_rows, weight_shapes_of
from .gguf_keys import T, gguf_vision, tn, vit_keys
from .hf import VISION_PREFIXES, convert_state, hf_dict, hf_vit_hparams, hf_vit_rules, sub
from . import settings
from .registry import Arch, ImagePreprocess, register

# LLaVA-1.6's row-end embedding (clip-impl.h TN_IMAGE_NEWLINE; older files: model.image_newline): a file
# holding it is models.llava_next's, whose views read as one LLaVA-1.5 image would be silently wrong
IMAGE_NEWLINE = "v.image_newline"


@dataclass(frozen=True)
class ClipConfig(VitHparams):
    """CLIP ViT hyperparameters (``VitHparams``) and the projector's."""

    feature_layer: int | tuple[int, ...] = -2
    select: str = "default"  # "default": drop the class token; "full": keep it
    projector: str | None = "mlp"  # "mlp" (LLaVA) or None (encoder features only)
    n_mm_embd: int = 4096
    mm_act: str = "gelu_erf"
    mm_bias: bool = True

    @property
    def layers(self) -> tuple[int, ...]:
        """feature_layer as non-negative indices into hidden_states."""
        fl = (self.feature_layer,) if isinstance(self.feature_layer, int) else tuple(self.feature_layer)
        if any(not -(self.n_layer + 1) <= f <= self.n_layer for f in fl):
            raise ValueError(f"[clip] feature_layer {self.feature_layer} out of range for {self.n_layer} layers")
        return tuple(f % (self.n_layer + 1) for f in fl)

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
    kw = hf_vit_hparams(v, eps=1e-5, act="quick_gelu", patch_size=32)
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
    m, v, kw = gguf_vision(src, ("mlp", "none"), "CLIP/LLaVA")
    if tn(T.V_ENC_EMBD_CLS, None) not in m.shapes:
        raise m.error("a CLIP tower needs v.class_embd (a tower without it is SigLIP-like: see models.siglip)")
    proj = v.projector_type == "mlp"
    mm = next((n for n in (tn(T.V_MMPROJ, "weight", 2), tn(T.V_MMPROJ, "weight", 0)) if n in m.shapes), None)
    if proj and mm is None:
        raise m.error("projector 'mlp' without mm.0.weight")
    return ClipConfig(**kw, feature_layer=tuple(v.feature_layer) or (v.n_layer,), select=v.select,
                      projector="mlp" if proj else None, n_mm_embd=m.shapes[mm][0] if proj else 4096,
                      mm_act=v.projector_act, mm_bias=tn(T.V_MMPROJ, "bias", 0) in m.shapes or not proj)


def config_to_gguf(cfg: ClipConfig, image_mean=CLIP_MEAN, image_std=CLIP_STD) -> list[tuple[str, object]]:
    """The metadata of a file holding ``cfg``; ``config_from_gguf`` reads it back (with the
    tensors, which give the projector's width and biases). The file stores the blocks up to the
    deepest feature layer (``hf_to_gguf`` keeps only those), and block_count says so."""
    V = Keys.ClipVision
    layers = cfg.layers
    if list(layers) != sorted(set(layers)) or max(layers) == 0:
        # llama.cpp concatenates the feature layers in ascending order, each once, and needs a block
        raise ValueError(f"[clip.config_to_gguf] feature layers {layers} cannot be written as llama.cpp reads "
                         f"them: they must be distinct, ascending and not only the embeddings (0)")
    kv = [(Keys.Clip.PROJECTOR_TYPE, cfg.projector or "none"), *vit_keys(cfg, image_mean, image_std, max(layers)),
          (KEY_FEATURE_LAYER, np.array(cfg.layers, np.int32)), (KEY_SELECT, cfg.select),
          (V.PROJECTION_DIM, int(cfg.n_out)), (KEY_MM_ACT, cfg.mm_act)]
    return kv


def _rules():
    rules = [*hf_vit_rules(), ("embeddings.class_embedding", tn(T.V_ENC_EMBD_CLS, None))]
    rules += [(f"pre_layrnorm.{s}", tn(T.V_PRE_NORM, s)) for s in ("weight", "bias")]
    for hf, bid in [("multi_modal_projector.linear_1", 0), ("multi_modal_projector.linear_2", 2)]:
        rules += [(f"{hf}.{s}", tn(T.V_MMPROJ, s, bid)) for s in ("weight", "bias")]
    return rules


def hf_to_gguf(state_dict, config) -> dict[str, np.ndarray]:
    """HF CLIPVisionModel / CLIPModel / LlavaForConditionalGeneration tensors -> gguf names (NumPy f32).

    Returns exactly the tensors the graph of ``config`` uses (a ClipConfig or an HF config).
    """
    cfg = config if isinstance(config, ClipConfig) else config_from_hf(config)
    return convert_state(state_dict, VISION_PREFIXES, _rules(), weight_shapes(cfg), "clip")


_CONTRASTIVE = "CLIPModel's contrastive head, which graphdsl's output (the tower's hidden states) does not apply"
SETTINGS = (
    *settings.vit_config(), settings.decoder(),
    settings.irrelevant("config", "projection_dim", _CONTRASTIVE),
    settings.irrelevant("config", "vision_config.projection_dim", _CONTRASTIVE),
    settings.irrelevant("config", "logit_scale_init_value", _CONTRASTIVE),
    settings.irrelevant("config", "vision_config.vocab_size", "not used by the vision tower"),
    settings.irrelevant("config", "image_seq_length", "how many <image> tokens the processor writes in the prompt"),
    settings.carried("config", "text_config.hidden_size", Keys.ClipVision.PROJECTION_DIM),
    settings.carried("config", "vision_feature_layer", KEY_FEATURE_LAYER),
    settings.carried("config", "vision_feature_select_strategy", KEY_SELECT),
    settings.carried("config", "projector_hidden_act", KEY_MM_ACT),
    settings.carried("config", "multimodal_projector_bias", "tensor mm.0.bias"),
    *settings.image_processor("clip", CLIP_MEAN, CLIP_STD, 3, pad=False),
)


ARCH = register(Arch(
    "clip", "image", ClipVision, ClipConfig, config_from_hf, config_from_gguf, config_to_gguf, hf_to_gguf,
    projectors=("mlp", "none"), hf_model_types=("clip", "clip_vision_model", "llava"),
    claims=lambda m: tn(T.V_ENC_EMBD_CLS, None) in m.shapes and not {IMAGE_NEWLINE, "model.image_newline"} & set(m.shapes),
    image=ImagePreprocess("clip", CLIP_MEAN, CLIP_STD), settings=SETTINGS,
    examples=(ClipConfig(image_size=32, patch_size=8, n_embd=32, n_ff=64, n_head=4, n_layer=2, feature_layer=(2,),
                         select="default", n_mm_embd=48, mm_act="gelu_erf"),
              ClipConfig(image_size=32, patch_size=8, n_embd=32, n_ff=64, n_head=4, n_layer=3, feature_layer=(1, 3),
                         select="full", projector=None, act="gelu"))))
