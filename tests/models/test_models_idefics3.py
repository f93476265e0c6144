"""Idefics3 / SmolVLM (graphdsl.models.idefics3) against HF: Idefics3ForConditionalGeneration's
get_image_features on frames from Idefics3ImageProcessor, with and without splitting, and the
whole HF folder -> graphdsl convert -> graphdsl embed --image path.

Bound: 1e-5 relative L2 in f32 (the other towers measure ~5e-7 here; this one too, printed).
"""
from __future__ import annotations


import numpy as np
import pytest
from cli_run import convert_and_embed
from hf_refs import need_torch, randomize, rel_err
from PIL import Image
import graphdsl
from graphdsl.models import idefics3
from graphdsl.preprocess.idefics3 import Idefics3ImageConfig, idefics3_images
from target import BACKEND

BOUND = 1e-5


def idefics3_tiny(seed=0, image_size=32, patch_size=4, scale_factor=2):
    torch = need_torch()
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration
    from transformers.models.idefics3.configuration_idefics3 import Idefics3VisionConfig
    from hf_refs import tiny_llama
    torch.manual_seed(seed)
    vc = Idefics3VisionConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2,
                              image_size=image_size, patch_size=patch_size)
    cfg = Idefics3Config(vision_config=vc, text_config=tiny_llama(), scale_factor=scale_factor,
                         attn_implementation="eager")
    return cfg, randomize(Idefics3ForConditionalGeneration(cfg), seed)


def _hf_features(model, frames):
    torch = need_torch()
    with torch.no_grad():
        out = model.model.get_image_features(torch.from_numpy(frames)[None])
    # transformers 5: per prompt of the batch, its frames' tokens (n_frames * n_tokens, d)
    feats = out.pooler_output[0] if not isinstance(out, torch.Tensor) else out
    return feats.numpy().reshape(frames.shape[0], -1, feats.shape[-1])


def _image(w=70, h=45, seed=0):
    a = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(a)


@pytest.fixture(scope="module")
def tiny():
    cfg, model = idefics3_tiny()
    c = idefics3.config_from_hf(cfg)
    return cfg, model, c, idefics3.hf_to_gguf(model.state_dict(), c)


@pytest.mark.parametrize("split", [True, False], ids=["tiles+global", "global"])
def test_frames_from_hf_processor_match_hf_features(tiny, split):
    """Frames as HF's processor cuts them (tests/models/test_preprocess_idefics3.py holds them bit-exact to
    Idefics3ImageProcessor): tiles row by row, then the global image."""
    _, model, c, w = tiny
    pre = Idefics3ImageConfig(longest_edge=4 * c.image_size, max_image_size=c.image_size, do_image_splitting=split)
    im = idefics3_images(_image(), pre)
    frames = im.pixel_values
    assert frames.shape[0] == (im.rows * im.cols + 1 if split else 1) and (frames.shape[0] > 1) == split
    ref = _hf_features(model, frames)
    g = idefics3.build(c, n_frames=frames.shape[0])
    for backend in (BACKEND, "reference"):
        out = graphdsl.compile(g, backend, weights=w)(pixels=frames)["embd"]
        err = rel_err(out, ref)
        print(f"idefics3 {'split' if split else 'global'} on {backend}: {err:.2e}")
        assert err <= BOUND


def test_negative_control_a_wrong_patch_order_fails(tiny):
    """The comparison sees patch order: frames transposed (rows and columns swapped) must fail."""
    _, model, c, w = tiny
    frames = np.random.default_rng(1).standard_normal((2, 3, c.image_size, c.image_size)).astype(np.float32)
    ref = _hf_features(model, frames)
    run = graphdsl.compile(idefics3.build(c, n_frames=2), BACKEND, weights=w)
    assert rel_err(run(pixels=frames)["embd"], ref) <= BOUND
    bad = run(pixels=np.ascontiguousarray(frames.transpose(0, 1, 3, 2)))["embd"]
    assert rel_err(bad, ref) > 100 * BOUND


def test_hf_positions_are_the_exact_ones_for_this_grid():
    """graphdsl uses positions 0..n-1; HF's float32 bucketing agrees for the grids tested here."""
    torch = need_torch()
    for n in (8, 26, 32):  # the tiny test's grid, SmolVLM's 364/14 and 512/16
        b = torch.arange(1 / n, 1.0, 1 / n)
        f = torch.clamp(torch.arange(n, dtype=torch.float32) * (1.0 / torch.tensor(n)), max=1 - 1e-6)
        assert torch.equal(torch.bucketize(f, b, right=True), torch.arange(n)), n


@pytest.mark.children
def test_hf_folder_converts_and_embeds(tiny, tmp_path):
    """HF dir -> graphdsl convert -> graphdsl embed --image: the file's encoder and the image's frames
    (the registry's frames hook: tiles + global image) give HF's features for the same frames."""
    cfg, model, c, _ = tiny
    folder = tmp_path / "hf"
    model.save_pretrained(folder)
    img = tmp_path / "i.png"
    _image().save(img)
    gguf, out = tmp_path / "m.gguf", tmp_path / "e.npy"
    convert_and_embed(folder, gguf, out, "--image", img)
    frames = idefics3_images(img, Idefics3ImageConfig(longest_edge=4 * c.image_size, max_image_size=c.image_size))
    ref = _hf_features(model, frames.pixel_values)
    got = np.load(out)
    assert rel_err(got, ref.reshape(-1, ref.shape[-1])) <= BOUND


# HF Idefics3 module names -> graphdsl node names (the tower's layers, the connector)
MAPPING = {"embeddings": "v.inp_pos", "encoder.layers.{i}.self_attn": "v.blk.{i}.attn_out",
           "encoder.layers.{i}.mlp.fc1": "v.blk.{i}.ffn_up", "encoder.layers.{i}": "v.blk.{i}.layer_out",
           "post_layernorm": "v.post_ln", "connector.modality_projection": "mm.model.fc"}


def test_node_by_node_against_hf(tiny):
    """inspect.diff_hf with the mapping above: every mapped node within the bound; a weight scaled
    by 1.05 (negative control) is named as the first bad node."""
    from graphdsl.inspect import diff_hf
    torch = need_torch()
    _, model, c, w = tiny
    frames = np.random.default_rng(2).standard_normal((1, 3, c.image_size, c.image_size)).astype(np.float32)
    run = graphdsl.compile(idefics3.build(c, n_frames=1), BACKEND, weights=w)
    forward = lambda m, px: m.model.get_image_features(px)  # noqa: E731
    rep = diff_hf(run, {"pixels": frames}, model, torch.from_numpy(frames)[None], MAPPING, forward=forward,
                  rel_l2=BOUND)
    assert rep.ok, rep
    bad = dict(w, **{"v.blk.1.ffn_up.weight": w["v.blk.1.ffn_up.weight"] * np.float32(1.05)})
    broken = graphdsl.compile(idefics3.build(c, n_frames=1), BACKEND, weights=bad)
    rep = diff_hf(broken, {"pixels": frames}, model, torch.from_numpy(frames)[None], MAPPING, forward=forward,
                  rel_l2=BOUND)
    assert not rep.ok and rep.first_bad.name == "v.blk.1.ffn_up"
