"""Whisper log-mel against openai-whisper (torch.stft) and HF's WhisperFeatureExtractor.

Our STFT runs in float64. Measured max abs differences (80 and 128 bins):
  * HF's float64 NumPy path (``_np_extract_fbank_features``): <= 2.4e-7 on every signal;
  * openai-whisper and HF's torch path (identical to each other, float32 torch.stft):
    noise 3.3e-6, silence 2.4e-7, 45 s clip 6e-6 (80) / 1.8e-5 (128), espeak speech 3.6e-5.
The larger numbers are the float32 reference's own error, not ours: they sit in mel bins whose
power is ~1e-7 of the frame's peak (the resampled speech has almost nothing near 8 kHz), where
float32 STFT rounding (~1e-7 of the frame energy) is a large relative error. There the torch
result is equally far from the float64 references, and ours is within 2e-7 of them. So against a
float32 reference the test asserts |ours - ref32| <= 1e-5 + |ref32 - ref64| element-wise.
"""

import importlib
import importlib.util
import os
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest

from graphdsl.preprocess import audio, batch

DATA = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data")
SPEECH = os.path.join(DATA, "speech_16k.wav")  # espeak-ng, see tests/data/README.md
TOL = 1e-5
TOL64 = 1e-6  # against float64 references


def _assert_close_f32(ours, ref32, ref64):
    """ours within TOL of a float32 reference, beyond it only where that reference itself is
    as far from the float64 one (see the module docstring)."""
    d = np.abs(ours - ref32)
    assert np.all(d <= TOL + np.abs(ref32 - ref64)), d.max()
    assert d.max() <= 1e-4


def _whisper_audio():
    """openai-whisper's audio module. Its package __init__ pulls tiktoken/numba (not needed
    here), so on ImportError the module is loaded from the package directory without it."""
    pytest.importorskip("torch")
    try:
        return importlib.import_module("whisper.audio")
    except ImportError:
        spec = importlib.util.find_spec("whisper")
        if spec is None or not spec.submodule_search_locations:
            pytest.skip("openai-whisper not installed (pip install --no-deps openai-whisper)")
        if "_whisper_ref" not in sys.modules:
            pkg = types.ModuleType("_whisper_ref")
            pkg.__path__ = list(spec.submodule_search_locations)
            sys.modules["_whisper_ref"] = pkg
        return importlib.import_module("_whisper_ref.audio")


@pytest.fixture(scope="module")
def wa():
    return _whisper_audio()


@pytest.fixture(scope="module")
def hf_fe():
    tr = pytest.importorskip("transformers")
    return {n: tr.WhisperFeatureExtractor(feature_size=n) for n in (80, 128)}


def _speech():
    sf = pytest.importorskip("soundfile")
    x, sr = sf.read(SPEECH, dtype="float32")
    assert sr == 16000 and x.ndim == 1
    return x


def _signal(name):
    rng = np.random.default_rng(1234)
    if name == "speech":
        return _speech()
    if name == "noise":
        return (0.3 * rng.standard_normal(5 * 16000)).astype(np.float32)
    if name == "silence":
        return np.zeros(3 * 16000, np.float32)
    if name == "45s":  # the speech at varying gain over quiet noise, exactly 45 s
        s = _speech()
        reps = [s * g for g in np.linspace(0.2, 1.0, 45 * 16000 // s.size + 1)]
        x = np.concatenate(reps)[: 45 * 16000] + 0.003 * rng.standard_normal(45 * 16000)
        return x.astype(np.float32)
    raise KeyError(name)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filters_equal_whisper_npz(n_mels):
    spec = importlib.util.find_spec("whisper")
    if spec is None:
        pytest.skip("openai-whisper not installed")
    path = os.path.join(spec.submodule_search_locations[0], "assets", "mel_filters.npz")
    with np.load(path) as f:
        ref = f[f"mel_{n_mels}"]
    ours = audio.mel_filters(n_mels)
    assert ours.dtype == ref.dtype and ours.shape == ref.shape
    assert np.array_equal(ours, ref)  # bit-identical, not just close


@pytest.mark.parametrize("name", ["speech", "noise", "silence", "45s"])
@pytest.mark.parametrize("n_mels", [80, 128])
def test_features_match_whisper(wa, name, n_mels):
    x = _signal(name)
    ref = wa.log_mel_spectrogram(wa.pad_or_trim(x), n_mels).numpy()
    ours = audio.whisper_features(x, n_mels)
    assert ours.shape == ref.shape == (n_mels, 3000) and ours.dtype == np.float32
    pytest.importorskip("transformers")
    from transformers import WhisperFeatureExtractor

    ref64 = WhisperFeatureExtractor(feature_size=n_mels)._np_extract_fbank_features(wa.pad_or_trim(x)[None], "cpu")[0]
    _assert_close_f32(ours, ref, ref64)


@pytest.mark.parametrize("name", ["speech", "noise", "silence", "45s"])
@pytest.mark.parametrize("n_mels", [80, 128])
def test_features_match_hf(hf_fe, wa, name, n_mels):
    x = _signal(name)
    fe = hf_fe[n_mels]
    ref = fe(x, sampling_rate=16000, return_tensors="np").input_features[0]  # torch STFT path
    ours = audio.whisper_features(x, n_mels)
    # HF's float64 NumPy path (used when torch is absent) is a second, independent reference.
    ref64 = fe._np_extract_fbank_features(wa.pad_or_trim(x)[None], "cpu")[0]
    assert np.abs(ours - ref64).max() <= TOL64
    _assert_close_f32(ours, ref, ref64)


def test_chunks_45s_match_whisper_transcribe(wa, hf_fe):
    x = _signal("45s")
    chunks, n_valid = audio.whisper_chunks(x, 80)
    # whisper.transcribe: mel of the audio + 30 s of zeros, cut every 3000 frames; the number
    # of content frames is mel.shape[-1] - 3000 (= ceil(n / 160) here, n being a multiple of 160).
    mel = wa.log_mel_spectrogram(x, 80, padding=wa.N_SAMPLES).numpy()
    mel64 = hf_fe[80]._np_extract_fbank_features(np.pad(x, (0, wa.N_SAMPLES))[None], "cpu")[0]
    content = mel.shape[-1] - wa.N_FRAMES
    assert n_valid == [3000, 1500] and sum(n_valid) == content
    assert len(chunks) == 2
    for i, c in enumerate(chunks):
        ref = wa.pad_or_trim(mel[:, i * 3000 : (i + 1) * 3000], 3000)
        ref64 = wa.pad_or_trim(mel64[:, i * 3000 : (i + 1) * 3000], 3000)
        assert c.shape == (80, 3000)
        assert np.abs(c - ref64).max() <= TOL64
        _assert_close_f32(c, ref, ref64)


def test_chunks_45s_match_hf_long_form(hf_fe):
    x = _signal("45s")
    chunks, n_valid = audio.whisper_chunks(x, 80)
    ours = np.concatenate(chunks, axis=1)[:, : sum(n_valid)]
    # HF's long-form call (truncation off) gives all 4500 frames with the clamp over the clip.
    ref = hf_fe[80](x, sampling_rate=16000, truncation=False, padding="longest").input_features[0]
    ref64 = hf_fe[80]._np_extract_fbank_features(x[None], "cpu")[0]
    assert ref.shape == ref64.shape == ours.shape
    # The last frame's window runs past the end of the audio: HF reflects the audio there while
    # the chunked form sees the zero padding of the next window (as whisper.transcribe does), so
    # that one frame is compared only loosely.
    assert np.abs(ours[:, :-1] - ref64[:, :-1]).max() <= TOL64
    _assert_close_f32(ours[:, :-1], ref[:, :-1], ref64[:, :-1])
    assert np.abs(ours[:, -1] - ref[:, -1]).max() < 0.1  # measured 0.017


def test_short_audio_one_chunk_with_hf_attention_mask(hf_fe):
    x = _speech()  # 49326 samples: not a multiple of the hop
    chunks, n_valid = audio.whisper_chunks(x)
    out = hf_fe[80](x, sampling_rate=16000, return_attention_mask=True, return_tensors="np")
    assert len(chunks) == 1 and n_valid == [int(out.attention_mask[0].sum())]
    assert np.array_equal(chunks[0], audio.whisper_features(x))


def test_log_mel_matches_whisper_unpadded(wa):
    x = _signal("noise")[:12345]
    ref = wa.log_mel_spectrogram(x, 80, padding=1000).numpy()
    ours = audio.log_mel_spectrogram(x, 80, padding=1000)
    assert ours.shape == ref.shape and np.abs(ours - ref).max() <= TOL


def test_int16_and_multichannel_inputs():
    x = _speech()
    pcm16 = np.round(x * 32768).astype(np.int16)  # the WAV's own samples
    ref = audio.whisper_features(x)
    assert np.array_equal(audio.whisper_features(pcm16), ref)
    stereo = np.stack([pcm16, pcm16], axis=1)  # [n, channels], soundfile's layout
    assert np.array_equal(audio.whisper_features(stereo), ref)
    assert np.array_equal(audio.load_audio(stereo.T, channel_axis=0), audio.load_audio(stereo))
    # Mixdown is the channel mean.
    other = np.zeros_like(x)
    assert np.allclose(audio.load_audio(np.stack([x, other], 1)), x / 2, atol=1e-7)


def test_resampling_keeps_tone_in_place():
    pytest.importorskip("soxr")
    t44 = np.arange(44100 * 2) / 44100
    t16 = np.arange(16000 * 2) / 16000
    tone44 = (0.5 * np.sin(2 * np.pi * 1000 * t44)).astype(np.float32)
    tone16 = (0.5 * np.sin(2 * np.pi * 1000 * t16)).astype(np.float32)
    a = audio.load_audio(tone44, 44100)
    assert abs(a.size - tone16.size) <= 1
    m44 = audio.whisper_features(tone44, sample_rate=44100)[:, 20:180]
    m16 = audio.whisper_features(tone16)[:, 20:180]
    assert np.array_equal(m44.argmax(0), m16.argmax(0))
    assert np.abs(m44 - m16).max() < 0.05  # a resampler is not bit-exact; 0.05 = 0.2 in log10


def test_files_wav_flac_ogg(tmp_path):
    sf = pytest.importorskip("soundfile")
    x = _speech()
    assert np.array_equal(audio.load_audio(SPEECH), x)
    flac = tmp_path / "s.flac"
    sf.write(flac, np.stack([x, x], 1), 16000, subtype="PCM_16")  # stereo, lossless
    assert np.array_equal(audio.load_audio(flac), x)
    ogg = tmp_path / "s.ogg"
    sf.write(ogg, x, 16000, format="OGG", subtype="VORBIS")
    y = audio.load_audio(ogg)
    n = min(x.size, y.size)
    assert abs(x.size - y.size) < 2000 and np.corrcoef(x[:n], y[:n])[0, 1] > 0.9
    assert audio.whisper_features(str(flac)).shape == (80, 3000)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros(0, np.float32), "empty"),
        (np.full(1000, np.nan, np.float32), "NaN or inf"),
        (np.array([0.0, np.inf, 0.1], np.float32), "NaN or inf"),
        (np.zeros((10, 2, 2), np.float32), "shape"),
        (np.array(["a", "b"]), "PCM"),
    ],
)
def test_bad_input_raises(bad, match):
    with pytest.raises(ValueError, match=match):
        audio.whisper_features(bad)


def test_zero_length_after_resampling_raises():
    pytest.importorskip("soxr")
    with pytest.raises(ValueError, match="after resampling"):
        audio.load_audio(np.zeros(1, np.float32), 48000)


def test_unreadable_file_raises(tmp_path):
    pytest.importorskip("soundfile")
    p = tmp_path / "junk.wav"
    p.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    with pytest.raises(ValueError, match="cannot read"):
        audio.load_audio(p)


def test_parallel_equals_serial():
    rng = np.random.default_rng(7)
    items = [(0.1 * rng.standard_normal(int(rng.integers(8000, 600000)))).astype(np.float32) for _ in range(6)]
    seen = []
    par = batch.preprocess_audio(items, max_workers=3, progress=lambda d, t: seen.append((d, t)))
    ser = [audio.whisper_chunks(x) for x in items]
    assert seen[0] == (0, 6) and seen[-1] == (6, 6) and len(seen) == 7
    for (pc, pv), (sc, sv) in zip(par, ser):
        assert pv == sv and all(np.array_equal(a, b) for a, b in zip(pc, sc))


# -- hostile inputs: absurd rates and lengths are refused before anything is read or resampled ----------
def _wav_with_rate(path, rate, seconds=12.5):
    """A ~400 KB 16-bit mono WAV written at 16 kHz, then its header's rate edited to ``rate``."""
    sf = pytest.importorskip("soundfile")
    sf.write(path, np.zeros(int(16000 * seconds), np.int16), 16000, subtype="PCM_16")
    blob = bytearray(path.read_bytes())
    assert blob[24:28] == (16000).to_bytes(4, "little")  # fmt chunk: sample rate, then byte rate
    blob[24:28], blob[28:32] = rate.to_bytes(4, "little"), (2 * rate).to_bytes(4, "little")
    path.write_bytes(bytes(blob))
    return path


@pytest.mark.children
def test_wav_header_saying_2_hz_is_refused_in_a_child(tmp_path):
    """The issue's file: a 400 KB WAV whose header says 2 Hz was resampled x8000 into 6 GB."""
    bad = _wav_with_rate(tmp_path / "2hz.wav", 2)
    good = _wav_with_rate(tmp_path / "16k.wav", 16000)  # negative control: the same file, rate untouched
    child = textwrap.dedent(f"""
        import resource, time
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
        from graphdsl.preprocess import audio
        assert audio.load_audio({str(good)!r}).shape == (200000,)
        t0 = time.perf_counter()
        try:
            audio.whisper_chunks({str(bad)!r})
        except ValueError as e:
            print(f"{{time.perf_counter() - t0:.3f}} {{e}}")
    """)
    p = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr[-2000:]
    seconds, message = p.stdout.strip().split(" ", 1)
    assert message == f"[audio] {str(bad)!r}: sample rate 2 Hz is not a whole number in 1000..768000"
    assert float(seconds) < 1.0


@pytest.mark.parametrize("rate", [0, -16000, 999, 768001, 2**32, 44100.5, float("nan"), float("inf"), "fast"])
def test_absurd_array_rates_are_refused(rate):
    with pytest.raises(ValueError, match=r"sample rate .* is not a whole number in 1000\.\.768000"):
        audio.load_audio(np.zeros(1000, np.float32), rate)
    assert audio.load_audio(np.zeros(1000, np.float32), 1000).size == 16000  # the bounds themselves pass
    assert audio.load_audio(np.zeros(7680, np.float32), 768000).size == 160


def test_duration_cap_is_checked_before_resampling(monkeypatch):
    import soxr

    monkeypatch.setattr(soxr, "resample", lambda *a: pytest.fail("resampled before the duration check"))
    x = np.zeros(2 * 44100 + 1, np.float32)
    with pytest.raises(ValueError, match=r"88201 frames at 44100 Hz are 2 s, longer than max_seconds=2 "
                                         r"\(32000 samples at 16000 Hz\); pass a larger max_seconds"):
        audio.whisper_features(x, sample_rate=44100, max_seconds=2)
    stereo = np.zeros((2, 16001), np.int16)  # channels first: the time axis is the other one
    with pytest.raises(ValueError, match="16001 frames at 16000 Hz"):
        audio.load_audio(stereo, channel_axis=0, max_seconds=1)
    with pytest.raises(ValueError, match="max_seconds must be > 0"):
        audio.load_audio(x, max_seconds=0)
    # The default cap (3 hours): 3 h + 1 s of 1 kHz int8 is 10 MB in, would be 691 MB out.
    with pytest.raises(ValueError, match="longer than max_seconds=10800"):
        audio.load_audio(np.zeros(10801 * 1000, np.int8), 1000)
    monkeypatch.undo()
    assert audio.load_audio(x, 44100, max_seconds=2.1).size == 32000  # the option raises the cap


def test_long_file_refused_from_its_header_before_reading(tmp_path, monkeypatch):
    sf = pytest.importorskip("soundfile")
    path = _wav_with_rate(tmp_path / "long.wav", 16000, seconds=3)
    monkeypatch.setattr(sf.SoundFile, "read", lambda *a, **k: pytest.fail("read before the duration check"))
    with pytest.raises(ValueError, match=r"long.wav' \(its header\): 48000 frames at 16000 Hz are 3 s, longer than "
                                         r"max_seconds=2"):
        audio.load_audio(path, max_seconds=2)
    monkeypatch.undo()
    assert audio.load_audio(path, max_seconds=3).size == 48000


def test_files_read_block_by_block_equal_one_read(tmp_path):
    """Blocks of _READ_SAMPLES mixed down one by one give the same samples as reading the whole file."""
    sf = pytest.importorskip("soundfile")
    rng = np.random.default_rng(5)
    n = 2 * (audio._READ_SAMPLES // 3) + 1234
    pcm = rng.integers(-32768, 32767, (n, 3), dtype=np.int16)
    sf.write(tmp_path / "3ch.wav", pcm, 16000, subtype="PCM_16")
    whole, _ = sf.read(tmp_path / "3ch.wav", dtype="float32", always_2d=True)
    ref = whole.mean(axis=1, dtype=np.float64).astype(np.float32)
    assert np.array_equal(audio.load_audio(tmp_path / "3ch.wav"), ref)
