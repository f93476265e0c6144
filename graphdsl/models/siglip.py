"""SigLIP ViT vision encoder + Gemma 3's projector (llama.cpp mmproj names, projector "gemma3").

    x = patch_embd(pixels) + patch_embd.bias + position_embd       (build_inp_embd "image", no class token)
    x = blk.0 .. blk.{n-1}(x)                                       (pre-LN layers, tanh-GELU)
    x = LayerNorm(v.post_ln)(x)                                     (HF last_hidden_state)
    x = avg_pool_kxk(x on its (gh, gw) grid)                        (k = patches per side / tokens per side)
    x = RMSNorm(x) * mm.soft_emb_norm.weight                        (HF: * (1 + w); the file stores 1 + w)
    y = x @ mm.input_projection.weight                              ((d_vision, d_text), HF's layout)
      = mul_mat(x, mm.input_projection.weight)                      ((d_text, d_vision), mm_proj_transposed=False)

mm.input_projection.weight: HF and llama.cpp store it (d_vision, d_text), the transpose of every
other linear weight, and multiply through a transpose. ggml cannot transpose quantized blocks
(llama.cpp issue #13025), so in that layout the matrix must be a float type (f16 in a quantized
file, as both converters write it). Stored (d_text, d_vision) (``mm_proj_transposed=False``) it
is an ordinary ``mul_mat`` weight of any type, quantized included.

Gemma 3 was picked over Idefics3's pixel shuffle: its HF projector is a self-contained module
(``Gemma3MultiModalProjector``) that tests instantiate from a config. As in llama.cpp's
converter, ``hf_to_gguf`` stores the RMSNorm weight as ``1 + w`` so the graph multiplies by it
directly.

Example:
    >>> cfg = SiglipConfig(image_size=32, patch_size=4, n_embd=64, n_ff=128, n_head=4, n_layer=2,
    ...                    mm_tokens_per_image=16, n_mm_embd=96)
    >>> build(cfg).outputs["embd"].shape      # 8x8 patches pooled 2x2 -> 16 tokens
    (16, 96)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import Keys

from .. import blocks, ops
from .. import dtypes as dt
from ..graph import Graph, Tensor
from ..inp_embd import shape_guard
from .common import Block, VitHparams, graph_of, image_rows, post_ln_tower, projector_of, weight_shapes_of
from .gguf_keys import T, gguf_vision, tn, vit_keys
from .hf import VISION_PREFIXES, convert_state, hf_dict, hf_vit_hparams, hf_vit_rules, sub
from . import settings
from .registry import Arch, ImagePreprocess, register


@dataclass(frozen=True)
class SiglipConfig(VitHparams):
    """SigLIP hyperparameters (``VitHparams``) and the projector's."""

    projector: str | None = "gemma3"  # "gemma3" or None (post-LN features only)
    mm_tokens_per_image: int = 256
    n_mm_embd: int = 2560
    # True: mm.input_projection.weight is (n_embd, n_mm_embd) as in HF / llama.cpp (float types
    # only; f16 when wtype is quantized); False: (n_mm_embd, n_embd), any type
    mm_proj_transposed: bool = True

    @property
    def pool(self) -> int:
        """Side of the average-pooling window: (image_size / patch) / sqrt(tokens per image)."""
        return (self.image_size // self.patch_size) // math.isqrt(self.mm_tokens_per_image)

    @property
    def n_out(self) -> int:
        return self.n_mm_embd if self.projector else self.n_embd


class SiglipVision(Block):
    """SigLIP tower + Gemma 3 projector: pixels f32 ([B,] 3, H, W) -> ([B,] n_tokens, n_out)."""

    kind = "image"

    # an input (shape, dtype) whose graph declares every weight
    example = property(lambda self: ((1, 3, self.cfg.image_size, self.cfg.image_size), "f32"))

    def n_tokens(self, h: int, w: int) -> int:
        c = self.cfg
        gh, gw = h // c.patch_size, w // c.patch_size
        return (gh // c.pool) * (gw // c.pool) if c.projector else gh * gw

    def rows(self, pixels) -> np.ndarray:
        """One image (3, H, W) as a batch of one."""
        return image_rows(pixels, "siglip")

    def _build(self, pixels: Tensor) -> Tensor:
        c, g = self.cfg, pixels.graph
        x = post_ln_tower(pixels, c, "image", "v", patch_size=c.patch_size, image_size=c.image_size, patch_bias=True)
        if not projector_of(c, "gemma3", "siglip"):
            return x
        *b, _, d = x.shape
        p = c.patch_size
        gh, gw = pixels.shape[-2] // p, pixels.shape[-1] // p
        # the reshape to the (gh, gw) grid is fixed now: another grid with as many patches would pool
        # the wrong neighbours, so a compiled graph called at it raises instead
        shape_guard(g, "mm.grid_guard", pixels, "[siglip] the Gemma 3 pooling grid",
                    same=lambda s: (s[-2] // p, s[-1] // p))
        r = len(b)
        with g.scope("mm"):
            x = ops.permute(x, (*range(r), r + 1, r), name="grid.t")  # ([B,] d, n)
            x = ops.reshape(x, (*b, d, gh, gw), name="grid")
            x = ops.pool_2d(x, "avg", c.pool, name="pool")  # ([B,] d, gh/k, gw/k)
            x = ops.reshape(x, (*b, d, -1), name="pool.flat")
            x = ops.permute(x, (*range(r), r + 1, r), name="pool.t")  # ([B,] n', d)
            x = blocks.norm(x, "soft_emb_norm", eps=c.eps, kind="rms", bias=False)
            x = _input_projection(x, c)
        return x


def _input_projection(x: Tensor, c: SiglipConfig) -> Tensor:
    """x @ W for W (n_embd, n_mm) in HF's layout, or mul_mat(x, W) for W (n_mm, n_embd)."""
    g = x.graph
    if not c.mm_proj_transposed:
        return blocks.linear(x, "input_projection", c.n_mm_embd, bias=False, wtype=c.wtype)
    default = "f16" if dt.dtype(c.wtype).is_quantized else c.wtype
    w = g.weight("input_projection.weight", (c.n_embd, c.n_mm_embd), default)
    if w.dtype.is_quantized:
        raise ValueError(f"[siglip] '{w.name}' is {w.dtype.name} {list(w.shape)} in HF's (d_vision, d_text) "
                         "layout, which needs a transpose that quantized blocks cannot take: store it "
                         "(d_text, d_vision) and set mm_proj_transposed=False, or store it as f16/f32")
    return ops.mul_mat(x, ops.transpose(w, name="input_projection.t"), name="input_projection")


def build(cfg: SiglipConfig, image_hw: tuple[int, int] | None = None, n_images: int = 0) -> Graph:
    """A graph with input ``pixels`` ((3, H, W), or (n_images, 3, H, W)) and output ``embd``."""
    h, w = image_hw or (cfg.image_size, cfg.image_size)
    return graph_of(SiglipVision(cfg), (n_images, 3, h, w) if n_images else (3, h, w), "siglip")


def weight_shapes(cfg: SiglipConfig) -> dict[str, tuple[int, ...]]:
    return weight_shapes_of(SiglipVision(cfg))


def config_from_hf(hf: Any) -> SiglipConfig:
    """SiglipConfig from an HF SiglipVisionConfig (encoder only) or Gemma3Config (with projector)."""
    d = hf_dict(hf, "siglip")  # a two-tower SiglipConfig has text_config + vision_config too: the tower alone
    gemma = "vision_config" in d and (d.get("model_type") == "gemma3" or "mm_tokens_per_image" in d)
    v = sub(d, "vision_config") if "vision_config" in d else d
    kw = hf_vit_hparams(v, eps=1e-6, act="gelu_pytorch_tanh", patch_size=16)
    if not gemma:
        return SiglipConfig(**kw, projector=None)
    return SiglipConfig(**kw, projector="gemma3", mm_tokens_per_image=d.get("mm_tokens_per_image", 256),
                        n_mm_embd=sub(d, "text_config").get("hidden_size", 2560))


def config_from_gguf(src: Any) -> SiglipConfig:
    """SiglipConfig from an mmproj GGUF (a path, ``load_mmproj``'s result or its ``MmprojConfig``).

    Projector "gemma3" (pooling n_merge x n_merge, RMSNorm, input projection) or "none" (the
    post-LN tower). The input projection's layout is read from its shape and type: (n_embd, n_mm)
    float is HF's / llama.cpp's (preferred when square), (n_mm, n_embd) is the mul_mat layout
    (the only one a quantized matrix can have). Every tensor's stored type becomes ``wtypes``.
    """
    m, v, kw = gguf_vision(src, ("gemma3", "none"), "SigLIP")
    if v.projector_type == "none":
        return SiglipConfig(**kw, projector=None)
    side = v.image_size // v.patch_size // max(v.n_merge, 1)
    name = tn(T.V_MM_INP_PROJ)
    shape, dtype = m.shapes[name], m.dtypes[name]
    if len(shape) == 2 and shape[0] == v.n_embd and not dt.dtype(dtype).is_quantized:
        transposed, n_mm = True, shape[1]
    elif len(shape) == 2 and shape[1] == v.n_embd:
        transposed, n_mm = False, shape[0]
    else:
        raise m.error(f"{name} {dtype} {list(shape)} fits neither ({v.n_embd}, d_text) (float types) nor "
                      f"(d_text, {v.n_embd})")
    return SiglipConfig(**kw, projector="gemma3", mm_tokens_per_image=side * side, n_mm_embd=n_mm,
                        mm_proj_transposed=transposed)


def config_to_gguf(cfg: SiglipConfig, image_mean=(0.5,) * 3, image_std=(0.5,) * 3) -> list[tuple[str, object]]:
    """The metadata of a file holding ``cfg`` (llama.cpp's: n_merge as the projector's scale
    factor); ``config_from_gguf`` reads it back with the tensors (projection width and layout)."""
    V = Keys.ClipVision
    kv = [(Keys.Clip.PROJECTOR_TYPE, cfg.projector or "none"), *vit_keys(cfg, image_mean, image_std),
          (V.PROJECTION_DIM, int(cfg.n_out))]
    if cfg.projector:
        kv.append((V.Projector.SCALE_FACTOR, cfg.pool))
    return kv


def _rules():
    return [*hf_vit_rules(), ("multi_modal_projector.mm_input_projection_weight", tn(T.V_MM_INP_PROJ)),
            ("multi_modal_projector.mm_soft_emb_norm.weight", tn(T.V_MM_SOFT_EMB_NORM))]


def hf_to_gguf(state_dict, config) -> dict[str, np.ndarray]:
    """HF SiglipVisionModel / Gemma3ForConditionalGeneration tensors -> gguf names (NumPy f32).

    The Gemma 3 soft-embedding RMSNorm weight is stored as 1 + w (as llama.cpp's converter does);
    the input projection keeps HF's layout unless ``mm_proj_transposed`` is False. Returns exactly the tensors the graph of ``config`` uses.
    """
    cfg = config if isinstance(config, SiglipConfig) else config_from_hf(config)
    def fix(out):
        key = tn(T.V_MM_SOFT_EMB_NORM)
        if key in out:
            out[key] = out[key] + np.float32(1.0)
        key = tn(T.V_MM_INP_PROJ)
        if key in out and not cfg.mm_proj_transposed:
            out[key] = np.ascontiguousarray(out[key].T)
        return out
    return convert_state(state_dict, VISION_PREFIXES, _rules(), weight_shapes(cfg), "siglip", fix)


_PAN = "used only with do_pan_and_scan, which is refused"
SETTINGS = (
    *settings.vit_config(), settings.decoder(),
    settings.irrelevant("config", "vision_config.vision_use_head", "SigLIP's attention-pooling head (pooler_output): "
                        "graphdsl's output is the tower's last hidden state, which Gemma 3 reads too"),
    settings.carried("config", "text_config.hidden_size", Keys.ClipVision.PROJECTION_DIM),
    settings.carried("config", "mm_tokens_per_image", Keys.ClipVision.Projector.SCALE_FACTOR),
    settings.unless("processor", "do_pan_and_scan", False, "graphdsl has no pan-and-scan crops"),
    *(settings.irrelevant("processor", k, _PAN) for k in (
        "pan_and_scan_min_crop_size", "pan_and_scan_max_num_crops", "pan_and_scan_min_ratio_to_activate")),
    # Gemma 3's processor resizes bilinearly, SigLIP's bicubically
    *settings.image_processor("siglip", (0.5,) * 3, (0.5,) * 3, lambda c: 2 if c.projector == "gemma3" else 3),
)


ARCH = register(Arch(
    "siglip", "image", SiglipVision, SiglipConfig, config_from_hf, config_from_gguf, config_to_gguf, hf_to_gguf,
    projectors=("gemma3", "none"), hf_model_types=("siglip", "siglip_vision_model", "gemma3"),
    claims=lambda m: tn(T.V_ENC_EMBD_CLS, None) not in m.shapes,  # "none": a tower without a class token
    image=ImagePreprocess("siglip"), settings=SETTINGS,
    examples=(SiglipConfig(image_size=32, patch_size=4, n_embd=32, n_ff=64, n_head=4, n_layer=2,
                           mm_tokens_per_image=16, n_mm_embd=48),
              SiglipConfig(image_size=32, patch_size=4, n_embd=32, n_ff=64, n_head=4, n_layer=2, projector=None))))
