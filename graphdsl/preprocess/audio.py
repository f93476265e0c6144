"""Whisper audio pre-processing: PCM (any rate, any channel count) -> log-mel [n_mel, 3000].

The numbers follow openai-whisper's ``whisper.audio.log_mel_spectrogram`` (itself what HF's
``WhisperFeatureExtractor`` reproduces): 16 kHz, n_fft 400, hop 160, periodic Hann, centred
STFT with reflect padding, last frame dropped, power spectrum, Slaney mel filters, log10 with a
1e-10 floor, clamp to max - 8, then (x + 4) / 4.

The STFT runs in float64 NumPy (pocketfft), block by block so that 10 minutes of audio never
materialises a [60000, 400] frame matrix; the mel projection and the log run in float32 like the
reference. The result is within 3e-7 of HF's float64 NumPy path; against torch's float32 STFT
(openai-whisper, HF with torch) the difference is that reference's own rounding, up to ~4e-5 in
mel bins ~70 dB below the frame's peak (see tests/models/test_preprocess_audio.py).

Example:
    >>> from graphdsl.preprocess import audio
    >>> chunks, n_valid = audio.whisper_chunks("speech.wav", n_mels=128)
    >>> chunks[0].shape
    (128, 3000)
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_SECONDS = 30
N_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE  # 480000 samples per encoder window
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames per encoder window

# Longest input accepted by default: 3 hours, 173 M samples (691 MB of float32) at 16 kHz, about
# the memory of the largest image `max_pixels` allows. A header saying 2 Hz made a 400 KB WAV
# resample x8000 into 6 GB; the duration is now checked before anything is read or resampled.
DEFAULT_MAX_SECONDS = 3 * 3600
# Rates outside these are a broken header, not audio: below 1 kHz there is no speech band left to
# resample; 768 kHz is the highest rate audio interfaces record.
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1000, 768_000
# Samples per read (all channels): files are decoded and mixed down block by block, so a file with
# many channels (or a header that lies about its length) never holds more than 4 MB of them at once.
_READ_SAMPLES = 1 << 20

# Frames per STFT block: 512 x 400 float64 is 1.6 MB, so a block's frames, spectrum and squares
# stay in cache; measured 10% faster on 10 min than 2048, the same on 30 s.
_BLOCK_FRAMES = 512

AudioSource = str | os.PathLike | np.ndarray | Any


# --------------------------------------------------------------------------- mel filters


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney mel scale (librosa ``htk=False``): linear below 1 kHz, logarithmic above."""
    f = np.asanyarray(f, dtype=np.float64)
    f_sp = 200.0 / 3
    mels = f / f_sp
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-12) / min_log_hz) / logstep, mels)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


@functools.lru_cache(maxsize=8)
def mel_filters(n_mels: int = 80, sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT) -> np.ndarray:
    """Slaney-normalised triangular mel filterbank, as ``librosa.filters.mel(sr, n_fft, n_mels)``.

    openai-whisper ships this matrix precomputed in ``assets/mel_filters.npz``; computing it here
    avoids that file and librosa. The arithmetic mirrors librosa step by step (float64 ramps
    stored into a float32 matrix, then scaled by the float64 area norm) so the result is
    bit-identical to the shipped arrays for 80 and 128 bins (tested).

    Args:
        n_mels: number of mel bins (whisper uses 80; large-v3 uses 128).
        sample_rate: sample rate in Hz; the filters span 0 .. sample_rate / 2.
        n_fft: FFT size.

    Returns:
        float32 array [n_mels, 1 + n_fft // 2], read-only (it is cached).
    """
    if n_mels < 1:
        raise ValueError(f"[mel_filters] n_mels must be >= 1, got {n_mels}")
    fft_freqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sample_rate)
    mel_pts = np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2.0), n_mels + 2)
    mel_f = _mel_to_hz(mel_pts)
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fft_freqs)
    weights = np.zeros((n_mels, 1 + n_fft // 2), dtype=np.float32)
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    enorm = 2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels])
    weights *= enorm[:, np.newaxis]
    weights.setflags(write=False)
    return weights


@functools.lru_cache(maxsize=8)
def _interleaved_filters(n_mels: int) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(mel_filters(n_mels).T, 2, axis=0))


@functools.lru_cache(maxsize=2)
def _hann(n_fft: int) -> np.ndarray:
    # Periodic (not symmetric) Hann, as torch.hann_window(periodic=True) and whisper use.
    w = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)
    w.setflags(write=False)
    return w


# --------------------------------------------------------------------------- input handling


def _pcm_to_float(pcm: np.ndarray) -> np.ndarray:
    """Integer PCM -> float32 in [-1, 1) by the full-scale convention soundfile and ffmpeg use."""
    if pcm.dtype == np.bool_ or not (np.issubdtype(pcm.dtype, np.number)):
        raise ValueError(f"[audio] expected float or integer PCM, got dtype {pcm.dtype}")
    if np.issubdtype(pcm.dtype, np.complexfloating):
        raise ValueError(f"[audio] expected real PCM, got dtype {pcm.dtype}")
    if np.issubdtype(pcm.dtype, np.unsignedinteger):
        # Unsigned PCM (WAV 8-bit) is offset binary: mid-scale is silence.
        half = float(np.iinfo(pcm.dtype).max // 2 + 1)
        return ((pcm.astype(np.float64) - half) / half).astype(np.float32)
    if np.issubdtype(pcm.dtype, np.integer):
        return (pcm.astype(np.float64) / float(-np.iinfo(pcm.dtype).min)).astype(np.float32)
    return pcm.astype(np.float32, copy=False)


def _check_rate(rate: Any, what: str) -> int:
    try:
        ok = float(rate) == int(rate) and MIN_SAMPLE_RATE <= int(rate) <= MAX_SAMPLE_RATE
    except (TypeError, ValueError, OverflowError):  # None, NaN, inf, strings
        ok = False
    if not ok:
        raise ValueError(f"[audio] {what}: sample rate {rate!r} Hz is not a whole number in "
                         f"{MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE}")
    return int(rate)


def _check_duration(n_frames: int, rate: int, max_seconds: float, what: str, claimed: str = "") -> None:
    if n_frames > max_seconds * rate:
        raise ValueError(f"[audio] {what}{claimed}: {n_frames} frames at {rate} Hz are {n_frames / rate:.0f} s, "
                         f"longer than max_seconds={max_seconds:g} ({n_frames * SAMPLE_RATE // rate} samples at "
                         f"{SAMPLE_RATE} Hz); pass a larger max_seconds to allow it")


def _mono(pcm: np.ndarray, channel_axis: int) -> np.ndarray:
    pcm = _pcm_to_float(pcm)
    if pcm.ndim == 2:
        return pcm.mean(axis=channel_axis, dtype=np.float64).astype(np.float32) if pcm.size else pcm.reshape(-1)
    return pcm


def _read_file(source: Any, max_seconds: float) -> tuple[np.ndarray, int, str]:
    import soundfile

    what = repr(os.fspath(source) if isinstance(source, (str, os.PathLike)) else source)
    try:
        f = soundfile.SoundFile(source)
    except (RuntimeError, soundfile.LibsndfileError, TypeError) as e:
        raise ValueError(f"[audio] cannot read {what}: {e}") from e
    with f:
        rate = _check_rate(f.samplerate, what)
        _check_duration(f.frames, rate, max_seconds, what, " (its header)")
        blocks, n, step = [], 0, max(1, _READ_SAMPLES // max(f.channels, 1))
        while True:
            try:
                block = f.read(step, dtype="float32", always_2d=True)
            except (RuntimeError, soundfile.LibsndfileError) as e:
                raise ValueError(f"[audio] cannot read {what}: {e}") from e
            if not len(block):
                break
            n += len(block)
            _check_duration(n, rate, max_seconds, what)  # a header that understated the length
            blocks.append(_mono(block, -1))
    return (np.concatenate(blocks) if blocks else np.zeros(0, np.float32)), rate, what


def load_audio(
    source: AudioSource,
    sample_rate: int | None = None,
    *,
    channel_axis: int = -1,
    max_seconds: float = DEFAULT_MAX_SECONDS,
) -> np.ndarray:
    """Read or convert audio to the model's input: mono float32 PCM at 16 kHz.

    Rules: integer PCM is scaled by its full-scale value (int16 / 32768, int32 / 2**31, uint8
    offset by 128); multi-channel audio is averaged to mono; any other rate is resampled with
    soxr (``HQ``). Non-finite samples are rejected rather than propagated, because a single NaN
    turns the whole spectrogram (through its global max) into NaN.

    Args:
        source: a path or file object that ``soundfile`` reads (WAV, FLAC, OGG, ...), or an array
            [n_samples] or [n_samples, n_channels] (``channel_axis`` picks the channel axis).
        sample_rate: rate of an array input in Hz (default 16000); ignored for files, whose
            header gives it.
        channel_axis: axis holding channels for 2-D arrays (-1: soundfile's layout).
        max_seconds: longer inputs are refused (from a file's header, before reading; from an
            array's length, before resampling). The default, 3 hours, bounds the output at
            173 M samples (691 MB).

    Returns:
        float32 array [n_samples_16k].

    Raises:
        ValueError: unreadable file, a sample rate outside 1 kHz .. 768 kHz, longer than
            ``max_seconds``, empty audio, non-finite samples, or no samples left after
            resampling.
    """
    if not max_seconds > 0:
        raise ValueError(f"[audio] max_seconds must be > 0, got {max_seconds!r}")
    if isinstance(source, (np.ndarray, list, tuple)):
        pcm = np.asarray(source)
        what = f"array {pcm.shape} {pcm.dtype}"
        rate = _check_rate(SAMPLE_RATE if sample_rate is None else sample_rate, what)
        if pcm.ndim not in (1, 2):
            raise ValueError(f"[audio] expected [n] or [n, channels] PCM, got shape {pcm.shape} from {what}")
        time_axis = 0 if pcm.ndim == 1 else 1 - (channel_axis % 2)
        _check_duration(pcm.shape[time_axis], rate, max_seconds, what)
        pcm = _mono(pcm, channel_axis)
    else:
        pcm, rate, what = _read_file(source, max_seconds)
    if pcm.size == 0:
        raise ValueError(f"[audio] empty audio from {what}")
    bad = np.count_nonzero(~np.isfinite(pcm))
    if bad:
        raise ValueError(f"[audio] {bad} of {pcm.size} samples are NaN or inf in {what}")
    if rate != SAMPLE_RATE:
        import soxr

        pcm = soxr.resample(pcm, rate, SAMPLE_RATE).astype(np.float32, copy=False)
        if pcm.size == 0:
            raise ValueError(f"[audio] {what} at {rate} Hz has no samples left after resampling to {SAMPLE_RATE} Hz")
    return np.ascontiguousarray(pcm)


# --------------------------------------------------------------------------- log-mel


def log_mel_spectrogram(audio: np.ndarray, n_mels: int = 80, *, padding: int = 0) -> np.ndarray:
    """Whisper's log-mel of 16 kHz mono audio, the same contract as
    ``whisper.audio.log_mel_spectrogram(audio, n_mels, padding)``.

    The clamp to ``max - 8`` uses the maximum over the whole input, so slicing this result into
    windows is what whisper's long-form transcription does.

    Args:
        audio: float32 [n_samples] at 16 kHz (use ``load_audio`` for anything else).
        n_mels: number of mel bins.
        padding: zero samples appended before the STFT.

    Returns:
        float32 [n_mels, (n_samples + padding) // 160].
    """
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"[log_mel_spectrogram] expected non-empty mono [n_samples], got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("[log_mel_spectrogram] audio contains NaN or inf")
    if padding > 0:
        x = np.pad(x, (0, padding))
    half = N_FFT // 2
    # Centred frames with reflect padding, as torch.stft(center=True, pad_mode="reflect").
    padded = np.pad(x, half, mode="reflect")
    n_frames = x.size // HOP_LENGTH  # torch gives 1 + n // hop frames; whisper drops the last
    if n_frames == 0:
        raise ValueError(f"[log_mel_spectrogram] need at least {HOP_LENGTH} samples, got {x.size}")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP_LENGTH][:n_frames]
    window = _hann(N_FFT)
    # rfft's complex output viewed as interleaved (re, im) floats: squaring it and multiplying
    # by filters repeated twice along the frequency axis sums re^2 + im^2 inside the matmul,
    # which avoids two strided passes over the spectrum.
    filters2 = _interleaved_filters(n_mels)  # [2 * n_freq, n_mels]
    mel = np.empty((n_frames, n_mels), dtype=np.float32)
    buf = np.empty((min(_BLOCK_FRAMES, n_frames), N_FFT), dtype=np.float64)
    sq = np.empty((buf.shape[0], filters2.shape[0]), dtype=np.float32)
    for start in range(0, n_frames, _BLOCK_FRAMES):
        stop = min(start + _BLOCK_FRAMES, n_frames)
        n = stop - start
        np.multiply(frames[start:stop], window, out=buf[:n])  # float32 * float64: exact upcast
        spec = np.fft.rfft(buf[:n], axis=-1).view(np.float64)
        np.multiply(spec, spec, out=sq[:n], casting="same_kind")
        np.matmul(sq[:n], filters2, out=mel[start:stop])
    log_spec = np.log10(np.maximum(mel, np.float32(1e-10))).T
    log_spec = np.maximum(log_spec, log_spec.max() - np.float32(8.0))
    return np.ascontiguousarray((log_spec + np.float32(4.0)) / np.float32(4.0))


def whisper_features(
    audio: AudioSource, n_mels: int = 80, *, sample_rate: int | None = None, max_seconds: float = DEFAULT_MAX_SECONDS
) -> np.ndarray:
    """One encoder window: audio padded with zeros (or trimmed) to 30 s, then log-mel.

    Equals HF ``WhisperFeatureExtractor(feature_size=n_mels)(audio).input_features[0]`` and
    ``log_mel_spectrogram(pad_or_trim(audio))`` of openai-whisper.

    Args:
        audio: path, file object or PCM array (see ``load_audio``).
        n_mels: number of mel bins.
        sample_rate: rate of an array input (default 16000).
        max_seconds: longer audio is refused before it is read (see ``load_audio``).

    Returns:
        float32 [n_mels, 3000].
    """
    x = load_audio(audio, sample_rate, max_seconds=max_seconds)
    x = x[:N_SAMPLES] if x.size >= N_SAMPLES else np.pad(x, (0, N_SAMPLES - x.size))
    return log_mel_spectrogram(x, n_mels)


def whisper_chunks(
    audio: AudioSource,
    n_mels: int = 80,
    *,
    sample_rate: int | None = None,
    max_seconds: float = DEFAULT_MAX_SECONDS,
) -> tuple[list[np.ndarray], list[int]]:
    """Audio of any length as consecutive 30 s encoder windows.

    The audio is zero-padded to a whole number of 30 s windows and its log-mel computed once (so
    the ``max - 8`` clamp is global, as in whisper's ``transcribe``), then cut every 3000 frames.
    Audio up to 30 s gives one chunk equal to ``whisper_features``. A frame counts as valid when
    its centre lies inside the audio: ``ceil(n_samples / 160)`` frames in all, the same count as
    the attention mask of HF's ``WhisperFeatureExtractor``. Arguments as ``whisper_features``.

    Returns:
        (chunks, n_valid): chunks is a list of float32 [n_mels, 3000]; n_valid[i] in 1..3000 is
        the number of frames of chunks[i] that carry audio (the rest is padding).
    """
    x = load_audio(audio, sample_rate, max_seconds=max_seconds)
    n_chunks = -(-x.size // N_SAMPLES)
    mel = log_mel_spectrogram(np.pad(x, (0, n_chunks * N_SAMPLES - x.size)), n_mels)
    total_valid = -(-x.size // HOP_LENGTH)
    chunks = [np.ascontiguousarray(mel[:, i * N_FRAMES : (i + 1) * N_FRAMES]) for i in range(n_chunks)]
    n_valid = [min(N_FRAMES, total_valid - i * N_FRAMES) for i in range(n_chunks)]
    return chunks, n_valid
