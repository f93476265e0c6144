"""Qwen2-VL and Qwen2.5-VL vision (graphdsl.models.qwen2vl / qwen2_5vl) against HF transformers.

References: Qwen2VLForConditionalGeneration / Qwen2_5_VLForConditionalGeneration built from
small random configs, their get_image_features / get_video_features on pixel_values that HF's
own patchify makes (Qwen2VLImageProcessorPil.patchify, Qwen2VLVideoProcessor.patchify), and
get_rope_index for the decoder's M-RoPE ids. The Qwen2.5-VL config has 4 layers, two of them
windowed, and windows (56 px) smaller than the images, so several windows per image are exercised.

Bound: 1e-5 relative L2 in f32 (measured ~6e-7 to 8e-7 on the ggml CPU backend and the
reference); 1e-3 for f16 weights (f16 rounding of the matrices, ~5e-4 measured); q8_0 files
are checked to load and run within 3e-2 (~1.2e-2 measured).
Negative controls: h/w swapped in the RoPE positions, the per-image mask dropped, the window
regrouping dropped, must each fail the same comparison.
"""
from __future__ import annotations

import subprocess
import sys
import types

import numpy as np
import pytest
from hf_refs import need_torch, randomize, rel_err
from PIL import Image

import graphdsl
from graphdsl.embed import Embedder, build_mixed
from graphdsl.models import qwen2_5vl, qwen2vl, text
from target import BACKEND

BOUND = 1e-5
SIZES = [(56, 84), (112, 56), (28, 28)]  # (H, W) pixels of the mixed batch


def _text_config():
    return dict(hidden_size=48, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=128,
                rope_parameters={"rope_type": "default", "mrope_section": [2, 2, 2], "rope_theta": 10000.0})


def qwen_tiny(v25: bool, seed=0):
    torch = need_torch()
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLConfig,
                              Qwen2VLForConditionalGeneration)
    torch.manual_seed(seed)
    common = dict(patch_size=14, spatial_merge_size=2, temporal_patch_size=2, num_heads=4)
    if v25:
        vc = dict(common, depth=4, hidden_size=32, intermediate_size=48, out_hidden_size=48, window_size=56,
                  fullatt_block_indexes=[1, 3])
        cfg = Qwen2_5_VLConfig(vision_config=vc, text_config=_text_config(), attn_implementation="eager")
        return cfg, randomize(Qwen2_5_VLForConditionalGeneration(cfg), seed)
    vc = dict(common, depth=2, embed_dim=32, hidden_size=48, mlp_ratio=2)
    cfg = Qwen2VLConfig(vision_config=vc, text_config=_text_config(), attn_implementation="eager")
    return cfg, randomize(Qwen2VLForConditionalGeneration(cfg), seed)


FAMILIES = {"qwen2vl": (qwen2vl, False), "qwen2.5vl": (qwen2_5vl, True)}


@pytest.fixture(scope="module", params=list(FAMILIES))
def tiny(request):
    mod, v25 = FAMILIES[request.param]
    cfg, model = qwen_tiny(v25)
    c = mod.config_from_hf(cfg)
    return mod, cfg, model, c, mod.hf_to_gguf(model.state_dict(), c)


def _pixels(sizes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((3, h, w)).astype(np.float32) for h, w in sizes]


def _hf_patchify(a):
    """HF's own layout: Qwen2VLImageProcessorPil.patchify (a still image, its frame repeated)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    return Qwen2VLImageProcessorPil.patchify(None, a, patch_size=14, merge_size=2, temporal_patch_size=2)[0]


def _hf_features(model, pv, grids, video=False):
    torch = need_torch()
    with torch.no_grad():
        f = model.model.get_video_features if video else model.model.get_image_features
        out = f(torch.from_numpy(pv), torch.tensor(grids)).pooler_output
    return torch.cat(list(out)).numpy()


def _run(mod, c, w, items, backend=BACKEND):
    block = mod.ARCH.block(c)
    x, grids = block.items(items)
    return graphdsl.compile(mod.build(c, grids), backend, weights=w)(pixels=x)["embd"], x, grids


@pytest.mark.parametrize("sizes", [SIZES[:1], SIZES], ids=["one", "three_sizes"])
def test_encoder_matches_hf(tiny, sizes):
    """One image, and three of different sizes packed into one call, on the backend under test and
    the reference; the packed patches are HF's pixel_values bit for bit."""
    mod, _, model, c, w = tiny
    imgs = _pixels(sizes)
    pv = np.concatenate([_hf_patchify(a) for a in imgs])
    grids = [(1, h // 14, wd // 14) for h, wd in sizes]
    ref = _hf_features(model, pv, grids)
    for backend in (BACKEND, "reference"):
        out, x, got_grids = _run(mod, c, w, imgs, backend)
        np.testing.assert_array_equal(x, pv)
        assert got_grids == grids
        err = rel_err(out, ref)
        print(f"{mod.ARCH.name} {len(sizes)} image(s) on {backend}: {err:.2e}")
        assert err <= BOUND


def _hf_video_patchify(frames):
    """HF's Qwen2VLVideoProcessor.patchify (pure torch); its module imports torchvision at the top,
    which does not work here, so a stub stands in for that import only."""
    torch = need_torch()
    stub = {n: types.ModuleType(n) for n in ("torchvision", "torchvision.transforms", "torchvision.transforms.v2",
                                             "torchvision.transforms.v2.functional")}
    saved = {n: sys.modules.get(n) for n in stub}
    try:
        if saved["torchvision"] is None:
            sys.modules.update(stub)
        from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
    except Exception as e:  # pragma: no cover - a transformers layout change
        pytest.skip(f"HF's video processor cannot be imported here: {e}")
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
    pv, t, h, w = Qwen2VLVideoProcessor.patchify(None, torch.from_numpy(frames)[None], 14, 2, 2)
    return pv[0].numpy(), (t, h, w)


def test_two_frame_video_matches_hf(tiny):
    """Two different frames make one temporal patch: HF's video patchify and get_video_features."""
    mod, _, model, c, w = tiny
    frames = np.stack(_pixels([(56, 84)] * 2, seed=3))
    pv, grid = _hf_video_patchify(frames)
    assert grid == (1, 4, 6)
    ref = _hf_features(model, pv, [grid], video=True)
    still = _hf_features(model, _hf_patchify(frames[0]), [grid])
    assert rel_err(still, ref) > 100 * BOUND  # the second frame matters
    for backend in (BACKEND, "reference"):
        out, x, grids = _run(mod, c, w, [frames], backend)
        np.testing.assert_array_equal(x, pv)
        assert rel_err(out, ref) <= BOUND


def test_negative_controls_fail(tiny, monkeypatch):
    """h and w swapped in the RoPE positions, the per-image mask dropped (and for Qwen2.5-VL the
    window regrouping dropped) each fail the comparison that the model passes."""
    mod, _, model, c, w = tiny
    imgs = _pixels(SIZES)
    ref = _hf_features(model, np.concatenate([_hf_patchify(a) for a in imgs]),
                       [(1, h // 14, wd // 14) for h, wd in SIZES])
    assert rel_err(_run(mod, c, w, imgs)[0], ref) <= BOUND
    good = qwen2vl.rope_positions
    broken = {
        "hw_swapped": ("rope_positions", lambda grids, m: good(grids, m)[[1, 0, 3, 2]]),
        "no_image_mask": ("frame_lengths", lambda grids: [sum(t * h * w for t, h, w in grids)]),
    }
    if c.window_size:
        broken["no_windows"] = ("window_index", lambda grids, cfg: (
            np.arange(sum(t * h * w for t, h, w in grids) // 4, dtype=np.int32),
            [sum(t * h * w for t, h, w in grids)]))
    for what, (name, fn) in broken.items():
        with monkeypatch.context() as mp:
            mp.setattr(qwen2vl, name, fn)
            err = rel_err(_run(mod, c, w, imgs)[0], ref)
        print(f"{mod.ARCH.name} negative control {what}: {err:.2e}")
        assert err > 100 * BOUND, what


def _embedder(mod, model, c, w, backend=BACKEND):
    tc = text.TextConfig(128, 48)
    weights = {**w, **text.hf_to_gguf(model.state_dict(), tc)}
    return Embedder(text.TextEmbedding(tc), {"image": mod.ARCH.block(c)}, backend=backend, weights=weights)


def test_mixed_batch_is_one_graph_with_hf_rows(tiny):
    """[text, image 56x84, text, image 112x56, image 28x28]: one graph, one packed image input;
    rows in prompt order equal HF's token embeddings and image features; spans per chunk."""
    torch = need_torch()
    mod, _, model, c, w = tiny
    emb = _embedder(mod, model, c, w)
    imgs = _pixels(SIZES, seed=5)
    ids = [np.array([3, 7, 9], np.int32), np.array([11, 2], np.int32)]
    items = [ids[0], ("image", imgs[0]), ids[1], ("image", imgs[1]), ("image", imgs[2])]
    out = emb(items)
    assert len(emb._exes) == 1
    feeds = build_mixed(items, emb.text, emb.media)[1]
    assert [k for k in feeds if k.startswith("image")] == ["image.patches"]  # one packed input
    assert [(s.kind, s.n_tokens) for s in out.spans] == [("text", 3), ("image", 6), ("text", 2), ("image", 8),
                                                          ("image", 1)]
    feats = _hf_features(model, np.concatenate([_hf_patchify(a) for a in imgs]),
                         [(1, h // 14, wd // 14) for h, wd in SIZES])
    table = model.model.language_model.embed_tokens.weight.detach().numpy()
    ref = np.concatenate([table[ids[0]], feats[:6], table[ids[1]], feats[6:]])
    assert rel_err(out.embd, ref) <= BOUND
    ref_backend = _embedder(mod, model, c, w, "reference")(items)
    assert rel_err(ref_backend.embd, ref) <= BOUND
    np.testing.assert_array_equal(ref_backend.positions, out.positions)
    # the batch has two adjacent images: each is its own run, placed as HF places an image
    m = model.model
    nxt = 3 + 3 + 2  # text 0..2, image 56x84 at 3 (the text goes on at 3 + max(2, 3)), text 6, 7
    g2, g3 = torch.tensor([1, 8, 4]), torch.tensor([1, 2, 2])
    want = np.concatenate([m.get_vision_position_ids(nxt, g2, 1, 2).numpy(),
                           m.get_vision_position_ids(nxt + 4, g3, 1, 2).numpy()], axis=1)
    np.testing.assert_array_equal(out.positions[:, -9:], want)


def test_mrope_positions_match_hf_get_rope_index(tiny):
    """The mixed batch's (3, n) ids equal HF's get_rope_index on the same sequence (images bracketed
    by text, as Qwen's prompts put <|vision_start|> / <|vision_end|> around each)."""
    torch = need_torch()
    mod, _, model, c, w = tiny
    emb = _embedder(mod, model, c, w)
    imgs = _pixels(SIZES, seed=6)
    texts = [np.array([1, 2, 3], np.int32), np.array([4, 5], np.int32), np.array([6], np.int32),
             np.array([7, 8], np.int32)]
    items = [texts[0], ("image", imgs[0]), texts[1], ("image", imgs[1]), texts[2], ("image", imgs[2]), texts[3]]
    out = emb(items)
    types_ = np.concatenate([np.zeros(len(t), np.int32) if isinstance(t, np.ndarray) else
                             np.ones(qwen2vl.n_tokens((1, t[1].shape[1] // 14, t[1].shape[2] // 14), 2), np.int32)
                             for t in items])
    ids = torch.zeros((1, len(types_)), dtype=torch.long)
    grids = torch.tensor([(1, h // 14, wd // 14) for h, wd in SIZES])
    ref, _ = model.model.get_rope_index(ids, torch.from_numpy(types_)[None], image_grid_thw=grids)
    np.testing.assert_array_equal(out.positions, ref[:, 0].numpy())
    assert not np.array_equal(out.positions[1], out.positions[2])  # h and w differ somewhere: the check sees a swap


def _png(path, size, seed):
    a = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(a).save(path)


# q8_0: 8-bit weights and, in ggml's CPU products, 8-bit activations (~1.2e-2 measured)
@pytest.mark.children
@pytest.mark.parametrize("outtype,bound", [("f32", BOUND), ("f16", 1e-3), ("q8_0", 3e-2)])
def test_hf_folder_converts_and_embeds(tiny, tmp_path, outtype, bound):
    """HF dir -> graphdsl convert -> graphdsl embed --image a.png --image b.png equals HF's
    get_image_features on HF's processor output for the same files."""
    torch = need_torch()
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    mod, cfg, model, c, _ = tiny
    folder = tmp_path / "hf"
    model.save_pretrained(folder)
    imgs = [tmp_path / "a.png", tmp_path / "b.png"]
    _png(imgs[0], (50, 90), 1)
    _png(imgs[1], (120, 40), 2)
    gguf, out = tmp_path / "m.gguf", tmp_path / "e.npy"
    for cmd in (["convert", folder, "-o", gguf, "--outtype", outtype],
                ["embed", "--mmproj", gguf, "--image", imgs[0], "--image", imgs[1], "-o", out, "--backend", "cpu"]):
        r = subprocess.run([sys.executable, "-m", "graphdsl.cli", *map(str, cmd)], capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
    hp = Qwen2VLImageProcessorPil()(images=[Image.open(p) for p in imgs], return_tensors="np")
    ref = _hf_features(model, hp["pixel_values"], hp["image_grid_thw"].tolist())
    got = np.load(out)
    err = rel_err(got, ref)
    print(f"{mod.ARCH.name} convert {outtype} + embed: {err:.2e}")
    assert err <= bound
    m = graphdsl.models.from_gguf(gguf)
    assert m.archs["image"] is mod.ARCH and m.vision.cfg == c.__class__(**{**c.__dict__, "wtypes": m.vision.cfg.wtypes,
                                                                        "wtype": m.vision.cfg.wtype})
    assert torch is not None


def test_config_round_trips_and_names(tiny, tmp_path):
    """The file holds llama.cpp's names: split q/k/v, two patch kernels, mm.0 / mm.2, v.post_ln."""
    mod, _, _, c, w = tiny
    assert {"v.patch_embd.weight", "v.patch_embd.weight.1", "v.blk.0.attn_q.weight", "v.blk.0.attn_k.bias",
            "v.post_ln.weight", "mm.0.weight", "mm.2.bias"} <= set(w)
    assert not any("qkv" in k for k in w)
    assert ("v.blk.0.ffn_gate.weight" in w) == (mod is qwen2_5vl)
    assert ("v.post_ln.bias" in w) == (mod is qwen2vl)


@pytest.mark.children
def test_embed_cli_with_tokens_and_two_images(tiny, tmp_path):
    """graphdsl embed --image a.png --image b.png --tokens "5,6,<image>,7,8,<image>,10" with a text
    GGUF: token rows from its table, each image's rows HF's features, in prompt order."""
    from gguf import GGMLQuantizationType
    from test_from_gguf import write_text_gguf
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    mod, _, model, c, w = tiny
    from graphdsl.convert.writer import write_gguf
    kv = mod.config_to_gguf(c)
    gguf, txt, out = tmp_path / "m.gguf", tmp_path / "t.gguf", tmp_path / "e.npy"
    write_gguf(str(gguf), "clip", kv, {k: (v, "f32") for k, v in w.items()})
    table = write_text_gguf(txt, n_embd=48, qtype=GGMLQuantizationType.F32)
    imgs = [tmp_path / "a.png", tmp_path / "b.png"]
    _png(imgs[0], (60, 60), 3)
    _png(imgs[1], (30, 100), 4)
    r = subprocess.run([sys.executable, "-m", "graphdsl.cli", "embed", "--mmproj", str(gguf), "--text-model", str(txt),
                        "--image", str(imgs[0]), "--image", str(imgs[1]), "--tokens", "5,6,<image>,7,8,<image>,10",
                        "-o", str(out), "--backend", "cpu", "--positions", str(tmp_path / "p.npy")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    hp = Qwen2VLImageProcessorPil()(images=[Image.open(p) for p in imgs], return_tensors="np")
    feats = _hf_features(model, hp["pixel_values"], hp["image_grid_thw"].tolist())
    n_a = qwen2vl.n_tokens(tuple(hp["image_grid_thw"][0]), 2)
    ref = np.concatenate([table[[5, 6]], feats[:n_a], table[[7, 8]], feats[n_a:], table[[10]]])
    assert rel_err(np.load(out), ref) <= BOUND
    torch = need_torch()  # the saved ids: HF's get_rope_index on the same sequence
    types_ = np.zeros(len(ref), np.int64)
    types_[2:2 + n_a] = types_[4 + n_a:len(ref) - 1] = 1
    want, _ = model.model.get_rope_index(torch.zeros((1, len(ref)), dtype=torch.long), torch.from_numpy(types_)[None],
                                         image_grid_thw=torch.from_numpy(hp["image_grid_thw"]))
    np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), want[:, 0].numpy())


def test_qwen25_window_keys_as_llama_cpp_writes_them(tmp_path):
    """llama.cpp's converter writes only clip.vision.n_wa_pattern (no window size: clip.cpp uses
    112); a file with neither key has no window attention in llama.cpp, nor here."""
    from graphdsl.convert.writer import write_gguf
    from graphdsl.models import from_gguf
    c = qwen2_5vl.ARCH.examples[0]
    w = {k: (np.zeros(s, np.float32), "f32") for k, s in qwen2vl.weight_shapes(c).items()}
    drop = {"llama.cpp": ("clip.vision.wa_layer_indexes", "clip.vision.window_size"),
            "none": ("clip.vision.wa_layer_indexes", "clip.vision.window_size", "clip.vision.n_wa_pattern")}
    want = {"llama.cpp": (112, (1, 3)), "none": (0, ())}
    for case, keys in drop.items():
        path = tmp_path / f"{case}.gguf"
        write_gguf(str(path), "clip", [kv for kv in qwen2_5vl.config_to_gguf(c) if kv[0] not in keys], w)
        got = from_gguf(path, check_finite=False).vision.cfg
        assert (got.window_size, got.fullatt) == want[case], case



def test_qwen25_no_full_attention_layer_round_trips(tmp_path):
    """HF's fullatt_block_indexes [] (windows in every layer): GGUF writers drop an empty
    wa_layer_indexes, so the file says it as n_wa_pattern n_layer + 1 (no layer meets it, in
    llama.cpp's (il + 1) % n_wa_pattern == 0 too) and reads back as windows everywhere."""
    from dataclasses import replace

    from graphdsl.convert.writer import write_gguf
    from graphdsl.models import from_gguf
    c = replace(qwen2_5vl.ARCH.examples[0], fullatt=())
    w = {k: (np.zeros(s, np.float32), "f32") for k, s in qwen2vl.weight_shapes(c).items()}
    kv = dict(qwen2_5vl.config_to_gguf(c))
    assert kv["clip.vision.n_wa_pattern"] == c.n_layer + 1
    path = tmp_path / "m.gguf"
    write_gguf(str(path), "clip", list(kv.items()), w)
    got = from_gguf(path, check_finite=False).vision.cfg
    assert (got.window_size, got.fullatt) == (c.window_size, ())


@pytest.mark.parametrize("merge", [1, 2, 3, 4])
def test_default_grid_is_whole_merge_units(merge):
    """With no grids the block builds one square image about image_size (560: 40 patches of 14),
    a whole number of merge units a side, so any spatial_merge_size builds (convert builds it)."""
    c = qwen2vl.Qwen2VLConfig(n_embd=32, n_ff=64, n_head=4, n_layer=1, n_mm_embd=48, merge=merge)
    (t, h, w), = qwen2vl.Qwen2VLVision(c).grids
    assert h == w and h % merge == 0 and 40 - merge < h <= 40
    assert qwen2vl.build(c).outputs["embd"].shape == (h * w // merge ** 2, 48)


# HF Qwen2-VL vision module names -> graphdsl node names
MAPPING = {"visual.blocks.{i}.attn": "v.blk.{i}.attn_out", "visual.blocks.{i}.mlp.fc1": "v.blk.{i}.ffn_up",
           "visual.blocks.{i}": "v.blk.{i}.layer_out", "visual.merger.ln_q": "v.post_ln",
           "visual.merger.mlp.0": "mm.0", "visual.merger": "mm.2"}


def test_node_by_node_against_hf():
    """inspect.diff_hf on Qwen2-VL, two images packed: every mapped node within the bound; a weight
    scaled by 1.05 (negative control) is named as the first bad node."""
    from graphdsl.inspect import diff_hf
    torch = need_torch()
    cfg, model = qwen_tiny(False)
    c = qwen2vl.config_from_hf(cfg)
    w = qwen2vl.hf_to_gguf(model.state_dict(), c)
    imgs = _pixels(SIZES[:2], seed=7)
    x, grids = qwen2vl.Qwen2VLVision(c).items(imgs)
    forward = lambda m, px: m.model.get_image_features(px, torch.tensor(grids))  # noqa: E731
    reps = []
    for weights in (w, dict(w, **{"v.blk.1.ffn_up.weight": w["v.blk.1.ffn_up.weight"] * np.float32(1.05)})):
        run = graphdsl.compile(qwen2vl.build(c, grids), BACKEND, weights=weights)
        reps.append(diff_hf(run, {"pixels": x}, model, torch.from_numpy(x), MAPPING, forward=forward, rel_l2=BOUND))
    assert reps[0].ok, reps[0]
    assert not reps[1].ok and reps[1].first_bad.name == "v.blk.1.ffn_up"
