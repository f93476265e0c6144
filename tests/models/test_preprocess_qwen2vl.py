"""preprocess.qwen2vl against HF's Qwen2VLImageProcessorPil (the PIL backend transformers uses
here): smart resize sizes, and pixels -> models.qwen2vl.patchify -> pixel_values / image_grid_thw,
exact (bound 0: the same Pillow resize on uint8 and HF's rescale / normalize dtypes); the same
through ``preprocess_image`` and ``graphdsl preprocess image --mode qwen2vl``.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from graphdsl.models import qwen2vl
from graphdsl.preprocess import Qwen2VLImageConfig, preprocess_image, qwen2vl_image, smart_resize

hf_pil = pytest.importorskip("transformers.models.qwen2_vl.image_processing_pil_qwen2_vl")

# (H, W): ordinary, rounding both ways, below min_pixels (scaled up), above max_pixels (scaled down),
# a thin strip
SIZES = [(45, 70), (480, 640), (27, 29), (10, 12), (1500, 1100), (30, 500)]
SMALL_MAX = dict(min_pixels=56 * 56, max_pixels=28 * 28 * 64)  # keeps the large case cheap


def _img(h, w, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("hw", [(h, w) for h in (1, 13, 28, 100, 333, 4000) for w in (5, 28, 57, 990)])
def test_smart_resize_is_hfs(hw):
    def outcome(fn, kw):
        try:
            return fn(*hw, **kw)
        except ValueError:  # HF refuses aspect ratios above 200, and so do we
            return "refused"
    for kw in (dict(), SMALL_MAX):
        assert outcome(smart_resize, kw) == outcome(hf_pil.smart_resize, kw), (hw, kw)


@pytest.mark.parametrize("hw", SIZES, ids=str)
def test_pixels_and_patches_are_hfs(hw):
    img = _img(*hw)
    hf = hf_pil.Qwen2VLImageProcessorPil(**SMALL_MAX)(images=[img], return_tensors="np")
    cfg = Qwen2VLImageConfig(**SMALL_MAX)
    px = qwen2vl_image(img, cfg)
    assert px.dtype == np.float32 and px.shape[1:] == cfg.out_size(*hw)
    np.testing.assert_array_equal(preprocess_image(img, cfg), px)  # the common entry point dispatches here
    patches, grid = qwen2vl.patchify(px, qwen2vl.Qwen2VLConfig())
    np.testing.assert_array_equal(patches, hf["pixel_values"])
    assert [list(grid)] == hf["image_grid_thw"].tolist()


def test_from_hf_reads_both_spellings():
    old = Qwen2VLImageConfig.from_hf({"min_pixels": 3136, "max_pixels": 12544, "image_mean": [0.5] * 3})
    new = Qwen2VLImageConfig.from_hf({"size": {"shortest_edge": 3136, "longest_edge": 12544}, "image_mean": 0.5})
    assert old == new and old.max_pixels == 12544 and old.mean == (0.5,) * 3


def test_errors():
    with pytest.raises(ValueError, match="aspect ratio"):
        qwen2vl_image(_img(2, 500))
    with pytest.raises(ValueError, match="min_pixels"):
        Qwen2VLImageConfig(min_pixels=10_000, max_pixels=100)
    # the pixel fields' checks it shares with PixtralImageConfig (preprocess.any_size)
    for bad in ({"patch_size": 0}, {"merge_size": True}, {"std": (0, 1, 1)}, {"mean": (1, 2)}, {"resample": 99}):
        with pytest.raises(ValueError, match="Qwen2VLImageConfig"):
            Qwen2VLImageConfig(**bad)
    assert Qwen2VLImageConfig(mean=0.5).mean == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="multiples of 28"):
        qwen2vl.patchify(np.zeros((3, 30, 28), np.float32), qwen2vl.Qwen2VLConfig())


@pytest.mark.children
def test_cli_preprocess_mode_qwen2vl(tmp_path):
    src, out = tmp_path / "a.png", tmp_path / "a.npy"
    _img(45, 70).save(src)
    r = subprocess.run([sys.executable, "-m", "graphdsl.cli", "preprocess", "image", str(src), "--mode", "qwen2vl",
                        "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    hf = hf_pil.Qwen2VLImageProcessorPil()(images=[Image.open(src)], return_tensors="np")
    got = np.load(out)
    assert got.shape == (3, *(14 * hf["image_grid_thw"][0, 1:]))
    np.testing.assert_array_equal(qwen2vl.patchify(got, qwen2vl.Qwen2VLConfig())[0], hf["pixel_values"])
