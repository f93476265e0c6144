"""The GGUF side of a model file: llama.cpp's tensor table and names (``T``, ``tn``, the latter
``gguf_io``'s, here beside its table),
the clip.vision.* metadata a ViT tower writes (``vit_keys``) and, reading, an mmproj file's
config (``mmproj_config``) and its vision / audio section as config fields (``gguf_vision``,
``gguf_audio``)."""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from gguf import Keys
from gguf.constants import MODEL_TENSOR

from ..gguf_io import KEY_ACT, MmprojConfig, load_mmproj, tn

T = MODEL_TENSOR


def vit_keys(cfg, image_mean, image_std, n_layer: int | None = None) -> list[tuple[str, object]]:
    """The clip.vision.* metadata every ViT tower writes (llama.cpp's names), from its config:
    sizes, counts, eps, mean/std, llama.cpp's GELU/SiLU flags and graphdsl's exact activation.
    n_layer: the blocks the file stores, when the graph uses fewer than the config has."""

    V = Keys.ClipVision
    gelu, silu = {"gelu": (True, False), "gelu_erf": (True, False), "silu": (False, True)}.get(cfg.act, (False, False))
    return [(Keys.Clip.HAS_VISION_ENCODER, True), (V.IMAGE_SIZE, cfg.image_size), (V.PATCH_SIZE, cfg.patch_size),
            (V.EMBEDDING_LENGTH, cfg.n_embd), (V.FEED_FORWARD_LENGTH, cfg.n_ff), (V.BLOCK_COUNT, cfg.n_layer if n_layer is None else n_layer),
            (V.Attention.HEAD_COUNT, cfg.n_head), (V.Attention.LAYERNORM_EPS, float(cfg.eps)),
            (V.IMAGE_MEAN, [float(x) for x in image_mean]), (V.IMAGE_STD, [float(x) for x in image_std]),
            (V.USE_GELU, gelu), (V.USE_SILU, silu), (KEY_ACT.format(modality="vision"), cfg.act)]


def mmproj_config(src: Any):
    """An ``MmprojConfig`` from a path, an ``MmprojConfig`` or ``load_mmproj``'s (config, tensors) pair."""
    if isinstance(src, tuple) and len(src) == 2 and isinstance(src[0], MmprojConfig):
        return src[0]
    if isinstance(src, MmprojConfig):
        return src
    if isinstance(src, (str, os.PathLike)):
        return load_mmproj(src)[0]
    raise ValueError(f"[config_from_gguf] expected an mmproj path or MmprojConfig, got {type(src).__name__}")


def _section(src: Any, modality: str, projectors: Sequence[str], what: str):
    """(MmprojConfig, its vision or audio section) of a file whose projector for it is one of
    ``projectors``, and the encoder fields every section holds (every tensor's stored type as wtypes)."""
    m = mmproj_config(src)
    sec = getattr(m, modality)
    if sec is None:
        raise m.error(f"no {modality} encoder (clip.has_{modality}_encoder is false)")
    if sec.projector_type not in projectors:
        raise m.error(f"{modality} projector type {sec.projector_type!r} is not a {what} one ({', '.join(projectors)})")
    q = tn(T.V_ENC_ATTN_Q if modality == "vision" else T.A_ENC_ATTN_Q, "weight", 0)
    return m, sec, dict(n_embd=sec.n_embd, n_ff=sec.n_ff, n_head=sec.n_head, n_layer=sec.n_layer, eps=sec.eps,
                        wtype=m.dtypes.get(q, "f32"), wtypes=dict(m.dtypes))


def gguf_vision(src: Any, projectors: Sequence[str], what: str):
    """(MmprojConfig, its vision section) of a file whose vision projector is one of ``projectors``,
    and the VitHparams fields it holds (with every tensor's stored type as wtypes)."""
    m, v, kw = _section(src, "vision", projectors, what)
    return m, v, dict(kw, image_size=v.image_size, patch_size=v.patch_size, act=v.act)


def gguf_audio(src: Any, projectors: Sequence[str], what: str):
    """(MmprojConfig, its audio section) of a file whose audio projector is one of ``projectors``,
    and the encoder fields it holds: sizes, mel bins, eps and stored types (not the activation,
    which not every audio encoder reads from the file)."""
    m, a, kw = _section(src, "audio", projectors, what)
    return m, a, dict(kw, n_mel=a.n_mel)
