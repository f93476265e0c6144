"""The CLI's caps on what one input may cost, and their overrides (issue 12 items 12, 13, 18)."""
from __future__ import annotations

import subprocess
import sys
import wave

import numpy as np
import pytest
from PIL import Image


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "graphdsl.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def _wav(path, seconds, rate=16000):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.zeros(int(seconds * rate), np.int16).tobytes())
    return path


def test_max_seconds_refuses_and_raises_the_audio_cap(tmp_path):
    wav = _wav(tmp_path / "a.wav", 2.0)
    refused = _cli("preprocess", "audio", wav, "--max-seconds", "1")
    assert refused.returncode != 0 and "max_seconds" in refused.stderr, refused.stderr
    ok = _cli("preprocess", "audio", wav, "--max-seconds", "3")
    assert ok.returncode == 0 and "1 window(s)" in ok.stdout, ok.stderr


def test_max_out_pixels_refuses_and_raises_the_image_cap(tmp_path):
    img = tmp_path / "i.png"
    Image.new("RGB", (40, 30), (10, 200, 30)).save(img)
    refused = _cli("preprocess", "image", img, "--mode", "siglip", "--size", "64", "--max-out-pixels", "1000")
    assert refused.returncode != 0 and "max_out_pixels" in refused.stderr, refused.stderr
    ok = _cli("preprocess", "image", img, "--mode", "siglip", "--size", "64", "--max-out-pixels", "4096")
    assert ok.returncode == 0 and "f32[3, 64, 64]" in ok.stdout, ok.stderr


@pytest.mark.parametrize("flag", ["--max-seconds", "--max-out-pixels"])
def test_caps_must_be_positive(flag):
    assert _cli("preprocess", "image", "x.png", flag, "0").returncode == 2


def test_no_check_finite_lets_inspect_load_a_file_with_nan_weights(tmp_path):
    from test_hostile_files_gguf import clip_spec, make
    from test_hostile_files_weights import _retyped
    path = make(tmp_path / "nan.gguf", _retyped(clip_spec(), "v.blk.1.ffn_up.weight", "f32", float("nan")))
    refused = _cli("inspect", path)
    assert refused.returncode != 0 and "hold NaN or inf" in refused.stderr, refused.stderr
    ok = _cli("inspect", path, "--no-check-finite")
    assert ok.returncode == 0 and "total" in ok.stdout, ok.stderr
