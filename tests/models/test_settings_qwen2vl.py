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
from hf_refs import need_torch
from PIL import Image
from settings_util import controls_miss, convert_and_match
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


@pytest.mark.children
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
    embed = lambda g, out: _embed(g, imgs, out)  # noqa: E731
    gguf = convert_and_match(folder, ref, embed, tmp_path, case, BOUND)
    controls_miss(gguf, ref, embed, keys, tmp_path)


@pytest.mark.children
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


# vision_config fields the file must carry (sweep misses): HF config overrides, the preprocessor's
# merge_size, and the keys whose loss must break the match (dropped, or (key, wrong value))
CONFIG_CASES = {
    # 560 // 14 = 40 patches, no whole number of merges of 3: convert built its example graph there
    "qwen2vl-merge3": (False, {"spatial_merge_size": 3}, 3, [(V + "spatial_merge_size", 2)]),
    "qwen2.5vl-merge3": (True, {"spatial_merge_size": 3, "window_size": 84, "fullatt_block_indexes": [1]}, 3,
                         [(V + "spatial_merge_size", 2)]),
    # no full-attention layer: windows in every layer (an empty wa_layer_indexes does not survive a GGUF)
    "qwen2.5vl-no-fullatt": (True, {"fullatt_block_indexes": []}, 2, [V + "n_wa_pattern"]),
}


def _tiny_with(v25: bool, overrides: dict, seed=0):
    torch = need_torch()
    from hf_refs import randomize
    from test_models_qwen2vl import _text_config
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLConfig,
                              Qwen2VLForConditionalGeneration)
    torch.manual_seed(seed)
    common = dict(patch_size=14, spatial_merge_size=2, temporal_patch_size=2, num_heads=4)
    if v25:
        vc = {**common, "depth": 2, "hidden_size": 32, "intermediate_size": 48, "out_hidden_size": 48,
              "window_size": 56, "fullatt_block_indexes": [1], **overrides}
        cls, model_cls = Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    else:
        vc = {**common, "depth": 2, "embed_dim": 32, "hidden_size": 48, "mlp_ratio": 2, **overrides}
        cls, model_cls = Qwen2VLConfig, Qwen2VLForConditionalGeneration
    cfg = cls(vision_config=vc, text_config=_text_config(), attn_implementation="eager")
    return randomize(model_cls(cfg), seed)


def _embed_or_none(gguf, imgs, out):
    r = subprocess.run([sys.executable, "-m", "graphdsl.cli", "embed", "--mmproj", str(gguf),
                        *[a for p in imgs for a in ("--image", str(p))], "-o", str(out), "-f", "--backend", "cpu"],
                       capture_output=True, text=True, timeout=300, check=False)
    return np.load(out) if r.returncode == 0 else None


@pytest.mark.children
@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_vision_config_survives_the_file(tmp_path, case):
    """HF folder with the case's vision_config -> graphdsl convert -> embed of odd-sized images equals
    HF; the file without the key that carries the setting (or with the default's value) must not."""
    need_torch()
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    v25, overrides, merge, keys = CONFIG_CASES[case]
    model = _tiny_with(v25, overrides)
    folder = tmp_path / "hf"
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({**BASE, "merge_size": merge}))
    imgs = [tmp_path / "a.png", tmp_path / "b.png"]
    _png(imgs[0], (173, 95), 1)
    _png(imgs[1], (128, 211), 2)
    hp = Qwen2VLImageProcessorPil.from_pretrained(folder)(images=[Image.open(p) for p in imgs], return_tensors="np")
    ref = _hf_features(model, hp["pixel_values"], hp["image_grid_thw"].tolist())
    gguf = convert_and_match(folder, ref, lambda g, out: _embed(g, imgs, out), tmp_path, case, BOUND)
    # a wrong merge may not even load
    controls_miss(gguf, ref, lambda g, out: _embed_or_none(g, imgs, out), keys, tmp_path)
