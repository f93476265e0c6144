"""Qwen2-Audio's pre-processing: HF's ``Qwen2AudioProcessor`` (a ``WhisperFeatureExtractor`` called
with ``padding="max_length"``, truncation and ``return_attention_mask``), as the encoder reads it.

HF pads (or cuts) every clip to one window of 2 n_ctx frames (chunk_length s: 3000 frames at
n_ctx 1500), takes its log-mel, and runs the encoder over the whole window with the frames past
the clip's end masked as keys (``feature_attention_mask``): T = ceil(samples / 160) real frames
give L = ceil(T / 2) rows after the conv stem, and the decoder reads the first (L - 2) // 2 + 1
pooled rows. Those rows depend on the mel frames 0 .. 2L only (the stem's two convolutions
reach one frame past the last real row's), so this returns exactly those 2L + 1 frames (the
whole window where that is longer), padding frames included: they are the log-mel of the
clip's end and the zeros after it, which only the whole window's log-mel gives.

A clip longer than the window is cut to its first chunk_length seconds, as HF's processor cuts it.

Example:
    >>> from graphdsl.preprocess.qwen2audio import qwen2audio_features
    >>> mel, n_frames = qwen2audio_features(np.zeros(16000, np.float32) + 0.1, n_mels=128)
    >>> mel.shape, n_frames                 # 1 s: 100 real frames, 50 stem rows read frames 0 .. 100
    ((128, 101), 100)
"""
from __future__ import annotations

import numpy as np

from .audio import DEFAULT_MAX_SECONDS, HOP_LENGTH, AudioSource, load_audio, log_mel_spectrogram


def frames_read(n_frames: int, n_ctx: int = 1500) -> int:
    """The mel frames the encoder's stem reads for a clip of ``n_frames`` real frames in a window
    of 2 ``n_ctx``: 2 ceil(n_frames / 2) + 1, or the whole window."""
    return min(2 * n_ctx, 2 * ((n_frames + 1) // 2) + 1)


def qwen2audio_features(audio: AudioSource, n_mels: int = 128, *, n_ctx: int = 1500, sample_rate: int | None = None,
                        max_seconds: float = DEFAULT_MAX_SECONDS) -> tuple[np.ndarray, int]:
    """(log-mel f32 (n_mels, frames_read(T)), T): the frames of HF's padded window the encoder
    reads, and T, the clip's real frames (HF's ``feature_attention_mask.sum()``, at most 2 n_ctx).

    Args:
        audio: path, file object or PCM array (see ``preprocess.audio.load_audio``).
        n_mels: mel bins (HF's feature_size).
        n_ctx: the encoder's positions (HF's max_source_positions); the window is 2 n_ctx frames,
            2 n_ctx x 160 samples (HF's chunk_length x 16000).
        sample_rate: rate of an array input (default 16000).
        max_seconds: longer audio is refused before it is read (see ``load_audio``).
    """
    if n_ctx < 3:  # fewer positions give no output row even for a full window
        raise ValueError(f"[qwen2audio_features] n_ctx must be >= 3, got {n_ctx}")
    x = load_audio(audio, sample_rate, max_seconds=max_seconds)
    n_samples = 2 * n_ctx * HOP_LENGTH
    x = x[:n_samples]  # HF's truncation=True: the decoder never sees the rest
    n_frames = -(-x.size // HOP_LENGTH)
    mel = log_mel_spectrogram(np.pad(x, (0, n_samples - x.size)), n_mels)
    return np.ascontiguousarray(mel[:, :frames_read(n_frames, n_ctx)]), n_frames
