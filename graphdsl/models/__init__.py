"""One file per architecture; each has a config dataclass, a callable block, ``build()``,
``weight_shapes()``, ``config_from_hf()`` and ``hf_to_gguf()`` (HF state dict -> llama.cpp mmproj names).

- ``clip``: CLIP ViT + LLaVA MLP projector (``mm.0`` / ``mm.2``).
- ``siglip``: SigLIP ViT + Gemma 3 projector (avg-pool, soft-embedding RMSNorm, input projection).
- ``whisper_enc``: Whisper encoder + Voxtral projector (frame stacking + GELU MLP).
- ``text``: token table, or BERT's embedding stage (positions, token types, LayerNorm).
"""
from . import clip, siglip, text, whisper_enc

MODELS = {"clip": clip, "siglip": siglip, "whisper_enc": whisper_enc, "text": text}

__all__ = ["MODELS", "clip", "siglip", "text", "whisper_enc"]
