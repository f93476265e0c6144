"""Qwen2-Audio's pre-processing (graphdsl.preprocess.qwen2audio) against HF's: WhisperFeatureExtractor
called as Qwen2AudioProcessor calls it (padding="max_length", truncation, return_attention_mask).

What is compared: the real frame count (HF's feature_attention_mask.sum()) exactly, and the frames
of HF's padded window the encoder's rows read (frames_read) as tests/models/test_preprocess_audio.py
compares Whisper's log-mel: within 1e-6 of HF's float64 NumPy path, and within 1e-5 of its float32
torch path beyond where that path is itself as far from the float64 one.
"""
from __future__ import annotations

import numpy as np
import pytest
from hf_refs import need_torch
from test_preprocess_audio import TOL64, _assert_close_f32

from graphdsl.preprocess.audio import HOP_LENGTH
from graphdsl.preprocess.qwen2audio import frames_read, qwen2audio_features

N_MEL = 128


def _pcm(samples, seed):
    return (np.random.default_rng(seed).standard_normal(samples) * 0.1).astype(np.float32)


# 800 samples: 5 frames (the fewest with an output row); 160 * 73 + 1: one sample into a frame;
# exactly 30 s; 31.7 s (HF keeps the first 30 s)
@pytest.mark.parametrize("samples", [800, 11_681, 36_800, 480_000, 507_200], ids=lambda n: f"{n / 16000:.3f}s")
@pytest.mark.parametrize("chunk_length", [30, 2])
def test_features_are_hf_processor_frames(samples, chunk_length):
    need_torch()
    from transformers import WhisperFeatureExtractor
    n_ctx = 50 * chunk_length
    x = _pcm(samples, samples)
    fe = WhisperFeatureExtractor(feature_size=N_MEL, chunk_length=chunk_length)
    fa = fe(x, sampling_rate=16000, return_attention_mask=True, padding="max_length", return_tensors="np")
    mel, t = qwen2audio_features(x, N_MEL, n_ctx=n_ctx)
    assert t == int(fa["attention_mask"].sum()) == min(-(-samples // HOP_LENGTH), 2 * n_ctx)
    f = frames_read(t, n_ctx)
    assert mel.shape == (N_MEL, f) and mel.dtype == np.float32
    ref32 = fa["input_features"][0][:, :f]
    window = np.pad(x[:fe.n_samples], (0, max(0, fe.n_samples - samples)))
    ref64 = fe._np_extract_fbank_features(window[None], "cpu")[0][:, :f]
    assert np.abs(mel - ref64).max() <= TOL64
    _assert_close_f32(mel, ref32, ref64)


def test_frames_read():
    """2 ceil(T/2) + 1 frames (the stem's last real row reads one frame past it), at most the window."""
    assert [frames_read(t) for t in (1, 2, 3, 4, 123, 124, 2998, 2999, 3000)] == [3, 3, 5, 5, 125, 125, 2999, 3000,
                                                                                   3000]
    assert frames_read(200, n_ctx=100) == 200


def test_bad_window_is_refused():
    with pytest.raises(ValueError, match="n_ctx must be >= 3"):
        qwen2audio_features(_pcm(1600, 0), N_MEL, n_ctx=2)
