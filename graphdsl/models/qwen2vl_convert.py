"""Qwen2-VL's and Qwen2.5-VL's files: the HF config fields and tensor renames they share
(HF's fused qkv and Conv3d kernel split as llama.cpp's converter does), the mmproj metadata, and
the HF settings the checkpoints' configs and processors hold (``models.settings``)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from gguf import Keys

from ..preprocess.image import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from . import settings
from .gguf_keys import T, gguf_vision, tn, vit_keys


def hf_vision_fields(v: dict) -> dict:
    """The Qwen2VLConfig fields Qwen2-VL and 2.5-VL read alike from an HF vision_config."""
    rope = v.get("rope_parameters") or {}
    return dict(patch_size=v.get("patch_size", 14), n_head=v.get("num_heads", 16), n_layer=v.get("depth", 32),
                merge=v.get("spatial_merge_size", 2), temporal_patch=v.get("temporal_patch_size", 2),
                rope_theta=float(rope.get("rope_theta", 10000.0)), eps=1e-6)


def gguf_kw(src: Any, projectors: tuple[str, ...], what: str):
    """(MmprojConfig, fields) of a Qwen-VL mmproj: the tower's, the merger's width (mm.2) and merge size."""
    m, v, kw = gguf_vision(src, projectors, what)
    out = m.shapes.get(tn(T.V_MMPROJ, "weight", 2))
    if out is None:
        raise m.error("no mm.2.weight (the merger's output projection)")
    return m, dict(kw, n_mm_embd=out[0], merge=v.n_merge or 2)


def config_to_gguf(cfg, image_mean=None, image_std=None) -> list[tuple[str, object]]:
    """The metadata of a Qwen2VLConfig (or Qwen2.5-VL's, which adds its window keys)."""
    V = Keys.ClipVision
    return [(Keys.Clip.PROJECTOR_TYPE, cfg.projector),
            *vit_keys(cfg, image_mean or OPENAI_CLIP_MEAN, image_std or OPENAI_CLIP_STD),
            (V.PROJECTION_DIM, cfg.n_mm_embd), (V.SPATIAL_MERGE_SIZE, cfg.merge)]


def hf_rules(mlp: Sequence[tuple[str, T]]) -> list[tuple[str, str]]:
    """HF ``visual.*`` names -> llama.cpp's (the gguf package's tensor map for qwen2vl)."""
    per_layer = [("norm1", T.V_ENC_INPUT_NORM), ("norm2", T.V_ENC_POST_ATTN_NORM), ("attn.proj", T.V_ENC_ATTN_O),
                 *mlp]
    rules = []
    for s in ("weight", "bias"):
        rules += [(f"blocks.{{bid}}.{hf}.{s}", tn(t, s)) for hf, t in per_layer]
        rules += [(f"merger.ln_q.{s}", tn(T.V_POST_NORM, s)), (f"merger.mlp.0.{s}", tn(T.V_MMPROJ, s, 0)),
                  (f"merger.mlp.2.{s}", tn(T.V_MMPROJ, s, 2))]
        rules += [(f"blocks.{{bid}}.attn.qkv.{s}", f"v.blk.{{bid}}.attn_qkv.{s}")]
    return rules + [("patch_embed.proj.weight", "v.patch_embd.conv3d")]


def split_qwen(out: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """llama.cpp's converter: HF's fused qkv -> attn_q / attn_k / attn_v, the Conv3d kernel
    (d, 3, 2, p, p) -> one 2-D kernel per frame."""
    out = dict(out)
    for name in [k for k in out if ".attn_qkv." in k]:
        a = out.pop(name)
        for part, chunk in zip(("attn_q", "attn_k", "attn_v"), np.split(a, 3, axis=0)):
            out[name.replace("attn_qkv", part)] = np.ascontiguousarray(chunk)
    k = out.pop("v.patch_embd.conv3d", None)
    if k is not None:
        if k.ndim != 5 or k.shape[2] != 2:
            raise ValueError(f"[qwen2vl.hf_to_gguf] patch_embed.proj.weight {k.shape} is not (d, 3, 2, p, p)")
        out[tn(T.V_ENC_EMBD_PATCH)] = np.ascontiguousarray(k[:, :, 0])
        out[tn(T.V_ENC_EMBD_PATCH) + ".1"] = np.ascontiguousarray(k[:, :, 1])
    return out


PREFIXES = ("model.visual.", "visual.")


def processor_settings(mean, std) -> tuple:
    """Qwen2VLImageProcessor's fields (Qwen2-VL and 2.5-VL): pixel bounds under llama.cpp's keys."""
    V, P = Keys.ClipVision, "graphdsl.qwen2vl."
    return (
        settings.carried("processor", "size.shortest_edge", V.IMAGE_MIN_PIXELS, 56 * 56),
        settings.carried("processor", "size.longest_edge", V.IMAGE_MAX_PIXELS, 28 * 28 * 1280),
        # older checkpoints' top-level keys, which HF reads over size's
        settings.carried("processor", "min_pixels", V.IMAGE_MIN_PIXELS, 56 * 56),
        settings.carried("processor", "max_pixels", V.IMAGE_MAX_PIXELS, 28 * 28 * 1280),
        settings.carried("processor", "resample", P + "resample", 3, to_gguf=int),
        settings.carried("processor", "do_rescale", P + "do_rescale", True),
        settings.carried("processor", "rescale_factor", P + "rescale_factor", 1 / 255),
        settings.carried("processor", "do_normalize", P + "do_normalize", True),
        settings.carried("processor", "image_mean", V.IMAGE_MEAN, list(mean)),
        settings.carried("processor", "image_std", V.IMAGE_STD, list(std)),
        settings.unless("processor", "do_resize", True, "graphdsl always smart-resizes (patch * merge multiples)"),
        settings.unless("processor", "do_convert_rgb", True, "graphdsl always converts images to RGB"),
        settings.Setting("processor", "patch_size", refuse=settings.other_than("vision_config.patch_size", 14),
                         reason="the patches are the tower's vision_config.patch_size"),
        settings.Setting("processor", "merge_size", refuse=settings.other_than("vision_config.spatial_merge_size", 2),
                         reason="the merger joins the tower's vision_config.spatial_merge_size"),
        settings.Setting("processor", "temporal_patch_size",
                         refuse=settings.other_than("vision_config.temporal_patch_size", 2),
                         reason="an image is repeated to the tower's vision_config.temporal_patch_size frames"),
    )


def vision_settings() -> tuple:
    """The vision_config fields Qwen2-VL and 2.5-VL share (``hf_vision_fields``)."""
    V = Keys.ClipVision
    return (
        settings.carried("config", "vision_config.depth", V.BLOCK_COUNT),
        settings.carried("config", "vision_config.num_heads", V.Attention.HEAD_COUNT),
        settings.carried("config", "vision_config.patch_size", V.PATCH_SIZE),
        settings.carried("config", "vision_config.spatial_merge_size", V.SPATIAL_MERGE_SIZE),
        settings.carried("config", "vision_config.hidden_act", "graphdsl.vision.act"),
        settings.unless("config", "vision_config.temporal_patch_size", 2, "graphdsl's patch embedding repeats an "
                        "image over 2 frames"),
        settings.unless("config", "vision_config.in_channels", 3, "graphdsl decodes images to RGB: 3 channels"),
        settings.unless("config", "vision_config.rope_parameters.rope_theta", 10000.0, "the file has no key for the "
                        "vision RoPE's base; graphdsl reads 10000"),
        settings.unless("config", "vision_config.rope_parameters.rope_type", "axial", "graphdsl's vision RoPE is the "
                        "2-D one HF's default names"),
        settings.decoder(),
        settings.irrelevant("config", "vision_config.tokens_per_second", "video M-RoPE time steps; an image is one frame"),
    )
