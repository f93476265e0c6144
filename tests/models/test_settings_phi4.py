"""Phi-4-multimodal checkpoints whose image processor settings differ from the defaults: HF folder
(tiny random model + preprocessor_config.json with dynamic_hd 2) -> graphdsl convert -> graphdsl
embed equals HF's Phi4MultimodalImageProcessor + image embedding (1e-5 rel L2, f32); the same file
without graphdsl.phi4.dynamic_hd (HF's 36) must not match; refused settings stop convert.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from cli_run import graphdsl
from hf_refs import need_torch, rel_err
from phi4_hf import hf_image_embeds, hf_process, tiny_phi4
from settings_util import rewrite_gguf

BOUND = 1e-5


@pytest.fixture(scope="module")
def tiny():
    return tiny_phi4()


def _folder(tmp_path, model, pre):
    folder = tmp_path / "hf"
    model.save_pretrained(folder)
    base = {"image_processor_type": "Phi4MultimodalImageProcessor", "size": {"height": 32, "width": 32},
            "patch_size": 4, "dynamic_hd": 36}
    (folder / "preprocessor_config.json").write_text(json.dumps({**base, **pre}))
    return folder


@pytest.mark.children
def test_dynamic_hd_is_carried(tiny, tmp_path):
    need_torch()
    _, model = tiny
    a = np.random.default_rng(0).integers(0, 256, (50, 60, 3), dtype=np.uint8)  # 4 crops at 36, 2 at 2
    (hf,) = hf_process([(a, 32, 4, 2)])
    ref = hf_image_embeds(model, hf["image_pixel_values"], hf["image_sizes"], hf["image_attention_mask"])
    from PIL import Image
    img = tmp_path / "i.png"
    Image.fromarray(a).save(img)
    gguf = tmp_path / "m.gguf"
    graphdsl("convert", _folder(tmp_path, model, {"dynamic_hd": 2}), "-o", gguf)
    graphdsl("embed", "--mmproj", gguf, "--image", img, "-o", tmp_path / "e.npy", "--backend", "cpu")
    got = np.load(tmp_path / "e.npy")
    err = rel_err(got, ref) if got.shape == ref.shape else float("inf")
    print(f"phi4 dynamic_hd 2: {ref.shape[0]} rows, rel err {err:.2e}")
    assert err <= BOUND
    bad = tmp_path / "bad.gguf"  # negative control: the key gone, HF's default 36 (4 crops) is used
    rewrite_gguf(gguf, bad, drop=("graphdsl.phi4.dynamic_hd",))
    graphdsl("embed", "--mmproj", bad, "--image", img, "-o", tmp_path / "w.npy", "--backend", "cpu")
    wrong = np.load(tmp_path / "w.npy")
    assert wrong.shape != ref.shape or rel_err(wrong, ref) > 1e-3


@pytest.mark.parametrize("field,pre,shown,arch", [
    ("size.height", {"size": {"height": 64, "width": 64}}, "=64", "phi4_vision"),
    ("do_normalize", {"do_normalize": False}, "=False", "phi4_vision"),
    # the feature extractor's fields sit in the same file (HF: Phi4MultimodalProcessor)
    ("audio_compression_rate", {"audio_compression_rate": 4}, "=4", "phi4_audio"),
    ("sampling_rate", {"sampling_rate": 8000}, "=8000", "phi4_audio"),
    ("feature_size", {"feature_size": 80}, "=80", "phi4_audio"),  # the tiny encoder reads 16 bands
])
@pytest.mark.children
def test_refused_settings_stop_convert(tiny, tmp_path, field, pre, shown, arch):
    need_torch()
    _, model = tiny
    out = tmp_path / "m.gguf"
    r = subprocess.run([sys.executable, "-m", "graphdsl.cli", "convert", str(_folder(tmp_path, model, pre)), "-o",
                        str(out)], capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode != 0 and not out.exists()
    assert f"preprocessor_config.json: {field}{shown} is not supported by graphdsl ({arch})" in r.stderr, r.stderr
