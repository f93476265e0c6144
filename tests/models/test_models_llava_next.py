"""LLaVA-NeXT anyres (graphdsl.models.llava_next) against HF: LlavaNextModel.get_image_features
(tower, projector, pack_image_features: unpadding and image_newline per row) on views from
LlavaNextImageProcessor, several images of different aspect ratios in one batch, and the whole
HF folder -> graphdsl convert -> graphdsl embed --image path.

Bound: 1e-5 relative L2 in f32, the repository's bound for towers compared with HF (they measure
3e-7 to 6e-7 here; packing moves rows without arithmetic, so it adds nothing). Negative controls:
no unpadding, the other grid orientation, tiles in column order, a zero newline.
"""
from __future__ import annotations


import numpy as np
import pytest
from cli_run import convert_and_embed
from hf_refs import need_torch, randomize, rel_err, tiny_llama
from PIL import Image
import graphdsl
from graphdsl.models import llava_next
from graphdsl.preprocess.anyres import AnyresConfig, anyres_images
from target import BACKEND

BOUND = 1e-5
PINPOINTS = [[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]]
PROC = {"size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32}, "image_grid_pinpoints": PINPOINTS}
SIZES = [(33, 66), (66, 33), (40, 90), (60, 66)]  # height x width: grids 1x2, 2x1, 1x3, 2x2 (cols and rows unpadded)


def llava_next_tiny(feature_layer=-2, select="default", seed=0):
    torch = need_torch()
    from transformers import CLIPVisionConfig, LlavaNextConfig, LlavaNextForConditionalGeneration
    torch.manual_seed(seed)
    vc = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=3,
                          image_size=32, patch_size=8)
    cfg = LlavaNextConfig(vision_config=vc, text_config=tiny_llama(), vision_feature_layer=feature_layer,
                          vision_feature_select_strategy=select, image_grid_pinpoints=PINPOINTS,
                          attn_implementation="eager")
    return cfg, randomize(LlavaNextForConditionalGeneration(cfg), seed)


def _image(hw, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*hw, 3), dtype=np.uint8))


def _hf_features(model, images) -> list[np.ndarray]:
    """HF's processor (PIL) on the images as one batch, then get_image_features: per image its rows."""
    torch = need_torch()
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
    out = LlavaNextImageProcessorPil(**PROC)(images, return_tensors="np")
    with torch.no_grad():
        f = model.model.get_image_features(torch.from_numpy(out["pixel_values"]), torch.from_numpy(out["image_sizes"]))
    return [x.numpy() for x in f.pooler_output]


@pytest.fixture(scope="module", params=[-2, (1, 3)], ids=["layer-2", "layers1+3"])
def tiny(request):
    fl = request.param if isinstance(request.param, int) else list(request.param)
    cfg, model = llava_next_tiny(fl)
    c = llava_next.config_from_hf(cfg)
    images = [_image(hw, i) for i, hw in enumerate(SIZES)]
    return model, c, llava_next.hf_to_gguf(model.state_dict(), c), images, _hf_features(model, images)


def _ours(c, w, views, backend=BACKEND):
    return graphdsl.compile(llava_next.build(c, views), backend, weights=w)(
        pixels=np.concatenate([v.pixel_values for v in views]))["embd"]


def test_batch_of_aspect_ratios_matches_hf(tiny):
    """Four images (wide, tall, 1x3, square grids) in one batch, on the backend under test and on
    the reference interpreter: rows, order and values as HF's packed features."""
    _, c, w, images, ref = tiny
    views = [anyres_images(im, AnyresConfig.from_hf(PROC)) for im in images]
    assert len({v.grid for v in views}) == 4
    for v, r in zip(views, ref):
        assert v.n_tokens(c.patches_per_side) == len(r)
    for backend in (BACKEND, "reference"):
        err = rel_err(_ours(c, w, views, backend), np.concatenate(ref))
        print(f"llava_next {c.feature_layer} on {backend}: {err:.2e}")
        assert err <= BOUND


def test_build_items_hook_gives_each_image_its_rows(tiny):
    """The mixed-batch hook: one input for all views, one output per image, the layouts as key."""
    _, c, w, images, ref = tiny
    views = [anyres_images(im, AnyresConfig.from_hf(PROC)) for im in images]
    g = graphdsl.Graph("items")
    feeds, outs, key = llava_next.LlavaNextVision(c).build_items(g, "image.items", views)
    assert list(feeds) == ["image.items.pixels"] and len(outs) == len(views)
    assert key == ("llava_next", tuple((v.image_size, v.grid) for v in views))
    for i, o in enumerate(outs):
        g.output(f"img{i}", o)
    got = graphdsl.compile(g, BACKEND, weights=w)(feeds)
    for i, r in enumerate(ref):
        assert rel_err(got[f"img{i}"], r) <= BOUND


@pytest.mark.parametrize("broken", ["no_unpad", "grid_transposed", "tiles_column_order", "zero_newline"])
def test_negative_controls_fail(tiny, broken, monkeypatch):
    """Each deliberate defect must fail the comparison the real model passes (on the 1x3 and 2x2
    images, whose letterboxes need unpadding)."""
    _, c, w, images, ref = tiny
    views = [anyres_images(im, AnyresConfig.from_hf(PROC)) for im in images[2:]]
    ref = np.concatenate(ref[2:])
    if broken == "no_unpad":
        monkeypatch.setattr(llava_next, "unpad_crop", lambda hw, g: (0, g[0], 0, g[1]))
    elif broken == "grid_transposed":  # the other orientation of the same pinpoint (rows <-> cols)
        views = [type(v)(v.pixel_values, v.image_size, v.grid[::-1]) for v in views]
    elif broken == "tiles_column_order":
        def col_order(v):
            r, k = v.grid
            t = v.pixel_values[1:].reshape(r, k, *v.pixel_values.shape[1:]).swapaxes(0, 1).reshape(-1, 3, 32, 32)
            return type(v)(np.concatenate([v.pixel_values[:1], t]), v.image_size, v.grid)
        views = [col_order(v) for v in views]
    else:
        w = dict(w, **{"v.image_newline": np.zeros_like(w["v.image_newline"])})
    got = _ours(c, w, views)
    assert got.shape != ref.shape or rel_err(got, ref) > 100 * BOUND


def test_full_select_is_refused_as_hf_cannot_pack_it():
    """'full' keeps the class token: p*p + 1 rows per tile are no grid. HF fails inside
    pack_image_features; graphdsl refuses the config with a reason."""
    torch = need_torch()
    cfg, model = llava_next_tiny(select="full")
    with pytest.raises(RuntimeError):
        _hf_features(model, [_image((45, 70))])
    with pytest.raises(ValueError, match="form no grid"):
        llava_next.config_from_hf(cfg)
    del torch


def test_bad_layouts_raise(tiny):
    _, c, w, images, _ = tiny
    v = anyres_images(images[0], AnyresConfig.from_hf(PROC))
    with pytest.raises(ValueError, match=r"do not fit a \(1, 3\) grid"):
        llava_next.LlavaNextVision(c).build_items(graphdsl.Graph("x"), "i.", [type(v)(v.pixel_values, v.image_size,
                                                                                    (1, 3))])
    with pytest.raises(ValueError, match="AnyresImage"):
        llava_next.LlavaNextVision(c).views([v.pixel_values])
    with pytest.raises(ValueError, match="build_items"):
        llava_next.LlavaNextVision(c).rows(v)
    g = llava_next.build(c, [v])
    run = graphdsl.compile(g, "reference", weights=w)
    with pytest.raises(ValueError, match="fixed by the layouts"):
        run(pixels=np.zeros((5, 3, 32, 32), np.float32))


@pytest.mark.children
def test_hf_folder_converts_and_embeds(tiny, tmp_path):
    """HF dir -> graphdsl convert -> graphdsl embed --image x2: the file (projector mlp,
    v.image_newline, (width, height) pinpoints) and the registry's frames hook give HF's rows for
    both images, in order."""
    model, c, _, images, ref = tiny
    folder = tmp_path / "hf"
    model.save_pretrained(folder)
    paths = []
    for i, im in enumerate(images[:2]):
        paths.append(tmp_path / f"i{i}.png")
        im.save(paths[-1])
    gguf, out = tmp_path / "m.gguf", tmp_path / "e.npy"
    convert_and_embed(folder, gguf, out, *[a for p in paths for a in ("--image", p)])
    from graphdsl.gguf_io.reader import metadata_value, read_gguf
    f = read_gguf(gguf)
    assert metadata_value(f, "clip.projector_type", str) == "mlp" and "v.image_newline" in f.tensors
    assert list(metadata_value(f, llava_next.KEY_PINPOINTS, "ints")) == [v for h, w in PINPOINTS for v in (w, h)]
    from graphdsl.models import from_gguf
    m = from_gguf(gguf)
    assert m.archs["image"].name == "llava_next" and m.vision.cfg.grid_pinpoints == tuple(map(tuple, PINPOINTS))
    assert rel_err(np.load(out), np.concatenate(ref[:2])) <= BOUND


def test_mixed_batch_places_each_image_rows_in_order(tiny):
    """[text, image, text, image] through embed.Embedder: spans as HF's row counts, image rows as
    HF's packed features, text rows as the token table; the same feed shapes with another layout
    (the two images swapped: same views, other grids) compile anew and give HF's rows again."""
    torch = need_torch()
    from graphdsl.embed import Embedder
    from graphdsl.models import text
    model, c, w, images, ref = tiny
    tc = text.TextConfig(n_vocab=model.config.text_config.vocab_size, n_embd=c.n_mm_embd)
    table = model.model.language_model.embed_tokens.weight.detach().numpy()
    emb = Embedder(text.TextEmbedding(tc), {"image": llava_next.LlavaNextVision(c)}, backend=BACKEND,
                   weights={**w, "token_embd.weight": table})
    views = [anyres_images(im, AnyresConfig.from_hf(PROC)) for im in images[:2]]
    ids = [np.array([1, 2, 3], np.int32), np.array([4, 5], np.int32)]
    for order in ((0, 1), (1, 0)):
        out = emb([ids[0], ("image", views[order[0]]), ids[1], ("image", views[order[1]])])
        assert [s.n_tokens for s in out.spans] == [3, len(ref[order[0]]), 2, len(ref[order[1]])]
        want = np.concatenate([table[ids[0]], ref[order[0]], table[ids[1]], ref[order[1]]])
        assert rel_err(out.embd, want) <= BOUND
    assert len(emb._exes) == 2  # one compiled graph per layout
    del torch


@pytest.mark.parametrize("pts, match", [([64, 32, 32], "pairs"), ("absent", "pairs"), ([48, 32], "multiples"),
                                        ([32 * 64, 32 * 64], "max_tiles"), (None, "needs v.image_newline")])
def test_bad_files_raise_naming_the_file(tmp_path, pts, match):
    """Pinpoints a file may hold that no grid fits, and a file without its newline: ValueError
    naming the file, before any graph is built."""
    from graphdsl.convert.writer import write_gguf
    from graphdsl.gguf_io import MMPROJ_ARCH
    from graphdsl.models import from_gguf
    from graphdsl.models.common import weight_shapes_of
    arch = llava_next.ARCH
    cfg = arch.examples[0]
    kv = [(k, np.array(pts if isinstance(pts, list) else [32, 64], np.int32) if k == llava_next.KEY_PINPOINTS else v)
          for k, v in arch.config_to_gguf(cfg) if not (pts == "absent" and k == llava_next.KEY_PINPOINTS)]
    shapes = weight_shapes_of(llava_next.LlavaNextVision(cfg))
    if pts is None:
        shapes.pop("v.image_newline")
        shapes["model.image_newline"] = (cfg.n_mm_embd,)  # the older files' name
    path = tmp_path / "bad.gguf"
    write_gguf(str(path), MMPROJ_ARCH, kv, {k: (np.zeros(s, np.float32), "f32") for k, s in shapes.items()})
    with pytest.raises(ValueError, match=match) as e:
        from_gguf(path)
    assert "bad.gguf" in str(e.value)


def test_extreme_aspect_ratios_match_hf(tiny):
    """A 7x300 image unpads to no row (HF keeps the base view alone), a 300x7 one to no column (a
    newline per row), a 1x1 one to a letterboxed 1x2 grid; all in one batch with a normal image."""
    model, c, w, images, _ = tiny
    imgs = [_image(hw, 9) for hw in ((7, 300), (300, 7), (1, 1))] + images[3:]
    ref = _hf_features(model, imgs)
    views = [anyres_images(im, AnyresConfig.from_hf(PROC)) for im in imgs]
    assert [len(r) for r in ref[:2]] == [16, 16 + 12]
    assert [v.n_tokens(c.patches_per_side) for v in views] == [len(r) for r in ref]
    assert rel_err(_ours(c, w, views), np.concatenate(ref)) <= BOUND
