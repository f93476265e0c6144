"""Phi-4-multimodal vision (graphdsl.models.phi4_vision) against HF: the image embedding's output
(``image_embeds`` after the projector) of Phi4MultimodalForCausalLM, small random config, for
images needing 1, 4 and 12 crops, alone and as one batch of mixed crop counts.

Input: preprocess.phi4's crops, masks and sizes (tests/models/test_preprocess_phi4.py holds them equal to
HF's Phi4MultimodalImageProcessor), in HF's padded batch layout for the reference.
Bound: 1e-5 relative L2 in f32 (measured 1e-6 to 4e-6 on both backends; printed).
"""
from __future__ import annotations

import numpy as np
import pytest
from cli_run import convert_and_embed
from hf_refs import need_torch, rel_err
from phi4_hf import hf_image_embeds, tiny_phi4
from PIL import Image
import graphdsl
from graphdsl.models import phi4_vision as pv
from graphdsl.preprocess.phi4 import Phi4Image, Phi4ImageConfig, phi4_image
from target import BACKEND

BOUND = 1e-5
SIZES = {1: (20, 30), 4: (50, 60), 12: (70, 100)}  # crops -> (h, w) at crop 32


@pytest.fixture(scope="module")
def tiny():
    cfg, model = tiny_phi4()
    c = pv.config_from_hf(cfg)
    return model, c, pv.hf_to_gguf(model.state_dict(), c)


def _image(h, w, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _hf_batch(imgs: list[Phi4Image]):
    """HF's batched layout of our images: crops padded to the largest count (zeros, masks of ones)."""
    k = max(im.pixel_values.shape[0] for im in imgs)
    px = np.zeros((len(imgs), k, *imgs[0].pixel_values.shape[1:]), np.float32)
    mask = np.ones((len(imgs), k, *imgs[0].patch_mask.shape[1:]), np.float32)
    for i, im in enumerate(imgs):
        px[i, :len(im.pixel_values)] = im.pixel_values
        mask[i, :len(im.patch_mask)] = im.patch_mask
    return px, np.asarray([im.image_size for im in imgs]), mask


def _run(c, w, imgs, backend):
    g = pv.build(c, imgs)
    return graphdsl.compile(g, backend, weights=w)(pv.feeds_of(c, imgs))["embd"]


@pytest.mark.parametrize("n_crops", [1, 4, 12])
def test_image_embeds_match_hf(tiny, n_crops):
    model, c, w = tiny
    im = phi4_image(_image(*SIZES[n_crops]), Phi4ImageConfig(crop=c.image_size, patch=c.patch_size))
    assert im.grid[0] * im.grid[1] == n_crops and not im.patch_mask.all()  # padded: masks and stretched positions
    ref = hf_image_embeds(model, *_hf_batch([im]))
    assert ref.shape[0] == pv.Phi4Vision(c).n_tokens(im)
    for backend in (BACKEND, "reference"):
        err = rel_err(_run(c, w, [im], backend), ref)
        print(f"phi4 vision {n_crops} crops on {backend}: {err:.2e}")
        assert err <= BOUND


def test_batch_of_mixed_crop_counts_matches_hf(tiny):
    """[12 crops, 1 crop, 4 crops] as one graph (build_items) == HF's padded batch."""
    model, c, w = tiny
    pre = Phi4ImageConfig(crop=c.image_size, patch=c.patch_size)
    imgs = [phi4_image(_image(*SIZES[k], seed=k), pre) for k in (12, 1, 4)]
    ref = hf_image_embeds(model, *_hf_batch(imgs))
    err = rel_err(_run(c, w, imgs, BACKEND), ref)
    print(f"phi4 vision batch [12, 1, 4] on {BACKEND}: {err:.2e}")
    assert err <= BOUND


@pytest.mark.parametrize("broken", ["separators swapped", "no key mask", "raster positions", "crops transposed"])
def test_negative_controls_fail(tiny, broken):
    """Each part the comparison is meant to see, broken on purpose, must fail it."""
    model, c, w = tiny
    im = phi4_image(_image(*SIZES[4]), Phi4ImageConfig(crop=c.image_size, patch=c.patch_size))
    ref = hf_image_embeds(model, *_hf_batch([im]))
    feeds, weights = pv.feeds_of(c, [im]), dict(w)
    if broken == "separators swapped":
        weights[pv.NEWLINE], weights[pv.VIEW_SEP] = w[pv.VIEW_SEP], w[pv.NEWLINE]
    elif broken == "no key mask":
        feeds["image.items.mask"] = np.zeros_like(feeds["image.items.mask"])
    elif broken == "raster positions":
        p = c.side * c.side
        feeds["image.items.pos"] = np.tile(np.arange(p, dtype=np.int32), len(im.pixel_values))
    else:
        feeds["image.items.pixels"] = np.ascontiguousarray(feeds["image.items.pixels"][:, :, ::-1])
    out = graphdsl.compile(pv.build(c, [im]), BACKEND, weights=weights)(feeds)["embd"]
    assert rel_err(out, ref) > 100 * BOUND


def test_positions_are_hf_bucketing(tiny):
    """positions() == HF's embedding position ids for partial masks (read from HF's own module)."""
    torch = need_torch()
    model, c, _ = tiny
    emb = model.model.embed_tokens_extend.image_embed.img_processor.embeddings
    p = c.side
    for rows, cols in ((p, p), (5, p), (p, 3), (1, 7)):
        m = np.zeros((p, p), bool)
        m[:rows, :cols] = True
        ids = {}
        h = emb.position_embedding.register_forward_hook(lambda mod, a, o: ids.__setitem__("pos", a[0]))
        with torch.no_grad():
            emb(torch.zeros(1, 3, c.image_size, c.image_size), torch.from_numpy(m)[None])
        h.remove()
        assert np.array_equal(ids["pos"][0].numpy(), pv.positions(m)), (rows, cols)


def test_bad_items_raise(tiny):
    _, c, _ = tiny
    g = graphdsl.Graph("x")
    with pytest.raises(ValueError, match="phi4_image"):
        pv.Phi4Vision(c).build_items(g, "image.items", [np.zeros((3, 32, 32), np.float32)])
    im = Phi4Image(np.zeros((2, 3, 32, 32), np.float32), np.ones((2, 8, 8), bool), (2, 2))
    with pytest.raises(ValueError, match="grid"):
        pv.Phi4Vision(c).build_items(g, "image.items", [im])


@pytest.mark.children
def test_hf_folder_converts_and_embeds(tiny, tmp_path):
    """HF dir -> graphdsl convert -> graphdsl embed --image: the file's projector type is "phi4" and
    the rows are HF's image_embeds for the same image (pre-processed by the file's hook)."""
    from graphdsl.gguf_io import load_mmproj
    model, c, _ = tiny
    folder = tmp_path / "hf"
    model.save_pretrained(folder)
    img = tmp_path / "i.png"
    _image(*SIZES[4]).save(img)
    gguf, out = tmp_path / "m.gguf", tmp_path / "e.npy"
    convert_and_embed(folder, gguf, out, "--image", img)
    assert load_mmproj(gguf)[0].vision.projector_type == "phi4"
    im = phi4_image(img, Phi4ImageConfig(crop=c.image_size, patch=c.patch_size))
    ref = hf_image_embeds(model, *_hf_batch([im]))
    assert rel_err(np.load(out), ref) <= BOUND
