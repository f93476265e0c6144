"""InternVL 2.5 / 3 (graphdsl.models.internvl) against HF: InternVLModel.get_image_features on tiles
from GotOcr2ImageProcessorPil (crop_to_patches=True, as InternVLProcessor calls it), for both
InternViT variants (LayerNorm; RMSNorm + q/k norm + post LayerNorm), several images of different
sizes in one batch, and the whole HF folder -> graphdsl convert -> graphdsl embed --image path.

Bound: 1e-5 relative L2 in f32 (printed).
"""
from __future__ import annotations

import numpy as np
import pytest
from cli_run import convert_and_embed
from hf_refs import need_torch, randomize, rel_err
from PIL import Image

import graphdsl
from graphdsl.models import internvl
from graphdsl.preprocess.internvl import InternVLImageConfig, internvl_images
from target import BACKEND

BOUND = 1e-5
VARIANTS = {"300m": {}, "6b": {"norm_type": "rms_norm", "use_qk_norm": True, "use_mean_pooling": False,
                               "attention_bias": True}}


def internvl_tiny(seed=0, variant="300m", image_size=32, patch_size=4):
    torch = need_torch()
    from hf_refs import tiny_llama
    from transformers import InternVLConfig, InternVLForConditionalGeneration, InternVLVisionConfig
    torch.manual_seed(seed)
    vc = InternVLVisionConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2,
                              image_size=image_size, patch_size=patch_size, **VARIANTS[variant])
    cfg = InternVLConfig(vision_config=vc, text_config=tiny_llama(), downsample_ratio=0.5,
                         attn_implementation="eager")
    return cfg, randomize(InternVLForConditionalGeneration(cfg), seed)


def hf_features(model, tiles):
    """HF's rows for one image's tiles: (n_tiles, n_tokens, d)."""
    torch = need_torch()
    with torch.no_grad():
        out = model.model.get_image_features(torch.from_numpy(np.ascontiguousarray(tiles)))
    return out.pooler_output.numpy()


def image(w=70, h=45, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def hf_tiles(img, size=32, **kw):
    from transformers import GotOcr2ImageProcessorPil
    proc = GotOcr2ImageProcessorPil(size={"height": size, "width": size}, crop_to_patches=True, **kw)
    return proc(images=[img], return_tensors="np")["pixel_values"]


@pytest.fixture(scope="module", params=list(VARIANTS))
def tiny(request):
    cfg, model = internvl_tiny(variant=request.param)
    c = internvl.config_from_hf(cfg)
    return cfg, model, c, internvl.hf_to_gguf(model.state_dict(), c)


def test_config_reads_the_variant(tiny):
    cfg, _, c, w = tiny
    rms = cfg.vision_config.norm_type == "rms_norm"
    assert (c.norm, c.qk_norm, c.post_ln, c.attn_bias) == (("rms", True, True, True) if rms else
                                                           ("layer", False, False, False))
    assert ("v.blk.0.attn_q_norm.weight" in w) == rms and ("v.post_ln.weight" in w) == rms


@pytest.mark.parametrize("size", [(70, 45), (45, 90), (32, 32)], ids=["wide", "tall", "one-tile"])
def test_tiles_from_hf_processor_match_hf_features(tiny, size):
    """Tiles as HF's processor cuts them (test_preprocess_internvl.py holds graphdsl's bit-exact to it)."""
    _, model, c, w = tiny
    tiles = hf_tiles(image(*size))
    assert (tiles.shape[0] > 1) == (size != (32, 32))
    ref = hf_features(model, tiles)
    g = internvl.build(c, n_tiles=tiles.shape[0])
    for backend in (BACKEND, "reference"):
        out = graphdsl.compile(g, backend, weights=w)(pixels=tiles)["embd"]
        err = rel_err(out, ref)
        print(f"internvl {c.norm} {size} on {backend}: {err:.2e}")
        assert err <= BOUND


def test_several_images_of_different_sizes_in_one_batch(tiny):
    """Three images (13, 3 and 1 tiles) through embed's build path in one call: each image's rows
    are HF's for its tiles, in order."""
    from graphdsl.embed import Embedder
    _, model, c, w = tiny
    imgs = [hf_tiles(image(70, 45, 1)), hf_tiles(image(32, 96, 2)), hf_tiles(image(30, 30, 3))]
    assert len({t.shape[0] for t in imgs}) == 3
    emb = Embedder(None, {"image": internvl.InternVLVision(c)}, weights=w, backend=BACKEND)
    got = emb([("image", t) for t in imgs])
    ref = np.concatenate([hf_features(model, t).reshape(-1, c.n_mm_embd) for t in imgs])
    err = rel_err(got.embd, ref)
    print(f"internvl {c.norm} batch of 3: {err:.2e}")
    assert err <= BOUND


def test_negative_controls_fail(tiny):
    """The comparison sees the tile's patch order, the layer scales and the class token's place."""
    _, model, c, w = tiny
    tiles = np.random.default_rng(1).standard_normal((2, 3, c.image_size, c.image_size)).astype(np.float32)
    ref = hf_features(model, tiles)
    run = graphdsl.compile(internvl.build(c, n_tiles=2), BACKEND, weights=w)
    assert rel_err(run(pixels=tiles)["embd"], ref) <= BOUND
    assert rel_err(run(pixels=np.ascontiguousarray(tiles.transpose(0, 1, 3, 2)))["embd"], ref) > 100 * BOUND
    no_ls = dict(w, **{"v.blk.1.ls2.weight": np.ones_like(w["v.blk.1.ls2.weight"])})
    out = graphdsl.compile(internvl.build(c, n_tiles=2), BACKEND, weights=no_ls)(pixels=tiles)["embd"]
    assert rel_err(out, ref) > 100 * BOUND
    pos = w["v.position_embd.weight"]  # llama.cpp's layout: the class token's position last
    cls_last = dict(w, **{"v.position_embd.weight": np.concatenate([pos[1:], pos[:1]])})
    out = graphdsl.compile(internvl.build(c, n_tiles=2), BACKEND, weights=cls_last)(pixels=tiles)["embd"]
    assert rel_err(out, ref) > 100 * BOUND


@pytest.mark.children
def test_hf_folder_converts_and_embeds(tiny, tmp_path):
    """HF dir (model + GotOcr2 processor config) -> graphdsl convert -> graphdsl embed --image, two
    images of different sizes: HF's processor + features, rows in image order."""
    from transformers import GotOcr2ImageProcessorPil
    cfg, model, c, _ = tiny
    folder = tmp_path / "hf"
    model.save_pretrained(folder)
    GotOcr2ImageProcessorPil(size={"height": 32, "width": 32}, image_mean=[0.485, 0.456, 0.406],
                             image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    paths = []
    for i, size in enumerate([(70, 45), (40, 100)]):
        paths.append(tmp_path / f"i{i}.png")
        image(*size, seed=i).save(paths[-1])
    gguf, out = tmp_path / "m.gguf", tmp_path / "e.npy"
    convert_and_embed(folder, gguf, out, "--image", paths[0], "--image", paths[1])
    kw = dict(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    ref = np.concatenate([hf_features(model, hf_tiles(Image.open(p), **kw)).reshape(-1, c.n_mm_embd) for p in paths])
    got = np.load(out)
    assert got.shape == ref.shape and rel_err(got, ref) <= BOUND


MAPPING = {"vision_tower.embeddings": "v.inp_pos", "encoder.layer.{i}.attention": "v.blk.{i}.attn_out",
           "encoder.layer.{i}.mlp.fc1": "v.blk.{i}.ffn_up", "encoder.layer.{i}": "v.blk.{i}.layer_out",
           "multi_modal_projector.layer_norm": "mm.model.mlp.0", "multi_modal_projector": "mm.model.mlp.3"}


def test_node_by_node_against_hf(tiny):
    """inspect.diff_hf: every mapped node within the bound; a weight scaled by 1.05 is named as the
    first bad node."""
    from graphdsl.inspect import diff_hf
    torch = need_torch()
    _, model, c, w = tiny
    tiles = np.random.default_rng(2).standard_normal((1, 3, c.image_size, c.image_size)).astype(np.float32)
    forward = lambda m, px: m.model.get_image_features(px)  # noqa: E731
    rep = diff_hf(graphdsl.compile(internvl.build(c), BACKEND, weights=w), {"pixels": tiles}, model,
                  torch.from_numpy(tiles), MAPPING, forward=forward, rel_l2=BOUND)
    assert rep.ok, rep
    bad = dict(w, **{"v.blk.1.ffn_up.weight": w["v.blk.1.ffn_up.weight"] * np.float32(1.05)})
    rep = diff_hf(graphdsl.compile(internvl.build(c), BACKEND, weights=bad), {"pixels": tiles}, model,
                  torch.from_numpy(tiles), MAPPING, forward=forward, rel_l2=BOUND)
    assert not rep.ok and rep.first_bad.name == "v.blk.1.ffn_up"


# -- llama.cpp's own converter (tests/support/lcp_convert.py; skipped without it) ---------------------
def lcp_folder(path, variant, seed=0):
    """An HF InternVL folder in the layout llama.cpp's converter reads (Intern-S1's: vision_config
    architectures InternVisionModel, weights under model.): 4 layers (its tensor map numbers mlp1.N
    only below the block count), no final LayerNorm (it has no name for HF's), and the activations
    its file can say: SiLU in the tower (clip.use_silu), tanh-GELU in the projector (clip.cpp's)."""
    import json
    from pathlib import Path

    import lcp_convert
    from hf_refs import tiny_llama
    from transformers import (GotOcr2ImageProcessorPil, InternVLConfig, InternVLForConditionalGeneration,
                              InternVLVisionConfig)
    torch = need_torch()
    torch.manual_seed(seed)
    kw = {**VARIANTS[variant], "use_mean_pooling": True}
    vc = InternVLVisionConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=4,
                              image_size=32, patch_size=4, hidden_act="silu", **kw)
    cfg = InternVLConfig(vision_config=vc, text_config=tiny_llama(), projector_hidden_act="gelu_pytorch_tanh",
                         attn_implementation="eager")
    model = randomize(InternVLForConditionalGeneration(cfg), seed)
    model.save_pretrained(path)
    conf = json.loads((Path(path) / "config.json").read_text())
    conf["vision_config"]["architectures"] = ["InternVisionModel"]
    (Path(path) / "config.json").write_text(json.dumps(conf))
    GotOcr2ImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(path)
    lcp_convert.hub_layout(path, [("vision_tower.", "model.vision_tower."),
                                  ("multi_modal_projector.", "model.multi_modal_projector.")])
    return model


@pytest.mark.children
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_llama_cpp_file_equals_hf(tmp_path, variant):
    """llama.cpp's convert_hf_to_gguf.py --mmproj writes the file (mm.model.mlp.N, tables with HF's
    batch axes, no graphdsl key); graphdsl embed reads it as HF computes, class token first; the
    same file with the class token's position moved last (llama.cpp's graph appends the token
    after the patches) misses."""
    import lcp_convert
    from cli_run import graphdsl as cli
    from graphdsl.gguf_io import load_mmproj
    model = lcp_folder(tmp_path / "hf", variant)
    path = lcp_convert.convert(tmp_path / "hf", tmp_path / "lcp.gguf", "f32")
    cfg, tensors = load_mmproj(path)
    assert tensors["v.position_embd.weight"].shape == (65, 64) and any("leading axes" in q for q in cfg.quirks)
    image(70, 45).save(tmp_path / "i.png")
    cli("embed", "--mmproj", path, "--image", tmp_path / "i.png", "-o", tmp_path / "e.npy", "-f", "--backend", "cpu")
    ref = hf_features(model, hf_tiles(image(70, 45))).reshape(-1, 48)
    err = rel_err(np.load(tmp_path / "e.npy"), ref)
    print(f"internvl {variant} llama.cpp file: {err:.2e}")
    assert err <= BOUND
    from graphdsl.models import from_gguf
    m = from_gguf(path)
    w = dict(m.weights)
    pos = w["v.position_embd.weight"]
    w["v.position_embd.weight"] = np.concatenate([pos[1:], pos[:1]])
    c = m.vision.cfg
    tiles = hf_tiles(image(70, 45))
    out = graphdsl.compile(internvl.build(c, n_tiles=tiles.shape[0]), BACKEND, weights=w)(pixels=tiles)["embd"]
    assert rel_err(out, ref.reshape(out.shape)) > 100 * BOUND
