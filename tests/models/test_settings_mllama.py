"""Mllama checkpoints whose image processor settings differ from the defaults: HF folder (tiny
random model + a non-default MllamaImageProcessor) -> graphdsl convert -> graphdsl embed
--cross-output equals HF's processor + vision model + projector (1e-5 rel L2, f32); the same file
with each carried key dropped must not match; refused settings stop convert.
"""
from __future__ import annotations

import numpy as np
import pytest
from cli_run import graphdsl
from hf_refs import need_torch
from settings_util import controls_miss, convert_and_match, convert_refuses
from test_models_mllama import S, T, _png, mllama_tiny

BOUND = 1e-5
V = "graphdsl.vision."
PRE = {"resample": 3, "rescale_factor": 1 / 200, "image_mean": [0.4, 0.5, 0.6]}
KEYS = [V + "resample", V + "rescale_factor", ("clip.vision.image_mean", [0.5] * 3)]


@pytest.fixture(scope="module")
def tiny():
    return mllama_tiny()


def _proc(**kw):
    from transformers import MllamaImageProcessorPil
    return MllamaImageProcessorPil(**{"size": {"height": S, "width": S}, "max_image_tiles": T, **kw})


def _memory(gguf, img, tmp_path):
    graphdsl("embed", "--mmproj", gguf, "--image", img, "-o", tmp_path / "e.npy", "-f", "--cross-output",
             tmp_path / "c.npz", "--backend", "cpu")
    with np.load(tmp_path / "c.npz") as z:
        return z["memory.0"]


@pytest.mark.children
def test_non_default_processor_matches_hf(tiny, tmp_path):
    torch = need_torch()
    from PIL import Image
    _, model = tiny
    folder = tmp_path / "hf"
    model.save_pretrained(folder)
    proc = _proc(**PRE)
    proc.save_pretrained(folder)
    img = tmp_path / "i.png"
    _png(img)
    out = proc(images=[[Image.open(img)]], return_tensors="np")
    with torch.no_grad():
        v = model.model.vision_model(pixel_values=torch.from_numpy(out["pixel_values"]),
                                     aspect_ratio_ids=torch.from_numpy(out["aspect_ratio_ids"]),
                                     aspect_ratio_mask=torch.from_numpy(out["aspect_ratio_mask"])).last_hidden_state
        ref = model.model.multi_modal_projector(v).reshape(1, -1, model.config.text_config.hidden_size)[0].numpy()
    embed = lambda g, out: _memory(g, img, tmp_path)  # noqa: E731 - _memory names its own files
    gguf = convert_and_match(folder, ref, embed, tmp_path, "mllama", BOUND)
    controls_miss(gguf, ref, embed, KEYS, tmp_path)


@pytest.mark.parametrize("pre,shown", [({"max_image_tiles": 2}, "max_image_tiles=2"),
                                       ({"size": {"height": 32, "width": 32}}, "size.height=32")])
@pytest.mark.children
def test_refused_settings_stop_convert(tiny, tmp_path, pre, shown):
    _, model = tiny
    folder = tmp_path / "hf"
    model.save_pretrained(folder)
    _proc().save_pretrained(folder)
    convert_refuses(folder, tmp_path, pre, f"{shown} is not supported by graphdsl (mllama)")
