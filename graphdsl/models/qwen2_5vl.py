"""Qwen2.5-VL vision (projector "qwen2.5vl_merger"): Qwen2-VL's graph (``qwen2vl.encode``) with

- RMSNorm (no bias) in the layers and the merger's ln_q, SwiGLU MLPs (ffn_gate / ffn_up / ffn_down);
- window attention: the 2x2 merge units are regrouped so that each window of ``window_size``
  pixels (112: 4 x 4 merged tokens) is consecutive (``get_rows`` on the units), every layer but
  those in ``fullatt`` attends within its window only (a block-diagonal mask over the windows),
  those layers within their image; the merged tokens are put back in order at the end.

llama.cpp's files say which layers attend fully with ``clip.vision.n_wa_pattern`` (every
n-th layer, as its converter derives it from HF's fullatt_block_indexes) or
``clip.vision.wa_layer_indexes``; ``clip.vision.window_size`` is written too (llama.cpp uses 112).
No full-attention layer at all (HF's ``fullatt_block_indexes: []``) is written as n_wa_pattern
n_layer + 1, a pattern no layer meets (an empty array does not survive GGUF writers).

Example:
    >>> cfg = Qwen25VLConfig(image_size=56, n_embd=32, n_ff=48, n_head=4, n_layer=2, n_mm_embd=24,
    ...                      window_size=56, fullatt=(1,))
    >>> build(cfg, [(1, 8, 12)]).outputs["embd"].shape        # 2 x 3 windows of 2 x 2 merged tokens
    (24, 24)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import Keys

from .. import blocks
from ..gguf_io.reader import metadata_value
from ..preprocess.image import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from .gguf_keys import T
from .hf import convert_state, hf_dict, sub
from .qwen2vl import Qwen2VLConfig, Qwen2VLVision, SmartResize, _CLIP_NORM, build as _build, frames, weight_shapes
from .qwen2vl_convert import (PREFIXES, config_to_gguf as _qwen2_keys, gguf_kw, hf_rules, hf_vision_fields,
                              processor_settings, split_qwen, vision_settings)
from . import settings
from .registry import Arch, register

KEY_WA_LAYERS = "clip.vision.wa_layer_indexes"  # clip-impl.h KEY_WIN_ATTN_LAYER_INDEXES


@dataclass(frozen=True)
class Qwen25VLConfig(Qwen2VLConfig):
    act: str = "silu"
    window_size: int = 112
    fullatt: tuple[int, ...] = (7, 15, 23, 31)

    norm = "rms"
    gated = True
    projector = "qwen2.5vl_merger"


class Qwen25VLVision(Qwen2VLVision):
    """As ``Qwen2VLVision``, for a ``Qwen25VLConfig``."""


build = _build


def config_from_hf(hf: Any) -> Qwen25VLConfig:
    """From an HF Qwen2_5_VLConfig (vision_config: hidden_size, intermediate_size, out_hidden_size,
    window_size, fullatt_block_indexes)."""
    d = hf_dict(hf, "qwen2_5vl")
    v = sub(d, "vision_config") or d
    return Qwen25VLConfig(**hf_vision_fields(v), n_embd=v.get("hidden_size", 1280), n_ff=v.get("intermediate_size", 3420),
                          act=blocks.act_of(v.get("hidden_act", "silu")), n_mm_embd=v.get("out_hidden_size", 3584),
                          window_size=v.get("window_size", 112),
                          fullatt=tuple(int(i) for i in v.get("fullatt_block_indexes", (7, 15, 23, 31))))


def config_from_gguf(src: Any) -> Qwen25VLConfig:
    """From an mmproj GGUF with projector "qwen2.5vl_merger" (llama.cpp's layout)."""
    m, kw = gguf_kw(src, ("qwen2.5vl_merger",), "Qwen2.5-VL")
    f, V, n = m.file, Keys.ClipVision, kw["n_layer"]
    if f is None:
        raise m.error("Qwen2.5-VL's window layers are read from the file's keys; load it with load_mmproj")
    layers = [int(i) for i in metadata_value(f, KEY_WA_LAYERS, "ints", [])]
    pattern = metadata_value(f, V.N_WA_PATTERN, int, 0)
    if not layers and pattern:  # llama.cpp: layer il attends fully when (il + 1) % n_wa_pattern == 0
        layers = [il for il in range(n) if (il + 1) % pattern == 0]
    if any(not 0 <= i < n for i in layers):
        raise m.error(f"full-attention layers {layers} must lie in 0..{n - 1}")
    # neither key: llama.cpp runs no window attention at all; an explicit empty list, or a pattern past
    # the last layer (as config_to_gguf writes no full-attention layer): windows everywhere
    windowed = bool(layers) or pattern > 0 or KEY_WA_LAYERS in f.metadata
    window = metadata_value(f, V.WINDOW_SIZE, int, 112) if windowed else 0
    return Qwen25VLConfig(**kw, window_size=window, fullatt=tuple(layers))


def config_to_gguf(cfg: Qwen25VLConfig, image_mean=None, image_std=None) -> list[tuple[str, object]]:
    V, fa = Keys.ClipVision, list(cfg.fullatt)
    kv = _qwen2_keys(cfg, image_mean, image_std) + [(V.WINDOW_SIZE, cfg.window_size),
                                                    (KEY_WA_LAYERS, [int(i) for i in fa])]
    step = fa[0] + 1 if fa else 0
    if fa and fa == list(range(step - 1, cfg.n_layer, step)):  # llama.cpp's converter writes only the pattern
        kv.append((V.N_WA_PATTERN, step))
    elif not fa and cfg.window_size:
        # no full-attention layer (HF's fullatt_block_indexes []): GGUF writers drop an empty array, so
        # say it as a pattern no layer meets, (il + 1) % (n_layer + 1) != 0: windows in every layer, in
        # llama.cpp too (use_window_attn = n_wa_pattern > 0)
        kv.append((V.N_WA_PATTERN, cfg.n_layer + 1))
    return kv


def hf_to_gguf(state_dict, config) -> dict[str, np.ndarray]:
    """HF Qwen2_5_VLForConditionalGeneration tensors (``visual.*``) -> gguf names (NumPy f32)."""
    cfg = config if isinstance(config, Qwen25VLConfig) else config_from_hf(config)
    rules = hf_rules([("mlp.up_proj", T.V_ENC_FFN_UP), ("mlp.gate_proj", T.V_ENC_FFN_GATE),
                      ("mlp.down_proj", T.V_ENC_FFN_DOWN)])
    return convert_state(state_dict, PREFIXES, rules, weight_shapes(cfg), "qwen2_5vl", fix=split_qwen)


SETTINGS = (
    *vision_settings(),
    settings.carried("config", "vision_config.hidden_size", Keys.ClipVision.EMBEDDING_LENGTH),
    settings.carried("config", "vision_config.intermediate_size", Keys.ClipVision.FEED_FORWARD_LENGTH),
    settings.carried("config", "vision_config.out_hidden_size", Keys.ClipVision.PROJECTION_DIM),
    settings.carried("config", "vision_config.window_size", Keys.ClipVision.WINDOW_SIZE),
    settings.carried("config", "vision_config.fullatt_block_indexes", KEY_WA_LAYERS),
    *processor_settings(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
)


ARCH = register(Arch(
    "qwen2_5vl", "image", Qwen25VLVision, Qwen25VLConfig, config_from_hf, config_from_gguf, config_to_gguf,
    hf_to_gguf, projectors=("qwen2.5vl_merger",), hf_model_types=("qwen2_5_vl",),
    image=SmartResize("qwen2vl", **_CLIP_NORM), prepare=frames, settings=SETTINGS,
    examples=(Qwen25VLConfig(image_size=56, n_embd=32, n_ff=48, n_head=4, n_layer=4, n_mm_embd=24, window_size=56,
                             fullatt=(1, 3)),)))
