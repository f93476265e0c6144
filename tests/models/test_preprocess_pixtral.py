"""Pixtral / Mistral-3 pre-processing against HF's PixtralImageProcessor (its PIL backend,
``PixtralImageProcessorPil``, which transformers falls back to without torchvision).

Exact (max abs difference 0.0): both sides resize the uint8 image with Pillow to the same size
and rescale / normalize in the same dtypes, so any difference means another geometry.
"""
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from graphdsl.preprocess import preprocess_image
from graphdsl.preprocess.pixtral import PixtralImageConfig, pixtral_image, pixtral_size

pytest.importorskip("transformers")
from transformers.models.pixtral.image_processing_pil_pixtral import (  # noqa: E402
    PixtralImageProcessorPil,
    get_resize_output_image_size,
)


def _rand(h, w, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, c) if c else (h, w), dtype=np.uint8)


SIZES = [(1, 1), (7, 300), (300, 7), (50, 97), (97, 50), (64, 64), (65, 33), (200, 130), (33, 33)]
SETTINGS = {  # (longest_edge, patch): small ones, Pixtral-12B's, Mistral-3's 14 * merge 2
    "small": ({"size": {"longest_edge": 64}, "patch_size": {"height": 16, "width": 16}}, 1),
    "pixtral12b": ({"size": {"longest_edge": 1024}, "patch_size": {"height": 16, "width": 16}}, 1),
    "mistral3": ({"size": {"longest_edge": 90}, "patch_size": {"height": 14, "width": 14}}, 2),
}


def _hf(cfg, merge, img):
    pre = PixtralImageProcessorPil(**cfg)
    patch = cfg["patch_size"]["height"] * merge  # what PixtralProcessor hands the image processor
    out = pre(img, return_tensors="np", patch_size={"height": patch, "width": patch})
    (h, w), = out["image_sizes"]
    return out["pixel_values"][0][:, :h, :w]


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("hw", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_parity_with_hf(setting, hw):
    cfg, merge = SETTINGS[setting]
    img = Image.fromarray(_rand(*hw, seed=hw[0] * 7 + hw[1]))
    ref = _hf(cfg, merge, img)
    ours = pixtral_image(img, PixtralImageConfig.from_hf(cfg, spatial_merge_size=merge))
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    assert np.abs(ours - ref).max() == 0.0
    p = cfg["patch_size"]["height"] * merge
    assert ours.shape[1] % p == 0 and ours.shape[2] % p == 0


def test_sizes_match_hf_formula():
    for h in range(1, 400, 7):
        for w in (1, 13, 64, 65, 333, 1500):
            for edge, p in ((64, 16), (1024, 16), (90, 28)):
                ref = get_resize_output_image_size(np.zeros((3, h, w)), (edge, edge), (p, p),
                                                   input_data_format="channels_first")
                if min(ref) < 1:
                    with pytest.raises(ValueError, match="empty side"):
                        pixtral_size(h, w, edge, p)
                else:
                    assert pixtral_size(h, w, edge, p) == tuple(ref), (h, w, edge, p)


def test_negative_control_a_wrong_rounding_fails():
    """Rounding the sides down instead of up (or HF's older round) changes the pixels: the
    comparison above would see it."""
    cfg, merge = SETTINGS["small"]
    img = Image.fromarray(_rand(50, 97, seed=1))
    ref = _hf(cfg, merge, img)
    w, h = img.size
    down = PixtralImageConfig.from_hf(cfg)
    th, tw = (h // 16) * 16, (min(w, 64) // 16) * 16
    assert (th, tw) != ref.shape[1:]
    from graphdsl.preprocess.image import ImageConfig, normalize, resize_uint8
    fixed = ImageConfig(mode="siglip", size=ref.shape[1:], mean=down.mean, std=down.std, resample=int(Image.BILINEAR))
    assert np.abs(normalize(resize_uint8(img, fixed), fixed) - ref).max() > 0.01


def test_preprocess_api_and_errors():
    cfg = PixtralImageConfig(longest_edge=64)
    img = Image.fromarray(_rand(50, 97, seed=2))
    assert np.array_equal(preprocess_image(img, cfg), pixtral_image(img, cfg))
    with pytest.raises(ValueError, match="empty side"):
        pixtral_image(Image.fromarray(_rand(1, 300)), cfg)
    for bad in ({"longest_edge": 0}, {"patch_size": True}, {"std": (0, 1, 1)}, {"mean": (1, 2)},
                {"longest_edge": 100_000}, {"resample": 99}):
        with pytest.raises(ValueError, match="PixtralImageConfig"):
            PixtralImageConfig(**bad)


@pytest.mark.children
def test_cli_preprocess_image_mode_pixtral(tmp_path):
    """graphdsl preprocess image --mode pixtral --size 64: HF's pixels for the same file."""
    img = Image.fromarray(_rand(50, 97, seed=3))
    src, out = tmp_path / "a.png", tmp_path / "a.npy"
    img.save(src)
    r = subprocess.run([sys.executable, "-m", "graphdsl.cli", "preprocess", "image", str(src), "--mode", "pixtral",
                        "--size", "64", "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    ref = _hf(SETTINGS["small"][0], 1, Image.open(src))
    assert np.abs(np.load(out) - ref).max() == 0.0
