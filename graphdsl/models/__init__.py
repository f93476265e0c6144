"""One file per architecture, each registering one record (``registry.Arch``): its config
dataclass, its block, ``config_from_hf`` / ``config_from_gguf`` / ``config_to_gguf`` and
``hf_to_gguf`` (HF state dict -> llama.cpp mmproj names).

- ``clip``: CLIP ViT + LLaVA MLP projector (``mm.0`` / ``mm.2``).
- ``siglip``: SigLIP ViT + Gemma 3 projector (avg-pool, soft-embedding RMSNorm, input projection).
- ``whisper_enc``: Whisper encoder + Voxtral projector (frame stacking + GELU MLP).
- ``text``: token table, or BERT's embedding stage (positions, token types, LayerNorm).

Every module of this package is imported here, so a new model file registers itself by being
there. ``from_gguf(path)`` reads an mmproj file into the blocks it describes, the arch chosen by
its projector type (clip.projector_type, else clip.vision.projector_type /
clip.audio.projector_type) among the registered ones (``registry.for_projector``; "none", an
encoder without projector, goes to the arch whose ``claims`` fits the tensors: CLIP with a class
token, SigLIP without).

Every weight is declared with the type the file stores it in, and the weights are the file's
memory-mapped arrays (no copy). ``text.from_gguf`` does the same for a text model.

    >>> m = from_gguf("mmproj.gguf")                                   # doctest: +SKIP
    >>> Embedder(text_block, m.media, weights={**m.weights, **text_weights})  # doctest: +SKIP
"""
from __future__ import annotations

import importlib
import os
import pkgutil
from dataclasses import dataclass

import numpy as np

from . import registry
from .common import select_weights
from .registry import ARCHS, Arch

_SKIP = {"common", "registry", "settings"}
for _m in sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in _SKIP):
    importlib.import_module(f"{__name__}.{_m}")
from . import clip, siglip, text, whisper_enc  # noqa: E402 - the names, for users

__all__ = ["ARCHS", "Arch", "Mmproj", "clip", "from_gguf", "registry", "siglip", "text", "whisper_enc"]


@dataclass
class Mmproj:
    """The blocks of one mmproj file, their weights (gguf name -> memory-mapped array) and its config."""

    path: str
    config: object  # gguf_io.MmprojConfig
    vision: object | None  # the vision arch's block
    audio: object | None  # the audio arch's block
    weights: dict[str, np.ndarray]
    archs: dict[str, Arch]  # "image" / "audio" -> the registered arch that built the block

    @property
    def media(self) -> dict:
        """kind -> block, as ``embed.Embedder`` takes them ("image", "audio")."""
        return {k: m for k, m in (("image", self.vision), ("audio", self.audio)) if m is not None}

    def settings(self, kind: str = "image") -> dict:
        """The HF processor settings the file carries for its "image" or "audio" arch (its key, else
        HF's default: ``models.settings.read``), by the field's path in preprocessor_config.json."""
        from .settings import read
        block = self.media.get(kind)
        if block is None:
            raise ValueError(f"{self.path}: no {kind} encoder")
        return read(self.archs[kind], self.config.file, block.cfg)

    def image_config(self, **kw):
        """``preprocess.ImageConfig`` for the vision tower, as its arch pre-processes pixels (CLIP:
        shortest edge + centre crop, SigLIP: square resize) with the file's size, mean and std
        (clip.vision.image_size / image_mean / image_std); ``kw`` as ImageConfig (max_out_pixels)."""
        if self.vision is None:
            raise ValueError(f"{self.path}: no vision encoder")
        arch = self.archs["image"]
        if arch.image is None:
            raise ValueError(f"{self.path}: the {arch.name} architecture declares no image pre-processing")
        v = self.config.vision
        from .settings import image_kw
        carried = image_kw(arch, self)  # the checkpoint's processor settings the file carries
        mean, std = carried.pop("mean", v.image_mean), carried.pop("std", v.image_std)
        image = registry.ImagePreprocess(carried.pop("mode"), arch.image.mean, arch.image.std) if "mode" in carried \
            else arch.image
        kw = {**self.vision.image_kw, **carried, **kw}  # what the block fixes (pixtral: patch * merge)
        return image.config(self.vision.cfg.image_size, mean, std, **kw)


def arch_for(mmproj_config, section: str) -> Arch:
    """The registered arch that builds a file's "vision" or "audio" encoder (ValueError naming
    the file and the supported projector types)."""
    sec = getattr(mmproj_config, section)
    return registry.for_projector(section, sec.projector_type, mmproj_config, written=sec.written_type)


def from_gguf(path: str | os.PathLike, *, check_finite: bool = True) -> Mmproj:
    """Read an mmproj GGUF into its vision and/or audio blocks and their weights (see the module doc).

    check_finite: refuse weights holding NaN or inf (ValueError listing them; every value of
    f32/f16/bf16 tensors, the block scales of quantized ones: ``gguf_io.finite``), as inputs are.
    """
    from ..gguf_io import check_finite as refuse_nonfinite
    from ..gguf_io import load_mmproj
    cfg, tensors = load_mmproj(path)
    blocks, archs, weights = {}, {}, {}
    for section, kind in (("vision", "image"), ("audio", "audio")):
        if getattr(cfg, section) is None:
            continue
        arch = archs[kind] = arch_for(cfg, section)
        blocks[kind] = arch.block(arch.config_from_gguf(cfg))
        weights.update(select_weights(blocks[kind], tensors, cfg.path))
    if check_finite:
        refuse_nonfinite({n: tensors[n] for n in weights}, cfg.path)
    return Mmproj(cfg.path, cfg, blocks.get("image"), blocks.get("audio"), weights, archs)
