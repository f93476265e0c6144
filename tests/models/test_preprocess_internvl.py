"""graphdsl.preprocess.internvl against HF's GotOcr2ImageProcessorPil called as InternVLProcessor
calls it (crop_to_patches=True): the grid choice on many shapes and the pixels bit for bit."""
from __future__ import annotations

import numpy as np
import pytest
from hf_refs import need_torch
from PIL import Image

from graphdsl.preprocess.internvl import InternVLImageConfig, internvl_grid, internvl_images


def _image(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_grid_is_hfs_on_many_shapes():
    need_torch()
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas
    rng = np.random.default_rng(0)
    for _ in range(2000):
        h, w = (int(x) for x in rng.integers(1, 4000, 2))
        tile, lo = int(rng.integers(8, 600)), int(rng.integers(1, 4))
        hi = lo + int(rng.integers(0, 12))
        want = get_optimal_tiled_canvas((h, w), (tile, tile), lo, hi)
        assert internvl_grid(h, w, tile, lo, hi) == want, (h, w, tile, lo, hi)


CASES = [  # (w, h), processor kwargs
    ((70, 45), {}), ((45, 90), {}), ((32, 32), {}), ((300, 17), {"max_patches": 6}),
    ((120, 100), {"min_patches": 3, "max_patches": 8, "resample": 2}),
    ((50, 61), {"max_patches": 1}), ((90, 40), {"do_rescale": False, "do_normalize": False}),
    ((64, 200), {"rescale_factor": 1 / 200, "image_mean": [0.4, 0.5, 0.6], "image_std": [0.2, 0.3, 0.25]}),
]


@pytest.mark.parametrize("size,kw", CASES, ids=[f"{w}x{h}-{'-'.join(k) or 'default'}" for (w, h), k in CASES])
def test_pixels_are_bit_exact(size, kw):
    need_torch()
    from transformers import GotOcr2ImageProcessorPil
    img = _image(*size)
    proc = GotOcr2ImageProcessorPil(size={"height": 32, "width": 32}, **kw)
    ref = proc(images=[img], crop_to_patches=True, return_tensors="np")["pixel_values"]
    norm = kw.get("do_normalize", True)
    cfg = InternVLImageConfig(tile_size=32, min_patches=kw.get("min_patches", 1),
                              max_patches=kw.get("max_patches", 12), resample=kw.get("resample", 3),
                              mean=kw.get("image_mean", proc.image_mean) if norm else 0.0,
                              std=kw.get("image_std", proc.image_std) if norm else 1.0,
                              rescale_factor=kw.get("rescale_factor", 1 / 255) if kw.get("do_rescale", True) else 1.0)
    got = internvl_images(img, cfg)
    assert got.dtype == np.float32 and got.shape == ref.shape
    assert np.array_equal(got, ref)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="min_patches 5 > max_patches 3"):
        InternVLImageConfig(min_patches=5, max_patches=3)
    with pytest.raises(ValueError, match="resample"):
        InternVLImageConfig(resample=99)
    with pytest.raises(ValueError, match="tile_size"):
        InternVLImageConfig(tile_size=0)


def test_negative_control_another_filter_or_grid_differs():
    """The comparison sees the filter and the grid: NEAREST, or a 1-tile cap, must not be HF's."""
    need_torch()
    from transformers import GotOcr2ImageProcessorPil
    img = _image(70, 45)
    ref = GotOcr2ImageProcessorPil(size={"height": 32, "width": 32})(images=[img], crop_to_patches=True,
                                                                     return_tensors="np")["pixel_values"]
    clip = dict(mean=(0.48145466, 0.4578275, 0.40821073), std=(0.26862954, 0.26130258, 0.27577711))
    assert np.array_equal(internvl_images(img, InternVLImageConfig(tile_size=32, **clip)), ref)
    assert not np.array_equal(internvl_images(img, InternVLImageConfig(tile_size=32, resample=0, **clip)), ref)
    assert internvl_images(img, InternVLImageConfig(tile_size=32, max_patches=2, **clip)).shape != ref.shape
