"""Idefics3 / SmolVLM pre-processing against HF's Idefics3ImageProcessor and Idefics3Processor.

HF's torchvision processor cannot be imported here (no torchvision), so the reference is its
PIL backend, ``Idefics3ImageProcessorPil``, which ``Idefics3ImageProcessor`` falls back to.
Pixel comparisons are exact (max abs difference 0.0): both sides resize the uint8 image with
Pillow in the same steps and rescale/normalize in the same dtypes, so any difference at all
means a different geometry or order, not rounding.
"""

import inspect

import numpy as np
import pytest
from PIL import Image

from graphdsl.preprocess.idefics3 import (
    Idefics3ImageConfig,
    idefics3_image_seq_len,
    idefics3_images,
    idefics3_prompt,
    stack_idefics3,
)

pytest.importorskip("transformers")
skdata = pytest.importorskip("skimage.data")
from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
from transformers.models.idefics3.processing_idefics3 import Idefics3Processor

SMALL = {"size": {"longest_edge": 4 * 32}, "max_image_size": {"longest_edge": 32}}
# SmolVLM-Instruct's (1536 / 384) and SmolVLM-256M/500M's (2048 / 512) settings.
SMOLVLM = {
    "smolvlm1536": {"size": {"longest_edge": 1536}, "max_image_size": {"longest_edge": 384}, "resample": 1},
    "smolvlm2048": {"size": {"longest_edge": 2048}, "max_image_size": {"longest_edge": 512}, "resample": 1},
}


def _rand(h, w, c=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, c) if c else (h, w), dtype=np.uint8)


IMAGES = {  # sizes are height x width
    "astronaut": lambda: Image.fromarray(skdata.astronaut()),
    "chelsea": lambda: Image.fromarray(skdata.chelsea()),
    "coffee": lambda: Image.fromarray(skdata.coffee()),
    "camera_gray": lambda: Image.fromarray(skdata.camera()),
    "1x1": lambda: Image.fromarray(_rand(1, 1)),
    "7x300": lambda: Image.fromarray(_rand(7, 300, seed=1)),
    "300x7": lambda: Image.fromarray(_rand(300, 7, seed=2)),
    "50x97": lambda: Image.fromarray(_rand(50, 97, seed=3)),
    "97x50": lambda: Image.fromarray(_rand(97, 50, seed=4)),
    "32x32": lambda: Image.fromarray(_rand(32, 32, seed=5)),
    "64x96": lambda: Image.fromarray(_rand(64, 96, seed=6)),
    "33x33_rgba": lambda: Image.fromarray(_rand(33, 33, 4, seed=7)),
}


def _hf(cfg, images, **kw):
    out = Idefics3ImageProcessorPil(**cfg)(images, return_tensors="np", return_row_col_info=True, **kw)
    return out["pixel_values"], out["pixel_attention_mask"], out["rows"], out["cols"]


def _check(cfg_dict, img, split):
    ref, mask, rows, cols = _hf(cfg_dict, img, do_image_splitting=split)
    cfg = Idefics3ImageConfig.from_hf({**cfg_dict, "do_image_splitting": split})
    ours = idefics3_images(img, cfg)
    assert (ours.rows, ours.cols) == (rows[0][0], cols[0][0])
    assert ours.pixel_values.dtype == np.float32 and ours.pixel_values.shape == ref[0].shape
    assert ours.n_frames == (ours.rows * ours.cols + 1 if ours.rows else 1)
    assert mask.all()  # one image: every frame is S x S, HF pads nothing
    assert np.abs(ours.pixel_values - ref[0]).max() == 0.0
    return ours, ref[0]


@pytest.mark.parametrize("split", [True, False], ids=["split", "nosplit"])
@pytest.mark.parametrize("name", list(IMAGES))
def test_parity_small_config(name, split):
    _check(SMALL, IMAGES[name](), split)


@pytest.mark.parametrize("split", [True, False], ids=["split", "nosplit"])
@pytest.mark.parametrize("which", list(SMOLVLM))
@pytest.mark.parametrize("name", ["astronaut", "coffee", "7x300"])
def test_parity_smolvlm(which, name, split):
    ours, _ = _check(SMOLVLM[which], IMAGES[name](), split)
    if split and name == "coffee":  # 400 x 600: 3 x 4 tiles of 384, 2 x 4 of 512
        assert (ours.rows, ours.cols) == {"smolvlm1536": (3, 4), "smolvlm2048": (3, 4)}[which]


@pytest.mark.parametrize("hw", [(7, 8), (4, 15), (50, 97), (97, 50)])
def test_parity_edge_not_a_tile_multiple(hw):
    """longest_edge 100 with 32-px tiles: the grid comes from the tile-multiple resize (HF's
    get_number_of_image_patches, which rounds the input's short side instead, says (3, 4) for 7x8
    in transformers 5.24; its processor, and this, make (4, 4))."""
    cfg = {"size": {"longest_edge": 100}, "max_image_size": {"longest_edge": 32}}
    ours, _ = _check(cfg, Image.fromarray(_rand(*hw, seed=9)), True)
    if hw == (7, 8):
        assert (ours.rows, ours.cols) == (4, 4)


def test_known_grids():
    # Hand-derived from HF's rules: 50x97 -> 66x128 (even short side) -> 96x128 -> 3 x 4 tiles.
    cfg = Idefics3ImageConfig.from_hf(SMALL)
    assert (idefics3_images(IMAGES["50x97"](), cfg).rows, idefics3_images(IMAGES["50x97"](), cfg).cols) == (3, 4)
    one = idefics3_images(Image.fromarray(_rand(20, 20)), Idefics3ImageConfig(longest_edge=32, max_image_size=32))
    assert (one.rows, one.cols, one.n_frames) == (0, 0, 1)  # fits one tile: no global duplicate


def test_order_negative_controls():
    """A wrong frame order must fail the same comparison that passes above."""
    img = IMAGES["chelsea"]()
    ours, ref = _check(SMALL, img, True)
    assert ours.rows > 1 and ours.cols > 1
    global_first = np.concatenate([ours.pixel_values[-1:], ours.pixel_values[:-1]])
    grid = ours.pixel_values[:-1].reshape(ours.rows, ours.cols, *ours.pixel_values.shape[1:])
    column_major = np.concatenate([grid.transpose(1, 0, 2, 3, 4).reshape(-1, *grid.shape[2:]), ours.pixel_values[-1:]])
    swapped = ours.pixel_values.copy()
    swapped[[0, 1]] = swapped[[1, 0]]
    for wrong in (global_first, column_major, swapped):
        assert np.abs(wrong - ref).max() > 0.1
    # The global image is the whole picture squashed, not any tile, and not the no-split output
    # resized from the original (HF resizes it from the tile-multiple image).
    nosplit = idefics3_images(img, Idefics3ImageConfig.from_hf({**SMALL, "do_image_splitting": False}))
    assert all(np.abs(ours.pixel_values[-1] - t).max() > 0.1 for t in ours.pixel_values[:-1])
    assert np.abs(nosplit.pixel_values[0] - ref[-1]).max() > 0.0


def test_resample_and_normalize_follow_config():
    img = IMAGES["astronaut"]()
    cfg = {**SMALL, "resample": int(Image.Resampling.BICUBIC), "image_mean": [0.1, 0.2, 0.3], "image_std": 0.25,
           "do_rescale": False}
    _check(cfg, img, True)
    lanczos = idefics3_images(img, Idefics3ImageConfig.from_hf(SMALL)).pixel_values
    bicubic = idefics3_images(img, Idefics3ImageConfig.from_hf({**SMALL, "resample": 3})).pixel_values
    assert np.abs(lanczos - bicubic).max() > 0.0
    _check({**SMALL, "do_resize": False}, IMAGES["50x97"](), True)
    _check({**SMALL, "do_normalize": False}, IMAGES["50x97"](), False)


def test_from_hf_round_trip_of_hf_dict():
    proc = Idefics3ImageProcessorPil(**SMOLVLM["smolvlm2048"])
    cfg = Idefics3ImageConfig.from_hf(proc.to_dict())
    assert (cfg.longest_edge, cfg.max_image_size, cfg.resample, cfg.do_image_splitting) == (2048, 512, 1, True)
    default = Idefics3ImageConfig.from_hf(Idefics3ImageProcessorPil().to_dict())
    assert default == Idefics3ImageConfig()  # our defaults are HF's defaults


def test_batch_padding_matches_hf():
    a, b, c = IMAGES["chelsea"](), IMAGES["32x32"](), IMAGES["7x300"]()
    ref, ref_mask, _, _ = _hf(SMALL, [[a, b], [c]])
    cfg = Idefics3ImageConfig.from_hf(SMALL)
    pixels, mask = stack_idefics3([[idefics3_images(a, cfg), idefics3_images(b, cfg)], [idefics3_images(c, cfg)]])
    assert pixels.shape == ref.shape and mask.dtype == ref_mask.dtype
    assert np.array_equal(mask, ref_mask) and not mask.all()  # the second prompt is padded
    assert np.abs(pixels - ref).max() == 0.0


# --------------------------------------------------------------------------- prompt


@pytest.fixture(scope="module")
def hf_processor():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[UNK]", "<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>", "\n", "User:"]
    words += [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split("\n", "isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    return Idefics3Processor(Idefics3ImageProcessorPil(**SMALL), tok, image_seq_len=5)


@pytest.mark.parametrize("name", ["chelsea", "50x97", "97x50", "32x32", "7x300"])
def test_prompt_matches_hf_processor(hf_processor, name):
    img = IMAGES[name]()
    out = hf_processor(images=[img], text="User:<image>", return_text_replacement_offsets=True)
    (rep,), = out["text_replacement_offsets"]
    ours = idefics3_images(img, Idefics3ImageConfig.from_hf(SMALL))
    prompt = ours.prompt(hf_processor.image_seq_len)
    assert prompt.text == rep["replacement"]
    assert [f.ref for f in prompt.frames] == list(range(ours.n_frames))
    image_id = hf_processor.tokenizer.convert_tokens_to_ids("<image>")
    assert int((np.asarray(out["input_ids"][0]) == image_id).sum()) == prompt.n_image_tokens
    assert prompt.n_image_tokens == ours.n_frames * hf_processor.image_seq_len


@pytest.mark.parametrize("grid", [(0, 0), (1, 1), (2, 3), (3, 2), (6, 6)])
def test_prompt_grids_match_replace_image_token(hf_processor, grid):
    ref = hf_processor.replace_image_token({"rows": [[grid[0]]], "cols": [[grid[1]]]}, 0)
    assert idefics3_prompt(*grid, hf_processor.image_seq_len).text == ref
    if grid[0] != grid[1]:  # negative control: the transposed grid writes different markers
        assert idefics3_prompt(grid[1], grid[0], hf_processor.image_seq_len).text != ref


def test_prompt_pieces_name_each_frame():
    p = idefics3_prompt(2, 2, 7)
    texts = [x for x in p.pieces if isinstance(x, str)]
    assert texts[0].endswith("<row_1_col_1>") and texts[2].startswith("\n") and texts[2].endswith("<row_2_col_1>")
    assert texts[-2].endswith("<global-img>") and texts[-1] == "<fake_token_around_image>"
    assert [f.ref for f in p.frames] == [0, 1, 2, 3, 4] and p.n_image_tokens == 35


def test_image_seq_len_formula():
    # HF's Idefics3Processor default (169) is this formula for Idefics3's 364 px / 14 px patches / 2x shuffle.
    default = inspect.signature(Idefics3Processor.__init__).parameters["image_seq_len"].default
    assert idefics3_image_seq_len(364, 14, 2) == default == 169
    assert idefics3_image_seq_len(512, 16, 4) == 64  # SmolVLM-256M
    with pytest.raises(ValueError, match="no token"):
        idefics3_image_seq_len(16, 16, 4)


# --------------------------------------------------------------------------- errors and caps


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"max_image_size": 0}, "max_image_size must be a positive int"),
        ({"longest_edge": {"height": 3}}, "longest_edge must be"),
        ({"resample": None}, "resample must be"),
        ({"resample": 17}, "resample must be"),
        ({"mean": "abc"}, "3 finite means"),
        ({"std": (0.5, 0.0, 0.5)}, "stds >= "),
        ({"mean": (1.0, 2.0)}, "3 finite means"),
        ({"max_image_size": 8192}, "max_out_pixels"),
        ({"longest_edge": 4096, "max_image_size": 8}, "max_tiles"),
    ],
)
def test_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        Idefics3ImageConfig(**kw)


def test_from_hf_refuses_other_processors():
    with pytest.raises(ValueError, match="not Idefics3's"):
        Idefics3ImageConfig.from_hf({"image_processor_type": "CLIPImageProcessor"})


def test_image_caps():
    # Without the longest-edge resize the grid follows the input: refused before any resize.
    cfg = Idefics3ImageConfig(longest_edge=None, max_image_size=32, max_out_pixels=64 * 64)
    with pytest.raises(ValueError, match=r"\[idefics3_images\] a 300x7 image .* max_out_pixels"):
        idefics3_images(IMAGES["7x300"](), cfg)
    with pytest.raises(ValueError, match="exceeds max_pixels"):
        idefics3_images(IMAGES["chelsea"](), Idefics3ImageConfig(max_pixels=1000))
    with pytest.raises(ValueError, match="not a readable image"):
        idefics3_images(b"not an image", Idefics3ImageConfig())


@pytest.mark.parametrize("args", [(0, 2, 5), (2, 0, 5), (1, 1, 0), (-1, -1, 5), (1.5, 1, 5), (True, 1, 5)])
def test_prompt_errors(args):
    with pytest.raises(ValueError, match=r"\[idefics3_prompt\]"):
        idefics3_prompt(*args)


def test_stack_errors():
    a = idefics3_images(IMAGES["32x32"](), Idefics3ImageConfig.from_hf(SMALL))
    b = idefics3_images(IMAGES["32x32"](), Idefics3ImageConfig(longest_edge=64, max_image_size=64))
    with pytest.raises(ValueError, match="different max_image_size"):
        stack_idefics3([[a], [b]])
    with pytest.raises(ValueError, match="no images"):
        stack_idefics3([[]])
