"""Qwen3-VL vision (graphdsl.models.qwen3vl) against HF transformers.

References: Qwen3VLForConditionalGeneration built from a small random config (3 layers, deepstack
after layers 0 and 1, a 4 x 4 position table so that every image's grid resamples it: up for the
larger, down for the 2 x 2 one), its vision model's pooler_output and deepstack_features on the
pixel_values HF's own patchify makes (Qwen2VLImageProcessorPil at patch 16), and get_rope_index
for the decoder's M-RoPE ids.

The block's output is mtmd's layout: n_out columns of the main merger, then n_out per deepstack
merger; each column block is compared with its HF tensor.

Bound: 1e-5 relative L2 in f32. Negative controls: the deepstack mergers moved one layer later,
the position table sampled without scaling to the grid, h / w swapped in the RoPE positions and
the per-image mask dropped must each fail the same comparison.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from hf_refs import need_torch, randomize, rel_err
from PIL import Image

import graphdsl
from graphdsl.models import qwen3vl
from target import BACKEND

BOUND = 1e-5
SIZES = [(64, 96), (128, 64), (32, 32)]  # (H, W) pixels: grids 4x6, 8x4, 2x2 patches of 16
PROCESSOR = {"patch_size": 16, "merge_size": 2, "temporal_patch_size": 2, "image_mean": [0.5, 0.5, 0.5],
             "image_std": [0.5, 0.5, 0.5], "size": {"shortest_edge": 32 * 32, "longest_edge": 32 * 32 * 16}}


def text_config() -> dict:
    """A small Qwen3-VL decoder config (width 48, interleaved M-RoPE); the vision tests never run it."""
    return dict(hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                head_dim=12, vocab_size=128, rope_parameters={"rope_type": "default", "mrope_section": [2, 2, 2],
                                                              "mrope_interleaved": True, "rope_theta": 10000.0})


def qwen3_tiny(seed=0, moe=False, **vision):
    """A small random Qwen3-VL (or Qwen3-VL-MoE: the same vision tower beside a mixture-of-experts decoder)."""
    torch = need_torch()
    from transformers import (Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLMoeConfig,
                              Qwen3VLMoeForConditionalGeneration)
    torch.manual_seed(seed)
    vc = {**dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=4, patch_size=16, spatial_merge_size=2,
                 temporal_patch_size=2, out_hidden_size=48, num_position_embeddings=16,
                 deepstack_visual_indexes=[0, 1]), **vision}
    tc = text_config()
    if moe:
        tc.update(moe_intermediate_size=32, num_experts=2, num_experts_per_tok=1)
        cfg = Qwen3VLMoeConfig(vision_config=vc, text_config=tc, attn_implementation="eager")
        return cfg, randomize(Qwen3VLMoeForConditionalGeneration(cfg), seed)
    cfg = Qwen3VLConfig(vision_config=vc, text_config=tc, attn_implementation="eager")
    return cfg, randomize(Qwen3VLForConditionalGeneration(cfg), seed)


@pytest.fixture(scope="module")
def tiny():
    cfg, model = qwen3_tiny()
    c = qwen3vl.config_from_hf(cfg)
    return cfg, model, c, qwen3vl.hf_to_gguf(model.state_dict(), c)


def _pixels(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((3, h, w)).astype(np.float32) for h, w in sizes]


def _hf_patchify(a):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    return Qwen2VLImageProcessorPil.patchify(None, a, patch_size=16, merge_size=2, temporal_patch_size=2)[0]


def _hf_stack(model, pv, grids):
    """HF's image features and deepstack features side by side: mtmd's layout."""
    torch = need_torch()
    with torch.no_grad():
        out = model.model.visual(torch.from_numpy(pv), grid_thw=torch.tensor(grids))
    return np.concatenate([out.pooler_output.numpy(), *(f.numpy() for f in out.deepstack_features)], axis=1)


def _run(c, w, items, backend=BACKEND):
    x, grids = qwen3vl.Qwen3VLVision(c).items(items)
    return graphdsl.compile(qwen3vl.build(c, grids), backend, weights=w)(pixels=x)["embd"], x, grids


@pytest.mark.parametrize("sizes", [SIZES[:1], SIZES], ids=["one", "three_sizes"])
def test_encoder_matches_hf(tiny, sizes):
    """One image, and three of different sizes packed into one call: every column block (the main
    merger, each deepstack merger) equals HF's, on the backend under test and the reference."""
    _, model, c, w = tiny
    imgs = _pixels(sizes)
    pv = np.concatenate([_hf_patchify(a) for a in imgs])
    grids = [(1, h // 16, wd // 16) for h, wd in sizes]
    ref = _hf_stack(model, pv, grids)
    block = qwen3vl.Qwen3VLVision(c)
    assert block.n_per_layer == 2 and ref.shape[1] == block.n_out * (1 + block.n_per_layer)
    for backend in (BACKEND, "reference"):
        out, x, got_grids = _run(c, w, imgs, backend)
        np.testing.assert_array_equal(x, pv)
        assert got_grids == grids
        for k in range(1 + block.n_per_layer):
            cols = slice(k * c.n_out, (k + 1) * c.n_out)
            err = rel_err(out[:, cols], ref[:, cols])
            print(f"qwen3vl {len(sizes)} image(s) on {backend}, block {k}: {err:.2e}")
            assert err <= BOUND, k


def test_position_taps_equal_hf():
    """pos_taps is HF's get_vision_interpolation_indices_and_weights (bilinear, align_corners), bit for bit."""
    torch = need_torch()
    from transformers.vision_utils import get_vision_interpolation_indices_and_weights
    grids = [(1, 4, 6), (2, 8, 4), (1, 2, 2), (1, 6, 10)]
    idx, wts = get_vision_interpolation_indices_and_weights(torch.tensor(grids), 4, mode="bilinear",
                                                              align_corners=True, spatial_merge_size=2)
    got_idx, got_w = qwen3vl.pos_taps(grids, 4, 2)
    np.testing.assert_array_equal(got_idx, idx.numpy().T)
    np.testing.assert_array_equal(got_w, wts.numpy().T)


def _shifted(w, c):
    """The deepstack mergers' weights moved to the next layer (a config whose indexes are off by one)."""
    from dataclasses import replace
    moved = {}
    for k, v in w.items():
        for il in c.deepstack:
            k = k.replace(f"v.deepstack.{il}.", f"v.deepstack.@{il + 1}.")
        moved[k.replace("@", "")] = v
    return replace(c, deepstack=tuple(il + 1 for il in c.deepstack)), moved


def test_negative_controls_fail(tiny, monkeypatch):
    """Deepstack one layer late, positions unscaled to the grid, h / w swapped in RoPE, no per-image
    mask: each fails the comparison the model passes."""
    _, model, c, w = tiny
    imgs = _pixels(SIZES, seed=1)
    ref = _hf_stack(model, np.concatenate([_hf_patchify(a) for a in imgs]), [(1, h // 16, wd // 16) for h, wd in SIZES])
    assert rel_err(_run(c, w, imgs)[0], ref) <= BOUND
    c2, w2 = _shifted(w, c)
    err = rel_err(_run(c2, w2, imgs)[0], ref)
    print(f"negative control deepstack_off_by_one: {err:.2e}")
    assert err > 100 * BOUND
    good_rope, good_taps = qwen3vl.rope_positions, qwen3vl._axis_taps
    broken = {
        "positions_unscaled": ("_axis_taps", lambda index, size, side: good_taps(index, side, side)),
        "hw_swapped": ("rope_positions", lambda grids, m: good_rope(grids, m)[[1, 0, 3, 2]]),
        "no_image_mask": ("frame_lengths", lambda grids: [sum(t * h * w for t, h, w in grids)]),
    }
    for what, (name, fn) in broken.items():
        with monkeypatch.context() as mp:
            mp.setattr(qwen3vl, name, fn)
            err = rel_err(_run(c, w, imgs)[0], ref)
        print(f"negative control {what}: {err:.2e}")
        assert err > 100 * BOUND, what


def test_two_frame_clip_matches_hf(tiny):
    """Two different frames make one temporal patch (HF's video patchify layout): the same graph."""
    _, model, c, w = tiny
    frames = np.stack(_pixels([(64, 96)] * 2, seed=3))
    x, grids = qwen3vl.Qwen3VLVision(c).items([frames])
    ref = _hf_stack(model, x, grids)
    still = _hf_stack(model, _hf_patchify(frames[0]), grids)
    assert rel_err(still, ref) > 100 * BOUND  # the second frame matters
    assert rel_err(_run(c, w, [frames])[0], ref) <= BOUND


def test_mrope_positions_match_hf_get_rope_index(tiny):
    """Each image's (3, n) ids from ``positions`` (text between at consecutive positions) equal
    HF's get_rope_index on the same sequence; a clip of two temporal patches is refused."""
    torch = need_torch()
    _, model, c, _ = tiny
    block = qwen3vl.Qwen3VLVision(c)
    imgs = _pixels(SIZES, seed=6)
    ids, types, pos = [], [], 0
    for n_text, img in zip((3, 2, 1), imgs):
        ids.append(np.tile(np.arange(pos, pos + n_text), (3, 1)))
        types += [0] * n_text
        got, pos = block.positions(img, pos + n_text)
        ids.append(got)
        types += [1] * got.shape[1]
    ids.append(np.tile(np.arange(pos, pos + 2), (3, 1)))
    types += [0, 0]
    grids = torch.tensor([(1, h // 16, wd // 16) for h, wd in SIZES])
    ref, _ = model.model.get_rope_index(torch.zeros((1, len(types)), dtype=torch.long),
                                        torch.tensor(types)[None], image_grid_thw=grids)
    np.testing.assert_array_equal(np.concatenate(ids, axis=1), ref[:, 0].numpy())
    with pytest.raises(ValueError, match="temporal patches"):
        block.positions(np.stack(_pixels([(64, 64)] * 4)), 0)


def test_llama_cpp_names(tiny):
    """llama.cpp's converter's names: fused attn_qkv, two patch kernels and the patch bias, the
    position table, mm.0 / mm.2 and v.post_ln, each deepstack merger under its layer."""
    _, _, c, w = tiny
    assert {"v.patch_embd.weight", "v.patch_embd.weight.1", "v.patch_embd.bias", "v.position_embd.weight",
            "v.blk.0.attn_qkv.weight", "v.blk.2.attn_qkv.bias", "v.post_ln.weight", "v.post_ln.bias",
            "mm.0.weight", "mm.2.bias", "v.deepstack.0.norm.weight", "v.deepstack.1.fc2.bias"} <= set(w)
    assert not any(".attn_q." in k for k in w) and not any("deepstack.2" in k for k in w)
    kv = dict(qwen3vl.config_to_gguf(c))
    assert kv["clip.vision.is_deepstack_layers"] == [True, True, False]
    assert kv["clip.projector_type"] == "qwen3vl_merger" and kv["clip.vision.image_size"] == 64


def test_config_refuses_unsorted_deepstack():
    with pytest.raises(ValueError, match="ascending"):
        qwen3vl.config_from_hf({"model_type": "qwen3_vl", "vision_config": {"depth": 4,
                                                                            "deepstack_visual_indexes": [2, 1]}})
    with pytest.raises(ValueError, match="deepstack layers"):
        qwen3vl.Qwen3VLConfig(n_layer=2, deepstack=(2,))


def _png(path, size, seed):
    a = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(a).save(path)


def _save(model, folder, processor=PROCESSOR):
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_processor_type": "Qwen2VLImageProcessor",
                                                                 **processor}))


def _hf_processed(folder, paths):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    hp = Qwen2VLImageProcessorPil.from_pretrained(folder)(images=[Image.open(p) for p in paths], return_tensors="np")
    return hp["pixel_values"], hp["image_grid_thw"].tolist()


def embed_file(gguf, paths, backend="cpu"):
    """from_gguf, the arch's prepare hook on each file (the file's carried processor settings) and one
    packed graph: mtmd's rows [embedding | deepstack 0 | ...], which ``graphdsl embed`` splits into -o and
    the per-layer file."""
    m = graphdsl.models.from_gguf(gguf)
    pixels = [m.archs["image"].prepare(str(p), m) for p in paths]
    x, grids = m.vision.items(pixels)
    g = qwen3vl.build(m.vision.cfg, grids)
    return graphdsl.compile(g, backend, weights=m.weights)(pixels=x)["embd"], x, m


@pytest.mark.children
@pytest.mark.parametrize("outtype,bound", [("f32", BOUND), ("f16", 1e-3)])
def test_hf_folder_converts_and_matches(tiny, tmp_path, outtype, bound):
    """HF folder (model + Qwen3-VL's processor settings) -> graphdsl convert -> from_gguf: the config
    comes back, the frames hook gives HF's pixel_values bit for bit, and the rows equal HF's."""
    from cli_run import graphdsl as cli
    _, model, c, _ = tiny
    folder = tmp_path / "hf"
    _save(model, folder)
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    _png(paths[0], (50, 90), 1)  # under min_pixels: scaled up
    _png(paths[1], (200, 120), 2)
    gguf = tmp_path / "m.gguf"
    cli("convert", folder, "-o", gguf, "--outtype", outtype)
    pv, grids = _hf_processed(folder, paths)
    got, x, m = embed_file(gguf, paths)
    np.testing.assert_array_equal(x, pv)
    assert m.archs["image"] is qwen3vl.ARCH
    assert m.vision.cfg == c.__class__(**{**c.__dict__, "wtypes": m.vision.cfg.wtypes, "wtype": m.vision.cfg.wtype})
    ref = _hf_stack(model, pv, grids)
    err = rel_err(got, ref)
    print(f"qwen3vl convert {outtype}: {err:.2e}")
    assert err <= bound
    # through `graphdsl embed`: the decoder's rows in -o, the deepstack features beside them, zero nowhere
    # here (media alone), named in the spans file
    cli("embed", "--mmproj", gguf, "--image", paths[0], "--image", paths[1], "-o", tmp_path / "e.npy")
    rows, layers = np.load(tmp_path / "e.npy"), np.load(tmp_path / "e.per_layer.npy")
    assert layers.shape == (len(c.deepstack), *rows.shape)
    assert rel_err(np.concatenate([rows, *layers], axis=1), ref) <= bound
    assert json.loads((tmp_path / "e.spans.json").read_text())["per_layer"] == "e.per_layer.npy"


@pytest.mark.children
def test_moe_checkpoint_converts_and_matches(tmp_path):
    """Qwen3-VL-MoE's folder (model_type qwen3_vl_moe, the same vision tower) converts to the same
    kind of file, whose rows equal HF's on HF's pixels."""
    from cli_run import graphdsl as cli
    cfg, model = qwen3_tiny(seed=2, moe=True)
    assert cfg.model_type == "qwen3_vl_moe"
    folder, gguf, paths = tmp_path / "hf", tmp_path / "m.gguf", [tmp_path / "a.png"]
    _save(model, folder)
    _png(paths[0], (70, 110), 3)
    cli("convert", folder, "-o", gguf)
    pv, grids = _hf_processed(folder, paths)
    got, x, m = embed_file(gguf, paths)
    np.testing.assert_array_equal(x, pv)
    assert m.vision.cfg.deepstack == (0, 1)
    assert rel_err(got, _hf_stack(model, pv, grids)) <= BOUND


@pytest.mark.parametrize("flags,match", [
    ([True, False, False], r"v\.deepstack\.1\.\* for layers \[1\] that clip\.vision\.is_deepstack_layers "
                           "does not mark"),
    ([True, True, True], r"missing \[.*'v\.deepstack\.2\.fc1\.bias'"),
    ([True, True], "has 2 entries for 3 layers")], ids=["stray_tensors", "missing_tensors", "short_key"])
def test_deepstack_key_must_agree_with_tensors(tiny, tmp_path, flags, match):
    """is_deepstack_layers decides which mergers the file must hold: a merger it does not mark, one
    it marks that the file lacks (named by the loader) and a key of the wrong length are refused."""
    from graphdsl.convert.writer import write_gguf
    _, _, c, w = tiny
    kv = [(k, flags if k == "clip.vision.is_deepstack_layers" else v) for k, v in qwen3vl.config_to_gguf(c)]
    path = tmp_path / "bad.gguf"
    write_gguf(str(path), "clip", kv, {k: (v, "f32") for k, v in w.items()})
    with pytest.raises(ValueError, match=match):
        graphdsl.models.from_gguf(path)


def test_preprocess_mode_is_patch_16():
    """``preprocess --mode qwen3vl`` (the arch's image record) sizes to multiples of 32 as HF's
    processor at patch 16 does, pixel for pixel."""
    need_torch()
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from graphdsl.preprocess.qwen2vl import qwen2vl_image
    cfg = qwen3vl.ARCH.image.config()
    assert cfg.patch_size == 16 and cfg.factor == 32
    rng = np.random.default_rng(0)
    hf = Qwen2VLImageProcessorPil(patch_size=16)
    for size in [(50, 90), (333, 517), (1000, 40)]:
        img = Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))
        ours = qwen2vl_image(img, cfg)
        pv = hf(images=[img], return_tensors="np")
        x, grid = qwen3vl.Qwen3VLVision(qwen3vl.Qwen3VLConfig()).items([ours])
        assert [list(grid[0])] == pv["image_grid_thw"].tolist()
        np.testing.assert_array_equal(x, pv["pixel_values"])


@pytest.mark.children
@pytest.mark.parametrize("outtype,bound", [("f32", BOUND), ("f16", 1e-3)])
def test_llama_cpp_file_equals_hf(tiny, tmp_path, outtype, bound):
    """llama.cpp's own converter (tests/support/lcp_convert.py) writes a file from the same HF folder: it loads
    as the same config and, on HF's pixels, gives HF's rows. Its file carries no processor settings
    (the checkpoint's min / max pixels), so the pixels come from HF here, not from the frames hook."""
    import lcp_convert
    _, model, c, _ = tiny
    folder = tmp_path / "hf"
    _save(model, folder)
    path = lcp_convert.convert(folder, tmp_path / "lcp.gguf", outtype)
    m = graphdsl.models.from_gguf(path)
    assert m.archs["image"] is qwen3vl.ARCH
    assert m.vision.cfg == c.__class__(**{**c.__dict__, "wtypes": m.vision.cfg.wtypes, "wtype": m.vision.cfg.wtype})
    imgs = _pixels(SIZES, seed=4)
    pv, grids = np.concatenate([_hf_patchify(a) for a in imgs]), [(1, h // 16, wd // 16) for h, wd in SIZES]
    got = graphdsl.compile(qwen3vl.build(m.vision.cfg, grids), BACKEND, weights=m.weights)(pixels=pv)["embd"]
    err = rel_err(got, _hf_stack(model, pv, grids))
    print(f"qwen3vl llama.cpp {outtype} file: {err:.2e}")
    assert err <= bound


MTMD_BOUND = 5e-3  # see test_matches_mtmd


@pytest.mark.children
@pytest.mark.parametrize("size", [(128, 96), (96, 160)], ids=["128x96", "96x160"])
def test_matches_mtmd(tiny, tmp_path, size):
    """llama.cpp's own mtmd (tests/support/mtmd_ref.py in the mtmd venv; skipped without it) on graphdsl's
    converted file and an image already of a size both keep: one image chunk of the same tokens,
    [main | deepstack...] rows within MTMD_BOUND. mtmd's CPU path takes GELU from an f16 lookup table
    and uses the tanh GELU in the mergers where HF has erf: 4.6e-4 measured here (4.1e-4 with
    graphdsl's mergers on tanh), as the other mtmd comparisons (test_mtmd_mobilevlm.py). Negative
    control: the position table transposed in the file mtmd reads (1e-2 and more)."""
    from mtmd_util import rel_l2, run_mtmd, write_text_gguf
    from cli_run import graphdsl as cli
    _, model, c, w = tiny
    folder = tmp_path / "hf"
    _save(model, folder)
    gguf, text, img = tmp_path / "m.gguf", tmp_path / "text.gguf", tmp_path / "img.png"
    cli("convert", folder, "-o", gguf)
    write_text_gguf(text, c.n_out * 3, extra=("<|vision_start|>", "<|vision_end|>"))
    _png(img, size, 7)
    ref = run_mtmd(gguf, text, img, tmp_path)
    assert list(ref["kinds"]) == ["text", "image", "text"], ref["kinds"]  # <|vision_start|>, image, <|vision_end|>
    ours = embed_file(gguf, [img])[0]
    assert ours.shape == ref["embd.1"].shape == (size[0] * size[1] // 32 ** 2, 3 * c.n_out)
    err = rel_l2(ours, ref["embd.1"])
    print(f"qwen3vl {size} vs mtmd: {err:.2e}")
    assert err < MTMD_BOUND
    from graphdsl.convert.writer import write_gguf
    table = w["v.position_embd.weight"].reshape(c.side, c.side, -1).transpose(1, 0, 2).reshape(c.n_pos, -1)
    bad = tmp_path / "bad.gguf"
    write_gguf(str(bad), "clip", qwen3vl.config_to_gguf(c),
               {k: (table if k == "v.position_embd.weight" else v, "f32") for k, v in w.items()})
    err_bad = rel_l2(ours, run_mtmd(bad, text, img, tmp_path)["embd.1"])
    print(f"qwen3vl {size} negative control vs mtmd: {err_bad:.2e}")
    assert err_bad > 3 * MTMD_BOUND


# HF Qwen3-VL vision module names -> graphdsl node names
MAPPING = {"visual.blocks.{i}.attn": "v.blk.{i}.attn_out", "visual.blocks.{i}.mlp.linear_fc1": "v.blk.{i}.ffn_up",
           "visual.blocks.{i}": "v.blk.{i}.layer_out", "visual.merger.norm": "v.post_ln",
           "visual.merger.linear_fc1": "mm.0", "visual.merger": "mm.2",
           "visual.deepstack_merger_list.{i}.linear_fc1": "v.deepstack.{i}.fc1",
           "visual.deepstack_merger_list.{i}": "v.deepstack.{i}.fc2"}


def test_node_by_node_against_hf(tiny):
    """inspect.diff_hf, two images packed: every mapped node within the bound (the deepstack mergers'
    HF index is their layer here: deepstack after layers 0 and 1); a deepstack weight scaled by 1.05
    (negative control) is named as the first bad node."""
    from graphdsl.inspect import diff_hf
    torch = need_torch()
    _, model, c, w = tiny
    assert c.deepstack == (0, 1)
    imgs = _pixels(SIZES[:2], seed=7)
    x, grids = qwen3vl.Qwen3VLVision(c).items(imgs)
    forward = lambda m, px: m.model.visual(px, grid_thw=torch.tensor(grids))  # noqa: E731
    reps = []
    name = "v.deepstack.1.fc1.weight"
    for weights in (w, dict(w, **{name: w[name] * np.float32(1.05)})):
        run = graphdsl.compile(qwen3vl.build(c, grids), BACKEND, weights=weights)
        reps.append(diff_hf(run, {"pixels": x}, model, torch.from_numpy(x), MAPPING, forward=forward, rel_l2=BOUND))
    assert reps[0].ok, reps[0]
    assert not reps[1].ok and reps[1].first_bad.name == "v.deepstack.1.fc1", reps[1]


def test_mixed_batch_splits_deepstack_rows(tiny):
    """[text, image 64x96, text, image 32x32] through the Embedder once the Block protocol's per-layer
    outputs exist: embd holds HF's token rows and image features in prompt order, per_layer[k] the
    k-th deepstack merger's rows at the image positions (zero at text, where HF adds nothing), and
    positions HF's get_rope_index ids."""
    from graphdsl.embed import Embedder, Embeddings
    from graphdsl.models import text
    if "per_layer" not in Embeddings.__dataclass_fields__:
        pytest.skip("the Block protocol's per-layer outputs (Embeddings.per_layer) are not merged yet")
    torch = need_torch()
    _, model, c, w = tiny
    tc = text.TextConfig(128, 48)
    emb = Embedder(text.TextEmbedding(tc), {"image": qwen3vl.ARCH.block(c)}, backend=BACKEND,
                   weights={**w, **text.hf_to_gguf(model.state_dict(), tc)})
    imgs = _pixels([SIZES[0], SIZES[2]], seed=5)
    ids = [np.array([3, 7, 9], np.int32), np.array([11, 2], np.int32)]
    out = emb([ids[0], ("image", imgs[0]), ids[1], ("image", imgs[1])])
    grids = [(1, 4, 6), (1, 2, 2)]
    stack = _hf_stack(model, np.concatenate([_hf_patchify(a) for a in imgs]), grids)
    table = model.model.language_model.embed_tokens.weight.detach().numpy()
    n = c.n_out
    assert rel_err(out.embd, np.concatenate([table[ids[0]], stack[:6, :n], table[ids[1]], stack[6:, :n]])) <= BOUND
    zeros = np.zeros((3, n), np.float32)
    for k in range(2):
        want = np.concatenate([zeros, stack[:6, (k + 1) * n:(k + 2) * n], zeros[:2], stack[6:, (k + 1) * n:(k + 2) * n]])
        assert rel_err(out.per_layer[k], want) <= BOUND, k
    types = torch.tensor([[0] * 3 + [1] * 6 + [0] * 2 + [1]])
    ref, _ = model.model.get_rope_index(torch.zeros_like(types), types, image_grid_thw=torch.tensor(grids))
    np.testing.assert_array_equal(out.positions, ref[:, 0].numpy())
