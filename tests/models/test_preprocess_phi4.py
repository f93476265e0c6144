"""preprocess.phi4 against HF's Phi4MultimodalImageProcessor (torchvision backend; see
tests/support/phi4_hf.py for how it is imported here: in a fresh Python per call): crops bit-exact, patch masks and image_sizes
equal, the global image within 1e-6 absolute (torch's bicubic sums in another order; measured
<= 2.4e-7). Skips where torchvision is not installed (``make install`` puts it in build/tv-site).
"""
from __future__ import annotations

import numpy as np
import pytest
from phi4_hf import hf_process
from PIL import Image

from graphdsl.preprocess import phi4 as pp

pytestmark = pytest.mark.children  # HF's Phi-4 processor runs beside torchvision in a child (phi4_hf)

CASES = [  # (h, w), crop, patch, dynamic_hd
    ((20, 30), 32, 4, 36), ((50, 60), 32, 4, 36), ((70, 100), 32, 4, 36), ((33, 200), 32, 4, 36),
    ((300, 45), 32, 4, 36), ((64, 64), 32, 4, 36),
    ((40, 400), 32, 4, 6),  # 13 crops > dynamic_hd: the closest aspect ratio of <= 6 crops
    ((500, 700), 448, 14, 36),  # Phi-4's own sizes
]


def _image(h, w, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def hf_out():
    """HF's outputs for every case and the negative control's image, from one child process."""
    cases = [(np.asarray(_image(*hw)), crop, patch, hd) for hw, crop, patch, hd in CASES]
    return dict(zip(range(len(CASES)), hf_process(cases)))


@pytest.mark.parametrize("case", range(len(CASES)), ids=[f"{h}x{w}@{c}/{hd}" for (h, w), c, _, hd in CASES])
def test_matches_hf_processor(hf_out, case):
    hw, crop, patch, hd = CASES[case]
    im = _image(*hw)
    ref = hf_out[case]
    got = pp.phi4_image(im, pp.Phi4ImageConfig(crop=crop, patch=patch, dynamic_hd=hd))
    n = got.pixel_values.shape[0]
    assert ref["image_pixel_values"].shape[1] == n
    assert tuple(ref["image_sizes"][0]) == got.image_size
    assert np.array_equal(ref["image_attention_mask"][0].astype(bool), got.patch_mask)
    assert np.array_equal(ref["image_pixel_values"][0, 1:], got.pixel_values[1:])
    assert np.abs(ref["image_pixel_values"][0, 0] - got.pixel_values[0]).max() <= 1e-6


def test_negative_control_pillow_bilinear_is_not_torchvision(hf_out):
    """Pillow's BILINEAR (same filter, other fixed-point precision) misses by one level somewhere:
    the exact comparison above can tell the two apart."""
    im = _image(20, 30)
    ref = hf_out[0]["image_pixel_values"][0, 1]  # CASES[0]: the same 20 x 30 image at crop 32
    (cols, rows), new, _ = pp.hd_layout(30, 20, pp.Phi4ImageConfig(crop=32, patch=4))
    canvas = np.full((32, 32, 3), 255, np.uint8)
    canvas[:new[1], :new[0]] = np.asarray(im.resize(new, Image.Resampling.BILINEAR))
    pil = (canvas.transpose(2, 0, 1).astype(np.float32) - np.float32(127.5)) / np.float32(127.5)
    assert not np.array_equal(pil, ref)
    assert np.array_equal(pp._resize_u8(np.asarray(im), *new), canvas[:new[1], :new[0]]) is False


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="multiple of patch"):
        pp.Phi4ImageConfig(crop=30, patch=4)
    with pytest.raises(ValueError, match="too extreme"):
        pp.phi4_image(Image.new("RGB", (2000, 3)), pp.Phi4ImageConfig(crop=32, patch=4, dynamic_hd=4))
    with pytest.raises(ValueError, match="square"):
        pp.Phi4ImageConfig.from_hf({"size": {"height": 448, "width": 224}})
