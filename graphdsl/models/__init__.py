"""One file per architecture; each has a config dataclass, a callable block, ``build()``,
``weight_shapes()``, ``config_from_hf()``, ``config_from_gguf()`` and ``hf_to_gguf()`` (HF state
dict -> llama.cpp mmproj names).

- ``clip``: CLIP ViT + LLaVA MLP projector (``mm.0`` / ``mm.2``).
- ``siglip``: SigLIP ViT + Gemma 3 projector (avg-pool, soft-embedding RMSNorm, input projection).
- ``whisper_enc``: Whisper encoder + Voxtral projector (frame stacking + GELU MLP).
- ``text``: token table, or BERT's embedding stage (positions, token types, LayerNorm).

``from_gguf(path)`` reads an mmproj file into the blocks it describes, chosen by its projector
type (clip.projector_type, else clip.vision.projector_type / clip.audio.projector_type):

    vision "mlp" (LLaVA)            -> clip.ClipVision
    vision "gemma3"                 -> siglip.SiglipVision
    vision "none"                   -> ClipVision with v.class_embd, else SiglipVision
    audio "voxtral" or "none"       -> whisper_enc.WhisperEncoder

Every weight is declared with the type the file stores it in, and the weights are the file's
memory-mapped arrays (no copy). ``text.from_gguf`` does the same for a text model.

    >>> m = from_gguf("mmproj.gguf")                                   # doctest: +SKIP
    >>> Embedder(text_block, m.media, weights={**m.weights, **text_weights})  # doctest: +SKIP
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from . import clip, siglip, text, whisper_enc
from .common import select_weights

MODELS = {"clip": clip, "siglip": siglip, "whisper_enc": whisper_enc, "text": text}
VISION = {"mlp": clip, "gemma3": siglip}  # projector type -> model file ("none": by the tower's tensors)
AUDIO = {"voxtral": whisper_enc, "none": whisper_enc}

__all__ = ["AUDIO", "MODELS", "VISION", "Mmproj", "clip", "from_gguf", "siglip", "text", "whisper_enc"]


@dataclass
class Mmproj:
    """The blocks of one mmproj file, their weights (gguf name -> memory-mapped array) and its config."""

    path: str
    config: object  # gguf_io.MmprojConfig
    vision: clip.ClipVision | siglip.SiglipVision | None
    audio: whisper_enc.WhisperEncoder | None
    weights: dict[str, np.ndarray]

    @property
    def media(self) -> dict:
        """kind -> block, as ``embed.Embedder`` takes them ("image", "audio")."""
        return {k: m for k, m in (("image", self.vision), ("audio", self.audio)) if m is not None}

    def image_config(self):
        """``preprocess.ImageConfig`` for the vision tower: size, mean and std from the file
        (clip.vision.image_size / image_mean / image_std); CLIP towers resize the shortest edge
        and centre-crop (HF's CLIPImageProcessor), SigLIP towers resize to a square (SiglipImageProcessor)."""
        from ..preprocess import ImageConfig
        if self.vision is None:
            raise ValueError(f"{self.path}: no vision encoder")
        v, n = self.config.vision, self.vision.cfg.image_size
        if isinstance(self.vision, clip.ClipVision):
            return ImageConfig(mode="clip", size=n, crop_size=n, mean=v.image_mean, std=v.image_std)
        return ImageConfig(mode="siglip", size=(n, n), mean=v.image_mean, std=v.image_std)


def vision_module(cfg):
    """The model file for an MmprojConfig's vision tower (ValueError naming the file and the type)."""
    v = cfg.vision
    if v.projector_type == "none":
        return clip if "v.class_embd" in cfg.shapes else siglip
    if v.projector_type not in VISION:
        raise cfg.error(f"vision projector type {v.projector_type!r} is not supported by graphdsl.models "
                        f"(supported: {', '.join([*VISION, 'none'])})")
    return VISION[v.projector_type]


def audio_module(cfg):
    """The model file for an MmprojConfig's audio encoder (ValueError naming the file and the type)."""
    a = cfg.audio
    if a.projector_type not in AUDIO:
        raise cfg.error(f"audio projector type {a.projector_type!r} is not supported by graphdsl.models "
                        f"(supported: {', '.join(AUDIO)})")
    return AUDIO[a.projector_type]


def from_gguf(path: str | os.PathLike, *, check_finite: bool = True) -> Mmproj:
    """Read an mmproj GGUF into its vision and/or audio blocks and their weights (see the module doc).

    check_finite: refuse weights holding NaN or inf (ValueError listing them; every value of
    f32/f16/bf16 tensors, the block scales of quantized ones: ``gguf_io.finite``), as inputs are.
    """
    from ..gguf_io import check_finite as refuse_nonfinite
    from ..gguf_io import load_mmproj
    cfg, tensors = load_mmproj(path)
    vision = audio = None
    weights: dict[str, np.ndarray] = {}
    if cfg.vision is not None:
        mod = vision_module(cfg)
        vision = (mod.ClipVision if mod is clip else mod.SiglipVision)(mod.config_from_gguf(cfg))
        weights.update(select_weights(vision, tensors, cfg.path))
    if cfg.audio is not None:
        mod = audio_module(cfg)
        audio = mod.WhisperEncoder(mod.config_from_gguf(cfg))
        weights.update(select_weights(audio, tensors, cfg.path))
    if check_finite:
        refuse_nonfinite({n: tensors[n] for n in weights}, cfg.path)
    return Mmproj(cfg.path, cfg, vision, audio, weights)
