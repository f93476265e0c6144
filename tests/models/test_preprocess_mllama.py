"""mllama pre-processing against HF's MllamaImageProcessor (PIL backend) and MllamaProcessor.

Pixels are compared exactly (both sides resize the uint8 image with Pillow and rescale/normalize
in the same dtypes); aspect-ratio ids, tile masks and the cross-attention mask are integers.
MllamaProcessor needs a tokenizer: a tiny word-level one is built here (no hub access).
"""
import numpy as np
import pytest
from PIL import Image

from graphdsl.preprocess.mllama import (
    MllamaImageConfig,
    cross_attention_mask,
    mllama_image,
    mllama_items,
    optimal_canvas,
    stack_mllama,
    supported_aspect_ratios,
)

pytest.importorskip("transformers")
from transformers.models.mllama.image_processing_pil_mllama import (  # noqa: E402
    MllamaImageProcessorPil,
    get_all_supported_aspect_ratios,
    get_optimal_tiled_canvas,
)

TILE = 16
SIZES = [(16, 16), (20, 17), (17, 40), (40, 17), (5, 70), (70, 5), (33, 33), (1, 1), (100, 64), (31, 16)]  # h x w


def _img(h, w, seed=0, c=3):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8))


def _hf(images, max_tiles=4, **kw):
    proc = MllamaImageProcessorPil(size={"height": TILE, "width": TILE}, max_image_tiles=max_tiles, **kw)
    return proc([images], return_tensors="np")


@pytest.mark.parametrize("hw", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_one_image_equals_hf_processor(hw):
    img = _img(*hw, seed=sum(hw))
    ref = _hf([img])
    ours = mllama_image(img, MllamaImageConfig(tile_size=TILE, max_image_tiles=4))
    np.testing.assert_array_equal(ours.pixel_values, ref["pixel_values"][0, 0])
    assert ours.aspect_ratio_id == ref["aspect_ratio_ids"][0, 0]
    np.testing.assert_array_equal(ours.aspect_ratio_mask, ref["aspect_ratio_mask"][0, 0])
    assert ours.n_tiles == ref["num_tiles"][0][0]


def test_batch_stack_and_other_settings_equal_hf():
    """Several images of a prompt, max 6 tiles, ImageNet mean/std, an RGBA image."""
    mean, std = [0.48, 0.45, 0.4], [0.27, 0.26, 0.28]
    imgs = [_img(30, 90, 1), _img(90, 30, 2), _img(20, 20, 3, c=4)]
    ref = _hf(imgs, max_tiles=6, image_mean=mean, image_std=std)
    cfg = MllamaImageConfig(tile_size=TILE, max_image_tiles=6, mean=mean, std=std)
    ours = stack_mllama([[mllama_image(i, cfg) for i in imgs]])
    for k in ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask"):
        np.testing.assert_array_equal(ours[k], ref[k], err_msg=k)
    assert (ref["aspect_ratio_ids"] > 1).all()  # the test covers multi-tile layouts


def test_geometry_helpers_equal_hf_on_a_grid():
    for n in (1, 4, 6):
        assert list(supported_aspect_ratios(n)) == [tuple(r) for r in get_all_supported_aspect_ratios(n)]
    for h in (1, 9, 16, 31, 57, 130):
        for w in (1, 15, 16, 40, 99):
            assert optimal_canvas(h, w, 4, TILE) == tuple(int(x) for x in get_optimal_tiled_canvas(h, w, 4, TILE))


def test_from_hf_config():
    cfg = MllamaImageConfig.from_hf({"size": {"height": 560, "width": 560}, "max_image_tiles": 4,
                                     "image_mean": [0.1, 0.2, 0.3], "image_std": [0.5, 0.5, 0.5]})
    assert (cfg.tile_size, cfg.max_image_tiles, cfg.mean) == (560, 4, (0.1, 0.2, 0.3))
    with pytest.raises(ValueError, match="square"):
        MllamaImageConfig.from_hf({"size": {"height": 560, "width": 448}})
    with pytest.raises(ValueError, match="max_image_tiles"):
        MllamaImageConfig(max_image_tiles=0)


# -- the processor: tokens, cross-attention mask ---------------------------------------------------
WORDS = ["<|begin_of_text|>", "<|image|>", "<|python_tag|>", "<pad>", "hello", "world", "what", "is", "this", "?"]


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", pad_token="<pad>")
    fast.add_special_tokens({"additional_special_tokens": ["<|image|>", "<|python_tag|>"]})
    return fast


def tiny_processor(max_tiles=4):
    from transformers import MllamaProcessor
    return MllamaProcessor(MllamaImageProcessorPil(size={"height": TILE, "width": TILE}, max_image_tiles=max_tiles),
                           tiny_tokenizer())


PROMPTS = {
    "text,image,text,image": "hello <|image|> what is this ? <|image|>",
    "image,text": "<|image|> what is this ?",
    "consecutive": "hello <|image|> <|image|> what is this <|image|> ?",
}


@pytest.mark.parametrize("name", list(PROMPTS))
def test_cross_attention_mask_equals_hf_processor(name):
    """HF's cross_attention_mask from token ids (the sparse spans, then the dense form): ours
    from the same ids and the images' tile counts."""
    prompt = PROMPTS[name]
    n = prompt.count("<|image|>")
    imgs = [_img(*SIZES[i + 2], seed=i) for i in range(n)]
    ref = tiny_processor()(images=[imgs], text=[prompt], return_tensors="np")
    ids = ref["input_ids"][0]
    cfg = MllamaImageConfig(tile_size=TILE, max_image_tiles=4)
    ours = [mllama_image(i, cfg) for i in imgs]
    image_id = WORDS.index("<|image|>")
    got = cross_attention_mask(ids, image_id, [o.n_tiles for o in ours], 4)
    np.testing.assert_array_equal(got, ref["cross_attention_mask"][0])
    assert got.any() and not got.all()
    if name == "consecutive":  # negative control: spans that ignore HF's grouping of consecutive images
        locs = [*np.flatnonzero(ids == image_id), len(ids)]
        naive = np.zeros_like(got)
        for i, o in enumerate(ours):
            naive[locs[i]:locs[i + 1], i, :o.n_tiles] = 1
        assert not np.array_equal(naive, ref["cross_attention_mask"][0])
    items = mllama_items(ids, image_id, ours)
    assert sum(isinstance(it, tuple) for it in items) == n
    assert np.concatenate([it for it in items if not isinstance(it, tuple)]).tolist() == ids.tolist()


def test_items_put_each_image_before_its_token():
    ids = [0, 4, 1, 6, 7, 1]
    items = mllama_items(ids, 1, ["a", "b"])
    assert [x if isinstance(x, tuple) else list(x) for x in items] == [[0, 4], ("image", "a"), [1, 6, 7],
                                                                     ("image", "b"), [1]]
    with pytest.raises(ValueError, match="2 image tokens"):
        mllama_items(ids, 1, ["a"])
