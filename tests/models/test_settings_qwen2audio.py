"""Qwen2-Audio checkpoints with non-default settings through graphdsl convert + embed, against HF's
decoder rows (test_models_qwen2audio's reference): a 2 s window (max_source_positions 100 with the
processor's chunk_length 2, the two HF requires to agree), a tanh GELU or SiLU (activation_function
"gelu_new" / "silu", carried as graphdsl.audio.act: without the key the file reads as llama.cpp's erf
GELU and must miss); processor settings graphdsl does not compute are refused by convert."""
from __future__ import annotations

import numpy as np
import pytest
from hf_refs import rel_err
from settings_util import convert_and_match, convert_refuses, rewrite_gguf
from test_models_qwen2audio import BOUND, _folder, hf_decoder_rows, hf_processor, pcm, tiny_qwen2audio

pytestmark = pytest.mark.children


def _embed(wavs):
    from cli_run import graphdsl

    def embed(gguf, out):
        args = [a for w in wavs for a in ("--audio", w)]
        r = graphdsl("embed", "--mmproj", gguf, *args, "-o", out, "--backend", "cpu")
        return np.load(out) if r.returncode == 0 else None
    return embed


def _wavs(tmp_path, clips):
    import soundfile as sf
    paths = []
    for i, x in enumerate(clips):
        paths.append(tmp_path / f"a{i}.wav")
        sf.write(paths[-1], x, 16000, subtype="FLOAT")
    return paths


def test_two_second_window(tmp_path):
    """max_source_positions 100 and chunk_length 2: a 3.1 s clip is cut to 2 s (200 frames, the whole
    window), a 0.47 s one masked; both HF's rows."""
    _, model = tiny_qwen2audio(seed=1, n_ctx=100)
    clips = [pcm(3.1, 1), pcm(0.47, 2)]
    ref = hf_decoder_rows(model, hf_processor(clips, chunk_length=2))
    assert ref.shape[0] == 50 + 12  # 47 frames: 24 stem rows, 12 pooled
    convert_and_match(_folder(tmp_path, model, chunk_length=2), ref, _embed(_wavs(tmp_path, clips)), tmp_path,
                      "qwen2audio 2 s window")


@pytest.mark.parametrize("act", ["gelu_new", "silu"])
def test_activation_is_carried(tmp_path, act):
    _, model = tiny_qwen2audio(seed=2, act=act)
    clips = [pcm(1.7, 3)]
    ref = hf_decoder_rows(model, hf_processor(clips))
    embed = _embed(_wavs(tmp_path, clips))
    gguf = convert_and_match(_folder(tmp_path, model), ref, embed, tmp_path, f"qwen2audio {act}")
    # the same comparison fails (tanh and erf GELU are close: 5e-5 here)
    bad = tmp_path / "bad.gguf"
    rewrite_gguf(gguf, bad, drop=("graphdsl.audio.act",))
    err = rel_err(embed(bad, tmp_path / "w.npy"), ref)
    print(f"graphdsl.audio.act dropped (erf GELU): {err:.2e}")
    assert err > BOUND


@pytest.mark.parametrize("pre,shown", [
    ({"feature_size": 80}, "feature_size=80"), ({"chunk_length": 20}, "chunk_length=20"),
    ({"sampling_rate": 8000}, "sampling_rate=8000"), ({"dither": 1.0}, "dither=1.0"),
    ({"padding_value": 0.5}, "padding_value=0.5"),
])
def test_refused_settings_stop_convert(tmp_path, pre, shown):
    _, model = tiny_qwen2audio()
    err = convert_refuses(_folder(tmp_path, model), tmp_path, pre, shown)
    assert "is not supported by graphdsl (qwen2audio)" in err


def test_default_settings_convert(tmp_path):
    """The negative control of the refusals: HF's defaults convert."""
    from cli_run import graphdsl
    _, model = tiny_qwen2audio()
    graphdsl("convert", _folder(tmp_path, model), "-o", tmp_path / "m.gguf")
