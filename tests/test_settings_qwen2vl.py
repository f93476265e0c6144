"""Qwen2-VL / Qwen2.5-VL checkpoints whose image processor settings differ from the defaults: HF
folder (tiny random model + a non-default preprocessor_config.json) -> graphdsl convert -> graphdsl
embed equals HF's processor (loaded from the same folder) + get_image_features (1e-5 rel L2, f32);
the same file with each carried key dropped must not match; refused settings stop convert.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from cli_run import graphdsl
from hf_refs import need_torch, rel_err
from PIL import Image
from settings_util import rewrite_gguf
from test_models_qwen2vl import _hf_features, _png, qwen_tiny

BOUND = 1e-5
V, Q = "clip.vision.", "graphdsl.qwen2vl."
BASE = {"image_processor_type": "Qwen2VLImageProcessor", "patch_size": 14, "merge_size": 2, "temporal_patch_size": 2}
CASES = {  # preprocessor_config.json, keys dropped (or (key, wrong value)) for the negative controls
    "pixels+bilinear+norm": ({"size": {"shortest_edge": 6272, "longest_edge": 12544}, "resample": 2,
                              "image_mean": [0.4, 0.5, 0.6], "image_std": [0.2, 0.3, 0.25]},
                             [V + "image_min_pixels", V + "image_max_pixels", Q + "resample",
                              (V + "image_mean", [0.48145466, 0.4578275, 0.40821073])]),
    "old-keys+no-rescale+no-normalize": ({"min_pixels": 6272, "max_pixels": 12544, "do_rescale": False,
                                          "do_normalize": False},
                                         [V + "image_min_pixels", V + "image_max_pixels", Q + "do_rescale",
                                          Q + "do_normalize"]),
}


@pytest.fixture(scope="module", params=[False, True], ids=["qwen2vl", "qwen2.5vl"])
def tiny(request):
    return qwen_tiny(request.param)


def _embed(gguf, imgs, out):
    graphdsl("embed", "--mmproj", gguf, *[a for p in imgs for a in ("--image", p)], "-o", out, "-f", "--backend", "cpu")
    return np.load(out)


@pytest.mark.parametrize("case", list(CASES))
def test_non_default_processor_matches_hf(tiny, tmp_path, case):
    need_torch()
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    _, model = tiny
    pre, keys = CASES[case]
    folder = tmp_path / "hf"
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({**BASE, **pre}))
    imgs = [tmp_path / "a.png", tmp_path / "b.png"]
    _png(imgs[0], (50, 90), 1)  # under min_pixels: scaled up
    _png(imgs[1], (200, 300), 2)  # over max_pixels: scaled down
    hp = Qwen2VLImageProcessorPil.from_pretrained(folder)(images=[Image.open(p) for p in imgs], return_tensors="np")
    ref = _hf_features(model, hp["pixel_values"], hp["image_grid_thw"].tolist())
    gguf = tmp_path / "m.gguf"
    graphdsl("convert", folder, "-o", gguf)
    got = _embed(gguf, imgs, tmp_path / "e.npy")
    err = rel_err(got, ref) if got.shape == ref.shape else float("inf")
    print(f"{case}: {ref.shape[0]} rows, rel err {err:.2e}")
    assert err <= BOUND
    for key in keys:
        key, value = key if isinstance(key, tuple) else (key, None)
        bad = tmp_path / "bad.gguf"
        rewrite_gguf(gguf, bad, drop=() if value is not None else (key,),
                     change={key: value} if value is not None else None)
        wrong = _embed(bad, imgs, tmp_path / "w.npy")
        assert wrong.shape != ref.shape or rel_err(wrong, ref) > 1e-3, key


@pytest.mark.parametrize("pre,shown", [({"merge_size": 4}, "merge_size=4"), ({"patch_size": 16}, "patch_size=16")])
def test_refused_settings_stop_convert(tiny, tmp_path, pre, shown):
    _, model = tiny
    folder = tmp_path / "hf"
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({**BASE, **pre}))
    out = tmp_path / "m.gguf"
    r = subprocess.run([sys.executable, "-m", "graphdsl.cli", "convert", str(folder), "-o", str(out)],
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode != 0 and not out.exists()
    assert f"preprocessor_config.json: {shown} is not supported by graphdsl" in r.stderr, r.stderr
