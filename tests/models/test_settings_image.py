"""CLIP/LLaVA and SigLIP/Gemma 3 checkpoints whose image processor settings differ from the
defaults: HF folder (tiny random model + a non-default processor) -> graphdsl convert -> graphdsl
embed equals HF's processor + get_image_features (1e-5 rel L2, f32), CLIP's shortest edge before
its centre crop included; the same file with each carried key dropped or set to a wrong value
must not match; refused settings stop convert.
"""
from __future__ import annotations

import numpy as np
import pytest
from cli_run import graphdsl
from hf_refs import gemma3_tiny, llava_tiny, need_torch
from PIL import Image
from settings_util import controls_miss, convert_and_match, convert_refuses

BOUND = 1e-5
V = "graphdsl.vision."
SIDE = {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}}
CASES = {  # arch, processor settings, keys to drop (or (key, wrong value)) for the negative controls
    "llava-bilinear+rescale+norm": ("llava", {"resample": 2, "rescale_factor": 1 / 200, "image_mean": [0.4, 0.5, 0.6],
                                              "image_std": [0.2, 0.3, 0.25]},
                                    [V + "resample", V + "rescale_factor",
                                     ("clip.vision.image_mean", [0.48145466, 0.4578275, 0.40821073]),
                                     ("clip.vision.image_std", [0.26862954, 0.26130258, 0.27577711])]),
    "llava-pad+no-normalize": ("llava", {"do_pad": True, "do_normalize": False}, [V + "do_pad", V + "do_normalize"]),
    "llava-no-rescale": ("llava", {"do_rescale": False}, [V + "do_rescale"]),
    # HF resizes the shortest edge to size.shortest_edge, then centre-crops the tower's 32 (zero-padding
    # a smaller image); without the key graphdsl resizes to the tower's size
    "llava-shortest-edge-above": ("llava", {"size": {"shortest_edge": 45}}, [V + "shortest_edge"]),
    "llava-pad+shortest-edge-below": ("llava", {"do_pad": True, "size": {"shortest_edge": 20}},
                                      [V + "shortest_edge", (V + "shortest_edge", 32)]),
    "gemma3-default": ("gemma3", {}, [(V + "resample", 3)]),  # HF's bilinear, where SigLIP's is bicubic
    "gemma3-bicubic+no-rescale": ("gemma3", {"resample": 3, "do_rescale": False}, [V + "resample", V + "do_rescale"]),
}


def _image():
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (45, 70, 3), dtype=np.uint8))


def _model_and_processor(arch, pre):
    torch = need_torch()
    if arch == "llava":
        from transformers import LlavaImageProcessorPil
        cfg, m = llava_tiny()
        proc = LlavaImageProcessorPil(**{**SIDE, **pre})

        def features(px):
            with torch.no_grad():
                return m.model.get_image_features(torch.from_numpy(px), vision_feature_layer=-2,
                                                  vision_feature_select_strategy="default").pooler_output[0].numpy()
    else:
        from transformers import Gemma3ImageProcessorPil
        cfg, m = gemma3_tiny()
        proc = Gemma3ImageProcessorPil(**{"size": {"height": 32, "width": 32}, **pre})

        def features(px):
            with torch.no_grad():
                return m.model.get_image_features(torch.from_numpy(px)).pooler_output[0].numpy()
    return m, proc, features


def _embed(gguf, img, out):
    graphdsl("embed", "--mmproj", gguf, "--image", img, "-o", out, "-f", "--backend", "cpu")
    return np.load(out)


@pytest.mark.children
@pytest.mark.parametrize("case", list(CASES))
def test_non_default_processor_matches_hf(tmp_path, case):
    arch, pre, keys = CASES[case]
    m, proc, features = _model_and_processor(arch, pre)
    folder = tmp_path / "hf"
    m.save_pretrained(folder)
    proc.save_pretrained(folder)
    img = tmp_path / "i.png"
    _image().save(img)
    ref = features(proc(images=[_image()], return_tensors="np")["pixel_values"])
    embed = lambda g, out: _embed(g, img, out)  # noqa: E731
    gguf = convert_and_match(folder, ref, embed, tmp_path, case, BOUND)
    controls_miss(gguf, ref, embed, keys, tmp_path)


@pytest.mark.parametrize("arch,pre,shown", [
    ("llava", {"crop_size": {"height": 48, "width": 48}}, "crop_size.height=48 is not supported by graphdsl (clip)"),
    ("llava", {"do_center_crop": False}, "do_center_crop=False is not supported by graphdsl (clip)"),
    ("gemma3", {"do_pan_and_scan": True}, "do_pan_and_scan=True is not supported by graphdsl (siglip)"),
    ("gemma3", {"size": {"height": 48, "width": 48}}, "size.height=48 is not supported by graphdsl (siglip)"),
])
@pytest.mark.children
def test_refused_settings_stop_convert(tmp_path, arch, pre, shown):
    m, proc, _ = _model_and_processor(arch, {})
    folder = tmp_path / "hf"
    m.save_pretrained(folder)
    proc.save_pretrained(folder)
    convert_refuses(folder, tmp_path, pre, shown)
