"""Pixtral (LLaVA + Pixtral tower) checkpoints whose image processor settings differ from the
defaults: HF folder (tiny random model + a non-default PixtralImageProcessor) -> graphdsl convert
-> graphdsl embed equals HF's processor + the decoder input over the image's span (1e-5 rel L2,
f32), a longest edge and a processor patch size other than the tower's included; the same file
with each carried key dropped must not match; refused settings stop convert.
"""
from __future__ import annotations

import numpy as np
import pytest
from cli_run import graphdsl
from hf_refs import need_torch
from PIL import Image
from settings_util import controls_miss, convert_and_match, convert_refuses
from test_models_pixtral import BREAK, END, _hf_decoder_input, _save_folder, llava_pixtral

from graphdsl.models import pixtral

BOUND = 1e-5
V = "graphdsl.vision."
# Pixtral's patch convolution has no bias and RMSNorm follows it: a rescale alone barely shows,
# so it is tested with a mean that it moves against
CASES = {"bilinear+rescale+mean": ({"resample": 2, "rescale_factor": 1 / 200, "image_mean": [0.4, 0.5, 0.6]},
                                   [V + "resample", V + "rescale_factor",
                                    ("clip.vision.image_mean", [0.48145466, 0.4578275, 0.40821073])]),
         "no-normalize": ({"do_normalize": False}, [V + "do_normalize"]),
         # a longest edge below the tower's 64 (45x70 -> 32x40), and sides multiples of a processor
         # patch_size three of the tower's 8 (-> 48x48; without the key, the tower's 8: 32x48)
         "longest-edge": ({"size": {"longest_edge": 40}}, ["graphdsl.pixtral.longest_edge"]),
         "patch-size": ({"size": {"longest_edge": 48}, "patch_size": {"height": 24, "width": 24}},
                        ["graphdsl.pixtral.patch_size"])}


@pytest.fixture(scope="module")
def tiny():
    cfg, model = llava_pixtral()
    return model, pixtral.config_from_hf({**cfg.to_dict(), "image_break_token_id": BREAK, "image_end_token_id": END})


def _proc(c, **kw):
    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil
    p = c.patch_size
    return PixtralImageProcessorPil(**{"size": {"longest_edge": c.image_size}, "patch_size": {"height": p, "width": p},
                                       **kw})


@pytest.mark.children
@pytest.mark.parametrize("case", list(CASES))
def test_non_default_processor_matches_hf(tiny, tmp_path, case):
    need_torch()
    model, c = tiny
    pre, keys = CASES[case]
    folder = tmp_path / "hf"
    _save_folder(model, folder)
    proc = _proc(c, **pre)
    proc.save_pretrained(folder)
    img = tmp_path / "i.png"
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (45, 70, 3), dtype=np.uint8)).save(img)
    px = proc(Image.open(img), return_tensors="np")
    (h, w), = px["image_sizes"]
    ref, ((a, b),) = _hf_decoder_input(model, [px["pixel_values"][0][:, :h, :w]], c)
    ref = ref[a:b]

    def embed(gguf, out):
        graphdsl("embed", "--mmproj", gguf, "--image", img, "-o", out, "-f", "--backend", "cpu")
        return np.load(out)

    gguf = convert_and_match(folder, ref, embed, tmp_path, f"pixtral {case}", BOUND)
    controls_miss(gguf, ref, embed, keys, tmp_path)


@pytest.mark.parametrize("pre,shown", [({"patch_size": {"height": 12, "width": 12}}, "patch_size.width=12"),
                                       ({"patch_size": {"height": 16, "width": 24}}, "patch_size.width=24")])
@pytest.mark.children
def test_refused_settings_stop_convert(tiny, tmp_path, pre, shown):
    model, c = tiny
    folder = tmp_path / "hf"
    _save_folder(model, folder)
    _proc(c).save_pretrained(folder)
    convert_refuses(folder, tmp_path, pre, f"{shown} is not supported by graphdsl (pixtral)")
