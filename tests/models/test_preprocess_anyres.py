"""LLaVA-NeXT anyres pre-processing against HF's LlavaNextImageProcessor (its PIL backend,
``LlavaNextImageProcessorPil``; the torchvision one cannot be imported here).

Pixel comparisons are exact (max abs difference 0.0, inside the brief's 1e-6): both sides
resize the uint8 image with Pillow in the same steps and rescale/normalize in the same dtypes,
so any difference means another geometry, grid or order, not rounding. The token count is
checked against HF's LlavaNextProcessor, the geometry helpers against HF's own functions.
"""

import numpy as np
import pytest
from PIL import Image

from graphdsl.preprocess.anyres import (LLAVA_NEXT_PINPOINTS, AnyresConfig, anyres_images, fit_size,
                                        select_best_resolution, unpad_crop)

pytest.importorskip("transformers")
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

SMALL = {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32},
         "image_grid_pinpoints": [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]}
LLAVA16 = {"size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336},
           "image_grid_pinpoints": [list(p) for p in LLAVA_NEXT_PINPOINTS]}


def _rand(h, w, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, c) if c else (h, w), dtype=np.uint8)


# height x width: wide, tall, square, tiny, extreme, gray and RGBA (HF composites alpha the same way)
IMAGES = {"45x70": (45, 70), "70x45": (70, 45), "40x40": (40, 40), "1x1": (1, 1), "7x300": (7, 300),
          "300x7": (300, 7), "64x100": (64, 100), "33x33_rgba": (33, 33, 4), "50x20_gray": (50, 20, 0)}


def _image(name, seed=0):
    h, w, *c = IMAGES[name]
    return Image.fromarray(_rand(h, w, *(c or [3]), seed=seed))


def _hf(cfg, images):
    out = LlavaNextImageProcessorPil(**cfg)(images, return_tensors="np")
    return out["pixel_values"], out["image_sizes"]


@pytest.mark.parametrize("name", list(IMAGES))
def test_parity_small_config(name):
    img = _image(name)
    ref, sizes = _hf(SMALL, [img])
    ours = anyres_images(img, AnyresConfig.from_hf(SMALL))
    assert ours.image_size == tuple(sizes[0])
    assert ours.pixel_values.dtype == np.float32 and ours.pixel_values.shape == ref[0].shape
    assert ours.n_frames == 1 + ours.grid[0] * ours.grid[1]
    assert np.abs(ours.pixel_values - ref[0]).max() == 0.0


def test_parity_llava16_config_and_a_batch_of_different_grids():
    """LLaVA-1.6's settings; several images in one HF call (HF pads the batch with zero tiles up
    to the largest count, the 'number of patches' each image really has is ours)."""
    import skimage.data as skdata
    images = [Image.fromarray(skdata.astronaut()), Image.fromarray(skdata.coffee()), _image("7x300"),
              Image.fromarray(_rand(700, 240, seed=3))]
    ref, sizes = _hf(LLAVA16, images)
    cfg = AnyresConfig.from_hf(LLAVA16)
    grids = set()
    for i, img in enumerate(images):
        ours = anyres_images(img, cfg)
        n = ours.n_frames
        grids.add(ours.grid)
        assert ours.image_size == tuple(sizes[i])
        assert np.abs(ours.pixel_values - ref[i, :n]).max() == 0.0
        assert not ref[i, n:].any()  # HF's batch padding, not tiles
    assert len(grids) >= 3  # (2, 2), (1, 2), (3, 1) ... the test sees several grid shapes


def test_token_count_matches_hf_processor():
    """n_tokens = base patches + unpadded rows x (cols + newline): the number of <image>
    placeholders LlavaNextProcessor.replace_image_token expands for the image (llava-hf's settings:
    patch 14, one additional token for the class token, select strategy 'default'). The processor
    is called unbound on a namespace: its constructor wants a tokenizer, which the count never uses."""
    from types import SimpleNamespace

    from transformers.models.llava_next.processing_llava_next import LlavaNextProcessor
    ns = SimpleNamespace(image_processor=LlavaNextImageProcessorPil(**LLAVA16), patch_size=14, image_token="<i>",
                         num_additional_image_tokens=1, vision_feature_select_strategy="default")
    ns._get_number_of_features = lambda *a: LlavaNextProcessor._get_number_of_features(ns, *a)
    ns._get_unpadded_features = lambda *a: LlavaNextProcessor._get_unpadded_features(ns, *a)
    cfg = AnyresConfig.from_hf(LLAVA16)
    for hw in [(480, 640), (640, 480), (7, 300), (1000, 999), (336, 336), (200, 900)]:
        img = Image.fromarray(_rand(*hw))
        out = ns.image_processor([img], return_tensors="np")
        n_hf = len(LlavaNextProcessor.replace_image_token(ns, out, 0)) // len("<i>")
        assert anyres_images(img, cfg).n_tokens(336 // 14) == n_hf, hw


def test_geometry_helpers_match_hf():
    from transformers.image_processing_utils import get_patch_output_size
    from transformers.image_processing_utils import select_best_resolution as hf_select
    from transformers.models.llava_next.modeling_llava_next import unpad_image
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    for _ in range(300):
        hw = tuple(int(v) for v in rng.integers(1, 2000, 2))
        best = select_best_resolution(hw, LLAVA_NEXT_PINPOINTS)
        assert best == tuple(hf_select(hw, [list(p) for p in LLAVA_NEXT_PINPOINTS]))
        assert fit_size(hw, best) == get_patch_output_size(np.zeros((1, *hw)), best, "channels_first")
        grid = (best[0] // 14, best[1] // 14)
        t, b, l, r = unpad_crop(hw, grid)
        assert tuple(unpad_image(torch.zeros(1, *grid), list(hw)).shape[1:]) == (b - t, r - l)


def test_negative_control_wrong_grid_pick_fails():
    """Any other grid than HF's pick (here: the runner-up, with the best pinpoint removed) changes
    the views, and the exact comparison sees it."""
    img = _image("45x70")
    ref, _ = _hf(SMALL, [img])
    best = select_best_resolution((45, 70), SMALL["image_grid_pinpoints"])
    others = [p for p in SMALL["image_grid_pinpoints"] if tuple(p) != best]
    ours = anyres_images(img, AnyresConfig.from_hf({**SMALL, "image_grid_pinpoints": others}))
    assert ours.pixel_values.shape != ref[0].shape or np.abs(ours.pixel_values - ref[0]).max() > 0.1


@pytest.mark.parametrize("bad, match", [
    ({"image_grid_pinpoints": [[33, 64]]}, "multiples of crop_size"),
    ({"image_grid_pinpoints": []}, "non-empty"),
    ({"image_grid_pinpoints": [[32]]}, "pairs"),
    ({"crop_size": {"height": 32, "width": 16}}, "square"),
    ({"size": {"height": 32, "width": 32}}, "shortest_edge"),
    ({"do_center_crop": False}, "do_center_crop"),
    ({"image_processor_type": "CLIPImageProcessor"}, "not LLaVA-NeXT"),
])
def test_bad_configs_raise(bad, match):
    with pytest.raises(ValueError, match=match):
        AnyresConfig.from_hf({**SMALL, **bad})


def test_too_many_tiles_refused():
    with pytest.raises(ValueError, match="max_tiles"):
        AnyresConfig(grid_pinpoints=[(32 * 40, 32 * 40)], size=32, crop_size=32)
