"""Idefics3 / SmolVLM checkpoints whose processor settings differ from the defaults: HF folder
(tiny random model + a non-default Idefics3ImageProcessor) -> graphdsl convert -> graphdsl embed
equals HF's processor + get_image_features (1e-5 rel L2, f32); the same file with each carried
key dropped (read back as HF's default) must not match; refused settings stop convert.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from cli_run import graphdsl
from hf_refs import need_torch, rel_err
from settings_util import controls_miss, convert_and_match
from test_models_idefics3 import _hf_features, _image, idefics3_tiny

BOUND = 1e-5
P = "graphdsl.idefics3."
CASES = {  # processor settings -> the keys carrying them (each dropped once: HF's default must not match)
    "no-split+bicubic+norm": ({"do_image_splitting": False, "resample": 3, "rescale_factor": 1 / 200,
                               "image_mean": [0.4, 0.5, 0.6], "image_std": [0.2, 0.3, 0.25]},
                              [P + "do_image_splitting", P + "resample", P + "rescale_factor",
                               ("clip.vision.image_mean", [0.5] * 3), ("clip.vision.image_std", [0.5] * 3)]),
    "edge64+no-normalize": ({"size": {"longest_edge": 64}, "do_normalize": False},
                            ["clip.vision.preproc_image_size", P + "do_normalize"]),
    "no-resize+no-rescale": ({"do_resize": False, "do_rescale": False}, [P + "do_resize", P + "do_rescale"]),
}


def smolvlm_tiny(seed=0):
    """SmolVLMForConditionalGeneration with idefics3_tiny's sizes (a SmolVLM checkpoint's classes)."""
    torch = need_torch()
    from hf_refs import randomize, tiny_llama
    from transformers import SmolVLMConfig, SmolVLMForConditionalGeneration
    from transformers.models.smolvlm.configuration_smolvlm import SmolVLMVisionConfig
    torch.manual_seed(seed)
    vc = SmolVLMVisionConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2,
                             image_size=32, patch_size=4)
    cfg = SmolVLMConfig(vision_config=vc, text_config=tiny_llama(), scale_factor=2, attn_implementation="eager")
    return cfg, randomize(SmolVLMForConditionalGeneration(cfg), seed)


@pytest.fixture(scope="module")
def tiny():
    return idefics3_tiny()


def _folder(tmp_path, model, pre: dict, as_processor: bool = False, smolvlm: bool = False):
    from transformers import Idefics3ImageProcessorPil, SmolVLMImageProcessorPil
    folder = tmp_path / "hf"
    model.save_pretrained(folder)
    cls = SmolVLMImageProcessorPil if smolvlm else Idefics3ImageProcessorPil
    proc = cls(**{"max_image_size": {"longest_edge": 32}, "size": {"longest_edge": 128}, **pre})
    if as_processor:  # transformers 5's ProcessorMixin.save_pretrained: processor_config.json only
        (folder / "processor_config.json").write_text(json.dumps({"image_processor": proc.to_dict()}, default=int))
    else:
        proc.save_pretrained(folder)
    return folder, proc


def _embed(gguf, img, out):
    graphdsl("embed", "--mmproj", gguf, "--image", img, "-o", out, "-f", "--backend", "cpu")
    return np.load(out)


@pytest.mark.children
@pytest.mark.parametrize("case", list(CASES))
def test_non_default_processor_matches_hf(tiny, tmp_path, case):
    need_torch()
    _, model = tiny
    pre, keys = CASES[case]
    folder, proc = _folder(tmp_path, model, pre, as_processor=case.startswith("edge"))
    img = tmp_path / "i.png"
    _image().save(img)
    px = proc(images=[[_image()]], return_tensors="np")["pixel_values"][0]
    ref = _hf_features(model, px)
    ref = ref.reshape(-1, ref.shape[-1])
    embed = lambda g, out: _embed(g, img, out)  # noqa: E731
    gguf = convert_and_match(folder, ref, embed, tmp_path, case, BOUND)
    from graphdsl.models import from_gguf
    carried = from_gguf(gguf).settings("image")  # what the file says, as from_gguf reads it back
    for path, value in pre.items():
        for sub, v in (value.items() if isinstance(value, dict) else [(None, value)]):
            got_v = carried[f"{path}.{sub}" if sub else path]
            assert got_v == pytest.approx(v) if isinstance(v, (float, list)) else got_v == v, (path, got_v, v)
    controls_miss(gguf, ref, embed, keys, tmp_path)  # the key gone (or the default value) must change the rows


def _convert_fails(folder, out):
    r = subprocess.run([sys.executable, "-m", "graphdsl.cli", "convert", str(folder), "-o", str(out)],
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode != 0 and not out.exists()
    return r.stderr


@pytest.mark.parametrize("field,pre,shown", [
    ("max_image_size.longest_edge", {"max_image_size": {"longest_edge": 64}}, "=64"),
    ("do_convert_rgb", {"do_convert_rgb": False}, "=False"),
])
@pytest.mark.children
def test_refused_settings_stop_convert(tiny, tmp_path, field, pre, shown):
    need_torch()
    _, model = tiny
    folder, _ = _folder(tmp_path, model, {})
    conf = json.loads((folder / "preprocessor_config.json").read_text())
    (folder / "preprocessor_config.json").write_text(json.dumps({**conf, **pre}))
    err = _convert_fails(folder, tmp_path / "m.gguf")
    assert f"preprocessor_config.json: {field}{shown} is not supported by graphdsl (idefics3)" in err, err


@pytest.mark.children
def test_smolvlm_checkpoint_without_splitting_matches_hf(tmp_path):
    """The issue's case on SmolVLM's own classes: splitting off gives HF's 16 rows (not 272)."""
    need_torch()
    _, model = smolvlm_tiny()
    folder, proc = _folder(tmp_path, model, {"do_image_splitting": False, "size": {"longest_edge": 64}},
                           smolvlm=True)
    img = tmp_path / "i.png"
    _image().save(img)
    ref = _hf_features(model, proc(images=[[_image()]], return_tensors="np")["pixel_values"][0])
    ref = ref.reshape(-1, ref.shape[-1])
    gguf = tmp_path / "m.gguf"
    graphdsl("convert", folder, "-o", gguf)
    got = _embed(gguf, img, tmp_path / "e.npy")
    assert got.shape == ref.shape == (16, ref.shape[-1])
    assert rel_err(got, ref) <= BOUND
