"""Qwen2.5-Omni thinker (HF ``Qwen2_5OmniThinkerForConditionalGeneration``): its vision tower, which
is Qwen2.5-VL's (``qwen2_5vl``: RMSNorm, SwiGLU, window attention, 2x2 merger), and its audio
encoder (``qwen2_5omni_audio``), converted from ONE checkpoint into ONE mmproj file.

``graphdsl convert`` of a thinker folder (model_type ``qwen2_5_omni_thinker``), or of a whole
Qwen2.5-Omni one (``qwen2_5_omni``: the thinker under ``thinker_config`` / ``thinker.*``, the speech
talker beside it, not converted), builds this arch and its companion, the audio encoder, and
writes both encoders in one file as llama.cpp's converter does (projector "qwen2.5o" for both;
llama.cpp's reader, and graphdsl's, take it as "qwen2.5vl_merger" for vision and "qwen2a" for
audio: this arch and the audio one claim such a file, Qwen2.5-VL and others do not).
``graphdsl embed --image --audio`` then runs an image and an audio clip as one mixed batch.

The vision tower differs from Qwen2.5-VL's in its checkpoint only: q, k and v are separate
(``attn.q`` ...) where Qwen2.5-VL fuses them (``attn.qkv``); the graph and its names are the same.

Example:
    >>> cfg = config_from_hf({"model_type": "qwen2_5_omni_thinker", "vision_config": {"depth": 2, "hidden_size": 32,
    ...     "intermediate_size": 48, "num_heads": 4, "out_hidden_size": 24, "window_size": 56,
    ...     "fullatt_block_indexes": [1]}})
    >>> build(cfg, [(1, 8, 12)]).outputs["embd"].shape
    (24, 24)
"""
from __future__ import annotations

from typing import Any

import numpy as np
from gguf import Keys

from . import qwen2_5vl, settings
from ..gguf_io import tn
from .gguf_keys import mmproj_config, T
from .hf import as_dict, sub
from .qwen2_5vl import Qwen25VLConfig, Qwen25VLVision
from .qwen2_5omni_audio import WHOLE, omni_file, thinker_of, whole_model
from .qwen2vl import _CLIP_NORM, SmartResize, convert_state, frames, hf_rules, split_qwen, weight_shapes
from .registry import Arch, register

PREFIXES = ("thinker.model.visual.", "thinker.visual.", "model.visual.", "visual.")
# Qwen2_5OmniVisionEncoderConfig's defaults: save_pretrained leaves out the fields equal to them
HF_DEFAULTS = {"depth": 32, "hidden_size": 3584, "hidden_act": "silu", "intermediate_size": 3420, "num_heads": 16,
               "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
               "out_hidden_size": 3584, "fullatt_block_indexes": [7, 15, 23, 31]}

build = qwen2_5vl.build


def config_from_hf(hf: Any) -> Qwen25VLConfig:
    """From an HF Qwen2_5OmniThinkerConfig (its vision_config), or a whole Qwen2_5OmniConfig's thinker,
    with the Omni vision defaults."""
    d = thinker_of(as_dict(hf))  # its audio_config is qwen2_5omni_audio's, converted beside this one: not a conflict
    if d.get("model_type") != "qwen2_5_omni_thinker":
        raise ValueError(f"[qwen2_5omni.config_from_hf] needs a Qwen2.5-Omni thinker config, got model_type "
                         f"{d.get('model_type')!r}")
    v = {k: x for k, x in {**HF_DEFAULTS, **sub(d, "vision_config")}.items() if k != "model_type"}
    return qwen2_5vl.config_from_hf({"vision_config": v})


def config_from_gguf(src: Any) -> Qwen25VLConfig:
    """From an mmproj GGUF whose projector type is "qwen2.5o" (Qwen2.5-VL's vision keys)."""
    m = mmproj_config(src)
    if not omni_file(m):
        raise m.error("not a Qwen2.5-Omni file (projector type 'qwen2.5o')")
    return qwen2_5vl.config_from_gguf(m)


def config_to_gguf(cfg: Qwen25VLConfig, image_mean=None, image_std=None) -> list[tuple[str, object]]:
    """Qwen2.5-VL's vision keys under llama.cpp's omni projector type."""
    return [(k, "qwen2.5o" if k == Keys.Clip.PROJECTOR_TYPE else v)
            for k, v in qwen2_5vl.config_to_gguf(cfg, image_mean, image_std)]


def hf_to_gguf(state_dict, config) -> dict[str, np.ndarray]:
    """HF thinker tensors (``model.visual.*``) -> gguf names (NumPy f32): Qwen2.5-VL's rules with
    separate q / k / v."""
    cfg = config if isinstance(config, Qwen25VLConfig) else config_from_hf(config)
    rules = hf_rules([("mlp.up_proj", T.V_ENC_FFN_UP), ("mlp.gate_proj", T.V_ENC_FFN_GATE),
                      ("mlp.down_proj", T.V_ENC_FFN_DOWN)])
    qkv = (("q", T.V_ENC_ATTN_Q), ("k", T.V_ENC_ATTN_K), ("v", T.V_ENC_ATTN_V))
    rules += [(f"blocks.{{bid}}.attn.{x}.{s}", tn(t, s)) for x, t in qkv for s in ("weight", "bias")]
    return convert_state(state_dict, PREFIXES, rules, weight_shapes(cfg), "qwen2_5omni", fix=split_qwen)


_PROMPT = "the thinker's prompt layout (token ids, video / audio interleaving): not the encoders' rows"
_SPEECH = "the talker / token2wav speech output's, which reads the thinker's text, not these rows"
_THINKER = tuple(settings.irrelevant("config", k, _PROMPT) for k in (
    "video_token_index", "position_id_per_seconds", "seconds_per_chunk", "audio_start_token_id", "audio_end_token_id",
    "user_token_id"))
SETTINGS = (
    *qwen2_5vl.SETTINGS, *_THINKER, *whole_model((*qwen2_5vl.SETTINGS, *_THINKER)),
    *(settings.irrelevant("config", k, _SPEECH) for k in ("talker_config.*", "token2wav_config.*",
                                                          "enable_audio_output")),
    settings.irrelevant("processor", "seconds_per_chunk", _PROMPT),
    settings.irrelevant("processor", "position_id_per_seconds", _PROMPT),
)


ARCH = register(Arch(
    "qwen2_5omni", "image", Qwen25VLVision, Qwen25VLConfig, config_from_hf, config_from_gguf, config_to_gguf,
    hf_to_gguf, projectors=("qwen2.5o",), hf_model_types=("qwen2_5_omni_thinker", WHOLE),
    image=SmartResize("qwen2vl", **_CLIP_NORM), prepare=frames, companions=("qwen2_5omni_audio",),
    settings=SETTINGS, examples=qwen2_5vl.ARCH.examples))
