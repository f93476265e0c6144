"""HF checkpoints -> GGUF in llama.cpp's mmproj (or text-model) layout.

Everything per architecture comes from its registered record (``graphdsl.models.registry``):
the HF ``model_type`` picks the arch, whose ``config_from_hf`` reads the config, ``hf_to_gguf``
names the tensors (one rename table serves the converter and the graphs) and ``config_to_gguf``
writes the metadata; this module adds the file around them: the general keys, the image
mean/std of the checkpoint's preprocessor_config.json, and, for text models, the arch's
``text_conversion`` (its layers and vocabulary). The per-tensor types are writer.py's.

Metadata follows llama.cpp (clip.cpp reads it), plus keys llama.cpp ignores that let graphdsl
reproduce HF exactly (llama.cpp's flags cannot say "exact erf GELU" or "keep the class token"):
`graphdsl.{vision,audio}.act`, `graphdsl.vision.projector_act`, `graphdsl.vision.select`; a BERT
text model's tokenizer_config.json normaliser settings as `graphdsl.text.*` (llama.cpp's WPM
tokenizer always lower-cases).
"""
from __future__ import annotations

import numpy as np
from gguf import Keys

from ..gguf_io import MMPROJ_ARCH
from ..models import settings
from .checkpoint import load_hf, load_tokenizer_config


def prepare(hf_dir: str) -> tuple[str, list[tuple[str, object]], dict[str, np.ndarray]]:
    """(architecture, metadata, gguf name -> f32 tensor) for an HF model folder."""
    return prepare_all(hf_dir)[0]


def prepare_all(hf_dir: str) -> list[tuple[str, list[tuple[str, object]], dict[str, np.ndarray]]]:
    """``prepare``'s parts of a folder: the arch its model_type names, then the archs it lists as
    ``companions`` (encoders of the same checkpoint, as Phi-4-multimodal's audio beside
    its vision), to be combined into one mmproj."""
    from ..models import registry
    config, load_weights, pre = load_hf(hf_dir)
    model_type = config.get("model_type", "")
    # a wrapper is served by its tower's arch when one registers the pair ("llava/pixtral")
    pair = f"{model_type}/{(config.get('vision_config') or {}).get('model_type')}"
    arch = registry.for_hf(pair if any(pair in a.hf_model_types for a in registry.ARCHS.values()) else model_type)
    if arch.hf_dir is not None:  # what the folder's other files say (pixtral: token ids from the tokenizer)
        config = arch.hf_dir(config, hf_dir)
    archs = [arch, *(registry.ARCHS[n] for n in arch.companions)]
    checkpoint = {"config": config, "processor": pre, "tokenizer": load_tokenizer_config(hf_dir)}
    for a in archs:  # refuse what graphdsl cannot honour before reading any weight
        settings.refuse(a, checkpoint, hf_dir)
    cfgs = [a.config_from_hf(config) for a in archs]  # a two-tower CLIP/SigLIP config gives its vision tower
    sd = load_weights()  # read once the configs were checked
    return [_prepare(a, c, checkpoint, sd, model_type, hf_dir) for a, c in zip(archs, cfgs)]


def _prepare(arch, cfg, checkpoint, sd, model_type, hf_dir):
    config, pre = checkpoint["config"], checkpoint["processor"]
    tensors = {k: np.asarray(v, dtype=np.float32) for k, v in arch.hf_to_gguf(sd, cfg).items()}
    kv: list[tuple[str, object]] = [(Keys.General.NAME, config.get("_name_or_path") or model_type)]
    if arch.modality == "text":
        tc = arch.text_conversion
        tensors.update(tc.layers(sd, config, tensors))
        kv += arch.config_to_gguf(cfg, config) + tc.vocab(hf_dir, cfg.n_vocab)
        return tc.gguf_arch, settings.apply(arch, checkpoint, kv, hf_dir, cfg=cfg), tensors
    if arch.image is not None:
        kv += arch.config_to_gguf(cfg, pre.get("image_mean", arch.image.mean), pre.get("image_std", arch.image.std))
    else:
        kv += arch.config_to_gguf(cfg)
    return MMPROJ_ARCH, settings.apply(arch, checkpoint, kv, hf_dir, cfg=cfg), tensors


def combine(parts: list[tuple[str, list, dict]], names: list[str]) -> tuple[str, list, dict]:
    """One mmproj from several prepared folders (a vision one and an audio one, as the files of
    omni models): clip.projector_type becomes clip.vision/audio.projector_type, names are joined,
    and any other key written twice must agree."""
    V, A = Keys.ClipVision, Keys.ClipAudio
    kv: dict[str, object] = {}
    tensors: dict[str, np.ndarray] = {}
    seen: dict[str, str] = {}
    for (arch, part_kv, part_tensors), name in zip(parts, names):
        if arch != MMPROJ_ARCH:
            raise ValueError(f"{name}: a {arch!r} text model cannot be combined into an mmproj file")
        d = dict(part_kv)
        modality = "vision" if d.get(Keys.Clip.HAS_VISION_ENCODER) else "audio"
        if modality in seen:
            raise ValueError(f"{name}: a second {modality} encoder (the first is {seen[modality]})")
        seen[modality] = name
        d[V.PROJECTOR_TYPE if modality == "vision" else A.PROJECTOR_TYPE] = d.pop(Keys.Clip.PROJECTOR_TYPE)
        d[Keys.General.NAME] = " + ".join(x for x in (kv.get(Keys.General.NAME), d[Keys.General.NAME]) if x)
        for key, value in d.items():
            if key in kv and key != Keys.General.NAME and not np.array_equal(kv[key], value):
                raise ValueError(f"{name}: metadata {key!r} = {value!r} disagrees with {kv[key]!r}")
            kv[key] = value
        tensors.update(part_tensors)
    return MMPROJ_ARCH, list(kv.items()), tensors
