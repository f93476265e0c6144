"""Phi-4-multimodal audio (graphdsl.models.phi4_audio) against HF: Phi4MultimodalForCausalLM's audio
embedding in speech mode (Conformer encoder + speech projector), small random config, for 3 s and
30 s of features from preprocess.phi4_audio (tests/models/test_preprocess_phi4_audio.py holds them to
HF's feature extractor). Bound: 1e-5 relative L2 in f32 (printed).
"""
from __future__ import annotations

import numpy as np
import pytest
from hf_refs import rel_err
from phi4_hf import hf_audio_embeds, randomize_audio_buffers, tiny_phi4

import graphdsl
from graphdsl.models import phi4_audio as pa
from graphdsl.preprocess.phi4_audio import phi4_audio_features
from target import BACKEND

BOUND = 1e-5


@pytest.fixture(scope="module")
def tiny():
    cfg, model = tiny_phi4()
    randomize_audio_buffers(model)
    c = pa.config_from_hf(cfg)
    return model, c, pa.hf_to_gguf(model.state_dict(), c)


def _features(seconds, n_mel, seed=0):
    pcm = (np.random.default_rng(seed).standard_normal(int(seconds * 16000)) * 0.1).astype(np.float32)
    return phi4_audio_features(pcm, n_mel=n_mel)


def _run(c, w, mel, backend):
    return graphdsl.compile(pa.build(c, mel.shape[0]), backend, weights=w)(mel=mel)["embd"]


@pytest.mark.parametrize("seconds", [3, 30])
def test_audio_embeds_match_hf(tiny, seconds):
    model, c, w = tiny
    mel = _features(seconds, c.n_mel)
    ref = hf_audio_embeds(model, mel)
    backends = (BACKEND, "reference") if seconds == 3 else (BACKEND,)
    for backend in backends:
        out = _run(c, w, mel, backend)
        err = rel_err(out, ref)
        print(f"phi4 audio {seconds} s ({mel.shape[0]} frames -> {out.shape[0]} rows) on {backend}: {err:.2e}")
        assert err <= BOUND


@pytest.mark.parametrize("broken", ["symmetric bias", "no half step", "non-causal conv"])
def test_negative_controls_fail(tiny, broken):
    model, c, w = tiny
    mel = _features(3, c.n_mel, seed=1)
    ref = hf_audio_embeds(model, mel)
    w2 = dict(w)
    if broken == "symmetric bias":  # the bias read as |j - i|: transposed table rows
        w2["a.attn_rel_bias.weight"] = np.ascontiguousarray(w["a.attn_rel_bias.weight"][::-1])
    elif broken == "no half step":
        for k in w:
            if k.endswith("ffn_down.weight") or k.endswith("ffn_down.bias"):
                w2[k] = w[k] * np.float32(2)
    else:
        for k in w:
            if k.endswith("conv_dw.weight"):
                w2[k] = np.ascontiguousarray(w[k][::-1])
    err = rel_err(_run(c, w2, mel, BACKEND), ref)
    print(f"phi4 audio broken ({broken}): {err:.2e}")
    # the tiny model's FFN and attention add little to the residual (random weights, std 0.05):
    # measured 2e-4 (bias) and 4e-4 (conv order), 20x past the bound
    assert err > 10 * BOUND


def test_bad_input_raises(tiny):
    _, c, _ = tiny
    m = pa.Phi4Audio(c)
    with pytest.raises(ValueError, match="log-mel"):
        m.features(np.zeros((10, c.n_mel + 1), np.float32))
    with pytest.raises(ValueError, match="chunks"):
        m.features(np.zeros((8 * 501, c.n_mel), np.float32))


def test_bench_and_inspect_take_the_files_own_features(tmp_path):
    """demo.model_graph (behind graphdsl bench / inspect / view) feeds a Phi-4 audio file its own
    features (the arch's "audio" hook), as embed does, not Whisper's log-mel (found in review: a
    (16, 3000) log-mel went in and the encoder refused it)."""
    from graphdsl import compile as compile_, demo
    from graphdsl.convert.hf import MMPROJ_ARCH
    from graphdsl.convert.writer import write_gguf
    from graphdsl.embed import Embedder
    from graphdsl.models.registry import ARCHS
    arch = ARCHS["phi4_audio"]
    cfg = arch.examples[0]
    rng = np.random.default_rng(0)
    w = {k: ((rng.standard_normal(n.shape) * 0.05).astype(np.float32), "f32")
         for k, n in Embedder(None, {"audio": arch.block(cfg)}).weight_graph().weights.items()}
    path = tmp_path / "a.gguf"
    write_gguf(path, MMPROJ_ARCH, [("general.name", "t"), *arch.config_to_gguf(cfg)], w)
    g, feeds, weights, _ = demo.model_graph(str(path), modality="audio")
    (x,) = feeds.values()
    assert x.shape[-1] == cfg.n_mel  # (T, n_mel) Phi-4 features, not Whisper's (n_mel, 3000)
    out = compile_(g, "cpu", weights=weights)(feeds)
    assert all(np.isfinite(v).all() for v in out.values())
