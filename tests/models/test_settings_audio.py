"""Whisper / Voxtral checkpoints whose feature extractor differs from what graphdsl's log-mel
computes: graphdsl convert refuses them, naming preprocessor_config.json, the field and the value
(the encoder's own sizes are carried by its config: tests/models/test_models_whisper.py converts
non-default ones). A default feature extractor (the negative control) converts."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hf_refs import need_torch, voxtral_tiny, whisper_tiny_random


def _convert(tmp_path, make, pre):
    need_torch()
    from transformers import WhisperFeatureExtractor
    _, m = make()
    folder = tmp_path / "hf"
    m.save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=16).save_pretrained(folder)
    conf = json.loads((folder / "preprocessor_config.json").read_text())
    (folder / "preprocessor_config.json").write_text(json.dumps({**conf, **pre}))
    out = tmp_path / "m.gguf"
    r = subprocess.run([sys.executable, "-m", "graphdsl.cli", "convert", str(folder), "-o", str(out)],
                       capture_output=True, text=True, timeout=300, check=False)
    return r, out


@pytest.mark.parametrize("make", [whisper_tiny_random, voxtral_tiny], ids=["whisper", "voxtral"])
@pytest.mark.parametrize("pre,shown", [
    ({"sampling_rate": 8000}, "sampling_rate=8000"), ({"hop_length": 320}, "hop_length=320"),
    ({"feature_size": 80}, "feature_size=80"), ({"dither": 1.0}, "dither=1.0"),
])
@pytest.mark.children
def test_refused_feature_extractor_settings(tmp_path, make, pre, shown):
    r, out = _convert(tmp_path, make, pre)
    assert r.returncode != 0 and not out.exists()
    assert f"preprocessor_config.json: {shown} is not supported by graphdsl (whisper_enc)" in r.stderr, r.stderr


@pytest.mark.children
def test_default_feature_extractor_converts(tmp_path):
    r, out = _convert(tmp_path, whisper_tiny_random, {})
    assert r.returncode == 0 and out.exists(), r.stderr[-2000:]
