"""``graphdsl preprocess audio`` equals the HF feature extractor each mode names (issue 23 item
3): Whisper's log-mel without --mode, each audio arch by --mode (a new one fails
``test_every_audio_mode_has_a_reference`` until it has a row in AUDIO_REFS), run in a subprocess on
WAV clips of several lengths at 80 (HF's default) and 2 other mel counts; and ``--mmproj`` writes,
byte for byte, what ``embed_files`` feeds the audio arch."""
from __future__ import annotations

import numpy as np
import pytest
from cli_run import graphdsl
from test_cli_preprocess import _mmproj, _npz

from graphdsl.models import registry

pytest.importorskip("transformers")


# -- audio: Whisper's log-mel (no --mode), each audio arch by --mode, and --mmproj ---------------------
def _pcm(n, seed):
    t = np.arange(n) / 16000
    x = 0.3 * np.sin(2 * np.pi * (200 + 900 * t) * t) + 0.05 * np.random.default_rng(seed).standard_normal(n)
    return np.round(np.clip(x, -1, 1) * 32767).astype(np.int16)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """WAV files of 0.7 s, 3 s and 29 s (one 30 s window each, as HF's extractors take one), and
    the PCM HF is given: the int16 samples / 32768."""
    import wave
    d = tmp_path_factory.mktemp("wav")
    out = {}
    for i, n in enumerate((11200, 48000, 464000)):
        pcm = _pcm(n, i)
        with wave.open(str(d / f"c{i}.wav"), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            w.writeframes(pcm.tobytes())
        out[d / f"c{i}.wav"] = pcm.astype(np.float32) / 32768
    return out


def _whisper_ref(pcms, n_mels):
    """HF WhisperFeatureExtractor's float64 NumPy path on the clip padded to 30 s (torch's STFT
    path is float32; tests/models/test_preprocess_audio.py holds both): within 1e-6."""
    from transformers import WhisperFeatureExtractor
    fe = WhisperFeatureExtractor(feature_size=n_mels)
    return [fe._np_extract_fbank_features(np.pad(x, (0, 480000 - len(x)))[None].astype(np.float64), "cpu")
            for x in pcms], 1e-6


def _phi4_audio_ref(pcms, n_mels):
    """HF Phi4MultimodalFeatureExtractor: within 1e-5 (its mel product runs in float32 in another
    order; tests/models/test_preprocess_phi4_audio.py measured 1.9e-6)."""
    from transformers import Phi4MultimodalFeatureExtractor
    fe = Phi4MultimodalFeatureExtractor(feature_size=n_mels)
    return [fe(x, sampling_rate=16000, return_tensors="np")["audio_input_features"][0] for x in pcms], 1e-5


def _qwen2_5omni_audio_ref(pcms, n_mels):
    """Qwen2.5-Omni's processor: HF's WhisperFeatureExtractor on the clip padded to 30 s, cut to the
    frames its feature_attention_mask keeps (ceil(samples / 160))."""
    feats, tol = _whisper_ref(pcms, n_mels)
    return [f[0][:, :-(-len(x) // 160)] for f, x in zip(feats, pcms)], tol


def _qwen2audio_ref(pcms, n_mels):
    """Qwen2-Audio's processor: HF's WhisperFeatureExtractor on the clip padded to 30 s, cut to the
    frames the encoder's rows read: 2 ceil(T / 2) + 1 for T = ceil(samples / 160) real frames."""
    feats, tol = _whisper_ref(pcms, n_mels)
    return [f[0][:, :min(3000, 2 * ((-(-len(x) // 160) + 1) // 2) + 1)] for f, x in zip(feats, pcms)], tol


AUDIO_REFS = {None: _whisper_ref, "whisper_enc": _whisper_ref, "phi4_audio": _phi4_audio_ref,
              "qwen2_5omni_audio": _qwen2_5omni_audio_ref, "qwen2audio": _qwen2audio_ref}
# mel bins of a mode without --n-mels: HF's feature extractor default (80), or the one the arch's
# encoder config defaults to where it differs (Qwen2.5-Omni's and Qwen2-Audio's encoders and shipped
# extractors: 128)
DEFAULT_MELS = {"qwen2_5omni_audio": 128, "qwen2audio": 128}
AUDIO_CASES = [(m, n) for m in [None, *sorted(a.name for a in registry.ARCHS.values() if a.modality == "audio")]
               for n in (None, 64, 128)]


def test_every_audio_mode_has_a_reference():
    from graphdsl.cli.preprocess import audio_modes
    assert sorted(audio_modes()) == sorted(k for k in AUDIO_REFS if k), "a new audio --mode needs its HF reference"


@pytest.mark.parametrize("mode,n_mels", AUDIO_CASES, ids=[f"{m or 'whisper'}-{n or 'default'}" for m, n in AUDIO_CASES])
def test_cli_audio_mode_equals_hf(clips, tmp_path, mode, n_mels):
    pytest.importorskip("torch")
    out = tmp_path / "mel.npz"
    graphdsl("preprocess", "audio", *clips, *(["--mode", mode] if mode else []),
             *(["--n-mels", n_mels] if n_mels else []), "-o", out)
    got = _npz(out)
    n = n_mels or DEFAULT_MELS.get(mode, 80)
    ref, tol = AUDIO_REFS[mode](list(clips.values()), n)
    assert len(got) == len(ref) == len(clips)
    for g, w in zip(got, ref):
        assert g["input_features"].shape == w.shape and g["input_features"].dtype == np.float32
        assert np.abs(g["input_features"] - w).max() <= tol
    # negative control: the same comparison tells another mel count's features apart
    other, _ = AUDIO_REFS[mode](list(clips.values())[:1], 80 if n != 80 else 128)
    assert other[0].shape != got[0]["input_features"].shape or np.abs(other[0] - got[0]["input_features"]).max() > tol


@pytest.mark.parametrize("arch", [a for a in registry.ARCHS.values() if a.modality == "audio"], ids=lambda a: a.name)
def test_mmproj_audio_is_what_embed_feeds(clips, tmp_path, arch, monkeypatch):
    from graphdsl import embed
    gguf = _mmproj(tmp_path, arch)
    paths = list(clips)[:2]
    graphdsl("preprocess", "audio", *paths, "--mmproj", gguf, "-o", tmp_path / "x.npz")
    got = _npz(tmp_path / "x.npz")
    seen = []
    real = embed.batch._build
    monkeypatch.setattr(embed.batch, "_build", lambda items, *a, **kw: seen.append(list(items)) or real(items, *a, **kw))
    embed.embed_files(gguf, audios=paths, backend="cpu", n_threads=2)
    (items,) = seen
    assert len(items) == len(got) == len(paths)
    for (kind, data), g in zip(items, got):
        want = np.stack(data) if isinstance(data, list) else data
        assert kind == "audio" and sorted(g) == ["input_features"]
        assert g["input_features"].dtype == want.dtype and g["input_features"].tobytes() == want.tobytes()
