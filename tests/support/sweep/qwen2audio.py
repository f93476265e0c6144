"""Sweep entry for Qwen2-Audio: random encoder widths, mel counts and activations, windows of 2, 6
or 30 s (max_source_positions with the processor's chunk_length to match, as HF requires), clips
shorter and longer than the window (HF pads and masks, or cuts); the reference is the rows HF's
forward puts in the audio tokens' places of its decoder's input."""
from __future__ import annotations

from hf_refs import randomize

from .audio_text import _clips, _pcm, _shift_audio
from .core import Entry, ffn, pick, width

_WINDOWS = {2: 100, 6: 300, 30: 1500}  # chunk_length s -> max_source_positions


def generate(rng):
    d, h = width(rng, head_dims=(4, 8, 12))
    n_mel = pick(rng, (80, 128))
    chunk = pick(rng, tuple(_WINDOWS))
    a = dict(num_mel_bins=n_mel, d_model=d, encoder_attention_heads=h, encoder_ffn_dim=ffn(rng, d),
             encoder_layers=int(rng.integers(1, 4)), max_source_positions=_WINDOWS[chunk],
             activation_function=pick(rng, ["gelu", "gelu_new"]))
    text = 8 * int(rng.integers(2, 8))  # an even head dim for the decoder's RoPE (4 heads)
    return "qwen2_audio", {"audio": a, "text_hidden": text}, {"feature_size": n_mel, "chunk_length": chunk}, \
        _clips(rng, longest=min(3.0, chunk + 1.0))


def model(c):
    from test_models_qwen2audio import AUDIO_TOKEN
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration
    h = c.config["text_hidden"]
    tc = dict(hidden_size=h, intermediate_size=2 * h, num_hidden_layers=1, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=64)
    cfg = Qwen2AudioConfig(audio_config=c.config["audio"], text_config=tc, audio_token_index=AUDIO_TOKEN)
    for s in (cfg, cfg.audio_config, cfg.text_config):
        s._attn_implementation = "eager"
    return randomize(Qwen2AudioForConditionalGeneration(cfg).eval(), c.seed)


def processor(c):
    from transformers import WhisperFeatureExtractor
    return WhisperFeatureExtractor(**c.processor)


def reference(model, proc, c, paths):
    """All clips in one processor call (Qwen2AudioProcessor's: padded, truncated, with the frame mask)."""
    from test_models_qwen2audio import hf_decoder_rows
    fa = proc([_pcm(p) for p in paths], sampling_rate=16000, return_attention_mask=True, padding="max_length",
              return_tensors="np")
    return hf_decoder_rows(model, fa)


QWEN2AUDIO = Entry("qwen2audio", generate, model, reference, processor=processor, wrong=_shift_audio)
