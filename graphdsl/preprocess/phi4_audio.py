"""Phi-4-multimodal audio features: HF's ``Phi4MultimodalFeatureExtractor`` for one clip.

    frames   = 400-sample windows every 160 samples (16 kHz; a partial last window is dropped)
    frames   = (frames - 0.97 * frames shifted by one, first sample repeated) * 32768   (f32)
    spec     = |rfft(hamming(400, symmetric) * frames, 512)|^2        (f64 FFT, magnitude in f32)
    features = log(max(spec @ mel, 1))                                 ((n_frames, 80) f32)

``mel`` is 80 triangles on the Kaldi mel scale between 0 and 7690 Hz, triangular in mel space
(HF's ``mel_filter_bank(..., triangularize_in_mel_space=True, mel_scale="kaldi")``). The encoder
gives ceil(n_frames / 8) rows per clip (HF's ``audio_embed_sizes``).

Example:
    >>> f = phi4_audio_features(np.zeros(16000, np.float32))
    >>> f.shape
    (98, 80)
"""
from __future__ import annotations

import numpy as np

SAMPLE_RATE, WIN, HOP, N_FFT, PREEMPH = 16000, 400, 160, 512, 0.97


def _kaldi_mel(f):
    return 1127.0 * np.log(1.0 + f / 700.0)


def mel_filters(n_mel: int = 80, fmin: float = 0.0, fmax: float = 7690.0, sr: int = SAMPLE_RATE,
                n_fft: int = N_FFT) -> np.ndarray:
    """(n_fft/2 + 1, n_mel) f32 triangles in Kaldi mel space (HF's filter bank for this model)."""
    n_bins = n_fft // 2 + 1
    centers = np.linspace(_kaldi_mel(fmin), _kaldi_mel(fmax), n_mel + 2)
    bins = _kaldi_mel(sr / ((n_bins - 1) * 2) * np.arange(n_bins))
    slopes = centers[None, :] - bins[:, None]
    diff = np.diff(centers)
    down, up = -slopes[:, :-2] / diff[:-1], slopes[:, 2:] / diff[1:]
    return np.maximum(0.0, np.minimum(down, up)).astype(np.float32)


def phi4_audio_features(pcm, n_mel: int = 80, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Mono PCM at 16 kHz (float, any length >= 400 samples) -> log-mel (n_frames, n_mel) f32."""
    x = np.asarray(pcm)
    if sr != SAMPLE_RATE:
        raise ValueError(f"[phi4_audio_features] the model takes {SAMPLE_RATE} Hz audio, got {sr} Hz")
    if x.ndim != 1 or not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"[phi4_audio_features] PCM must be 1-D mono samples, got {x.dtype} {x.shape}")
    if len(x) < WIN:
        raise ValueError(f"[phi4_audio_features] {len(x)} samples are fewer than one {WIN}-sample window")
    if not np.isfinite(x).all():
        raise ValueError("[phi4_audio_features] PCM holds NaN or inf")
    x = x.astype(np.float32)
    n = (len(x) - WIN) // HOP + 1
    frames = np.lib.stride_tricks.sliding_window_view(x, WIN)[::HOP][:n]
    prev = np.roll(frames, 1, axis=-1)
    prev[:, 0] = prev[:, 1]
    frames = (frames - np.float32(PREEMPH) * prev) * np.float32(32768)
    window = np.hamming(WIN)  # symmetric, as torch.hamming_window(periodic=False), f64
    spec = np.abs(np.fft.rfft(window * frames, n=N_FFT, axis=1).astype(np.complex64)) ** 2
    return np.log(np.maximum(spec @ mel_filters(n_mel, sr=sr), np.float32(1.0))).astype(np.float32)


def n_embed_rows(n_frames: int, compression: int = 8) -> int:
    """Rows the encoder gives for n_frames features: ceil(n_frames / compression)."""
    return -(-n_frames // compression)
