"""LLaVA-NeXT checkpoints whose image processor settings differ from the defaults: HF folder (tiny
random model + a non-default LlavaNextImageProcessor) -> graphdsl convert -> graphdsl embed equals
HF's processor + get_image_features (1e-5 rel L2, f32); the same file with each carried key
dropped or wrong must not match; a processor whose grids are not the model's stops convert.
(The model's image_grid_pinpoints, non-default in every test here, are carried since LLaVA-NeXT
was added: tests/models/test_models_llava_next.py.)
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from cli_run import graphdsl
from hf_refs import need_torch, rel_err
from settings_util import rewrite_gguf
from test_models_llava_next import PROC, _image, llava_next_tiny

BOUND = 1e-5
V = "graphdsl.vision."
CASES = {  # processor settings over PROC, keys to drop for the negative controls
    "bilinear+rescale+no-normalize": ({"resample": 2, "rescale_factor": 1 / 200, "do_normalize": False},
                                      [V + "resample", V + "rescale_factor", V + "do_normalize"]),
    # every view resized to a shortest edge above the tower's, then centre-cropped to it
    "shortest-edge": ({"size": {"shortest_edge": 45}}, [V + "shortest_edge"]),
}


@pytest.fixture(scope="module")
def tiny():
    return llava_next_tiny()


@pytest.mark.children
@pytest.mark.parametrize("case", list(CASES))
def test_non_default_processor_matches_hf(tiny, tmp_path, case):
    torch = need_torch()
    pre, keys = CASES[case]
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
    _, model = tiny
    folder = tmp_path / "hf"
    model.save_pretrained(folder)
    proc = LlavaNextImageProcessorPil(**{**PROC, **pre})
    proc.save_pretrained(folder)
    img = tmp_path / "i.png"
    _image((40, 90)).save(img)
    out = proc([_image((40, 90))], return_tensors="np")
    with torch.no_grad():
        ref = model.model.get_image_features(torch.from_numpy(out["pixel_values"]),
                                             torch.from_numpy(out["image_sizes"])).pooler_output[0].numpy()
    gguf = tmp_path / "m.gguf"
    graphdsl("convert", folder, "-o", gguf)
    graphdsl("embed", "--mmproj", gguf, "--image", img, "-o", tmp_path / "e.npy", "--backend", "cpu")
    got = np.load(tmp_path / "e.npy")
    err = rel_err(got, ref) if got.shape == ref.shape else float("inf")
    print(f"llava_next {case}: {ref.shape[0]} rows, rel err {err:.2e}")
    assert err <= BOUND
    for key in keys:
        bad = tmp_path / "bad.gguf"
        rewrite_gguf(gguf, bad, drop=(key,))
        graphdsl("embed", "--mmproj", bad, "--image", img, "-o", tmp_path / "w.npy", "-f", "--backend", "cpu")
        wrong = np.load(tmp_path / "w.npy")
        assert wrong.shape != ref.shape or rel_err(wrong, ref) > 1e-3, key


@pytest.mark.children
def test_processor_grids_other_than_the_model_s_stop_convert(tiny, tmp_path):
    _, model = tiny
    folder = tmp_path / "hf"
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({**PROC, "image_grid_pinpoints": [[32, 64]]}))
    out = tmp_path / "m.gguf"
    r = subprocess.run([sys.executable, "-m", "graphdsl.cli", "convert", str(folder), "-o", str(out)],
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode != 0 and not out.exists()
    assert "preprocessor_config.json: image_grid_pinpoints=[[32, 64]] is not supported by graphdsl (llava_next)" \
        in r.stderr, r.stderr
