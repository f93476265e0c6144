"""InternVL checkpoints whose processor or config settings differ from the defaults: HF folder
(tiny random model + a non-default GotOcr2ImageProcessorPil) -> graphdsl convert -> graphdsl embed
equals HF's processor (crop_to_patches=True, as InternVLProcessor calls it) + get_image_features
(1e-5 rel L2, f32); the same file with each carried key dropped or changed must not match;
refused settings stop convert.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from cli_run import graphdsl
from hf_refs import need_torch
from settings_util import controls_miss, convert_and_match, convert_refuses
from test_models_internvl import hf_features, image, internvl_tiny

BOUND = 1e-5
P = "graphdsl.internvl."
SIZES = [(40, 40), (300, 40)]  # a square (min_patches decides its grid) and a strip (max_patches does)
CASES = {  # variant, processor settings, config overrides -> the keys carrying them
    "tiles+bilinear+norm": ("300m", {"min_patches": 2, "max_patches": 4, "resample": 2, "rescale_factor": 1 / 200,
                                     "image_mean": [0.4, 0.5, 0.6], "image_std": [0.2, 0.3, 0.25]},
                            ["clip.vision.preproc_min_tiles", "clip.vision.preproc_max_tiles", P + "resample",
                             P + "rescale_factor", ("clip.vision.image_mean", [0.5] * 3),
                             ("clip.vision.image_std", [0.5] * 3)]),
    "no-rescale+no-normalize": ("300m", {"do_rescale": False, "do_normalize": False},
                                [P + "do_rescale", P + "do_normalize"]),
    "rms+silu-projector": ("6b", {"projector_hidden_act": "silu"},
                           [(P + "norm_type", "layer"), "graphdsl.vision.projector_act"]),
}


def _folder(tmp_path, variant, pre, config=None):
    from transformers import GotOcr2ImageProcessorPil
    cfg_over = {k: v for k, v in pre.items() if k == "projector_hidden_act"}
    pre = {k: v for k, v in pre.items() if k not in cfg_over}
    cfg, model = internvl_tiny(variant=variant)
    if cfg_over:  # a config setting: rebuild HF's model with it (same seed, same weights)
        from transformers import InternVLForConditionalGeneration
        from hf_refs import randomize
        import torch
        cfg.projector_hidden_act = cfg_over["projector_hidden_act"]
        torch.manual_seed(0)
        model = randomize(InternVLForConditionalGeneration(cfg), 0)
    folder = tmp_path / "hf"
    model.save_pretrained(folder)
    proc = GotOcr2ImageProcessorPil(**{"size": {"height": 32, "width": 32}, **pre})
    proc.save_pretrained(folder)
    return folder, model, proc


def _images(tmp_path):
    paths = []
    for i, (w, h) in enumerate(SIZES):
        paths.append(tmp_path / f"i{i}.png")
        image(w, h, seed=i).save(paths[-1])
    return paths


def _embed(gguf, paths, out):
    argv = ["embed", "--mmproj", gguf, *[a for p in paths for a in ("--image", p)], "-o", out, "-f", "--backend", "cpu"]
    graphdsl(*argv)
    return np.load(out)


def _reference(model, proc, paths):
    from PIL import Image
    rows = [hf_features(model, proc(images=[Image.open(p).convert("RGB")], crop_to_patches=True,
                                    return_tensors="np")["pixel_values"]) for p in paths]
    return np.concatenate([r.reshape(-1, r.shape[-1]) for r in rows])


@pytest.mark.children
@pytest.mark.parametrize("case", list(CASES))
def test_non_default_settings_match_hf(tmp_path, case):
    need_torch()
    variant, pre, keys = CASES[case]
    folder, model, proc = _folder(tmp_path, variant, pre)
    paths = _images(tmp_path)
    ref = _reference(model, proc, paths)
    embed = lambda g, out: _embed(g, paths, out)  # noqa: E731
    gguf = convert_and_match(folder, ref, embed, tmp_path, case, BOUND)
    from graphdsl.models import from_gguf
    carried = from_gguf(gguf).settings("image")
    for path, v in pre.items():
        if path in carried:
            assert carried[path] == pytest.approx(v) if isinstance(v, (float, list)) else carried[path] == v, path
    controls_miss(gguf, ref, _or_none(embed), keys, tmp_path)


def _or_none(embed):
    """embed, None for a file that no longer loads (norm_type "layer": LayerNorms, whose biases an
    RMSNorm tower's file lacks; the error lists them)."""
    def run(g, out):
        try:
            return embed(g, out)
        except AssertionError as e:
            assert "tensors do not fit" in str(e), e
            return None
    return run


@pytest.mark.children
@pytest.mark.parametrize("pre,shown", [
    ({"size": {"height": 64, "width": 64}}, "size.height=64"),
    ({"do_convert_rgb": False}, "do_convert_rgb=False"),
    ({"do_resize": False, "max_patches": 1}, "do_resize=False"),
])
def test_refused_processor_settings_stop_convert(tmp_path, pre, shown):
    need_torch()
    folder, _, _ = _folder(tmp_path, "300m", {})
    err = convert_refuses(folder, tmp_path, pre, shown)
    assert "(internvl)" in err, err


@pytest.mark.children
@pytest.mark.parametrize("field,value", [("vision_feature_layer", -2), ("vision_feature_select_strategy", "full"),
                                         ("vision_config.use_absolute_position_embeddings", False)])
def test_refused_config_settings_stop_convert(tmp_path, field, value):
    import subprocess
    import sys
    need_torch()
    folder, _, _ = _folder(tmp_path, "300m", {})
    conf = json.loads((folder / "config.json").read_text())
    *parents, last = field.split(".")
    d = conf
    for p in parents:
        d = d[p]
    d[last] = value
    (folder / "config.json").write_text(json.dumps(conf))
    out = tmp_path / "m.gguf"
    r = subprocess.run([sys.executable, "-m", "graphdsl.cli", "convert", str(folder), "-o", str(out)],
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode != 0 and not out.exists()
    assert f"config.json: {field}={value!r} is not supported by graphdsl (internvl)" in r.stderr, r.stderr
