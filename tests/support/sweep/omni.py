"""Sweep entries for the Qwen2.5-Omni thinker: one HF folder holds both encoders (convert writes
both into one file); the vision entry embeds images (Qwen2.5-VL's random configs), the audio entry
clips (random widths, mel counts and n_window chunks, odd ones included)."""
from __future__ import annotations

from hf_refs import randomize

from .audio_text import _clips, _pcm, _shift_audio
from .clip_siglip import _no_grad, _shift_mean
from .core import Entry, ffn, pick, width
from .resizing import _qwen_generate, _qwen_processor, _qwen_reference

_VISION = dict(depth=1, hidden_size=16, intermediate_size=24, num_heads=2, out_hidden_size=48, window_size=56,
               fullatt_block_indexes=[0])
_AUDIO = dict(num_mel_bins=128, d_model=16, encoder_attention_heads=2, encoder_ffn_dim=24, encoder_layers=1,
              n_window=4, output_dim=48)


def vision_generate(rng):
    _, k, proc, media = _qwen_generate(rng, True)
    return "qwen2_5omni", {"vision": k["vision"], "audio": _AUDIO}, proc, media


def audio_generate(rng):
    d, h = width(rng, head_dims=(4, 8, 12))
    n_mel = pick(rng, (80, 128))
    a = dict(num_mel_bins=n_mel, d_model=d, encoder_attention_heads=h, encoder_ffn_dim=ffn(rng, d),
             encoder_layers=int(rng.integers(1, 4)), n_window=int(rng.integers(2, 9)), output_dim=48,
             activation_function=pick(rng, ["gelu", "gelu_new"]))
    return "qwen2_5omni", {"vision": _VISION, "audio": a}, {"feature_size": n_mel}, _clips(rng)


def omni_model(c):
    from test_models_qwen2vl import _text_config
    from transformers import Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration
    cfg = Qwen2_5OmniThinkerConfig(vision_config=c.config["vision"], audio_config=c.config["audio"],
                                   text_config=_text_config())
    for s in (cfg, cfg.vision_config, cfg.audio_config, cfg.text_config):
        s._attn_implementation = "eager"
    return randomize(Qwen2_5OmniThinkerForConditionalGeneration(cfg), c.seed)


def audio_processor(c):
    from transformers import WhisperFeatureExtractor
    return WhisperFeatureExtractor(**c.processor)


@_no_grad
def audio_reference(model, proc, c, paths):
    """Per clip, HF's processor path: features padded to 30 s and feature_attention_mask."""
    import numpy as np
    import torch
    out = []
    for p in paths:
        fa = proc(_pcm(p), sampling_rate=16000, return_attention_mask=True, padding="max_length", return_tensors="np")
        out.append(model.get_audio_features(torch.from_numpy(fa["input_features"]),
                                            feature_attention_mask=torch.from_numpy(fa["attention_mask"]))
                   .last_hidden_state.numpy())
    return np.concatenate(out)


QWEN2_5OMNI = Entry("qwen2_5omni", vision_generate, omni_model, _qwen_reference, wrong=_shift_mean,
                    processor=_qwen_processor)
QWEN2_5OMNI_AUDIO = Entry("qwen2_5omni_audio", audio_generate, omni_model, audio_reference, processor=audio_processor,
                          wrong=_shift_audio)
