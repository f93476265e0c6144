"""Pixtral (LLaVA + Pixtral tower) and Mistral-3 (+ patch merger) against HF, built from small
random configs: get_image_features for one image and for several images of different sizes
packed in one call (HF pads them and passes image_sizes), the [IMG_BREAK] / [IMG_END] rows as
they sit in HF's decoder input, and HF folder -> graphdsl convert -> graphdsl embed --image.

Bound: 1e-5 relative L2 in f32 (measured here 3e-7 to 5e-7, printed); f16 weights 1e-3.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
from hf_refs import need_torch, randomize, rel_err, tiny_llama
from PIL import Image

import graphdsl
from graphdsl.embed import Embedder
from graphdsl.models import pixtral
from target import BACKEND

BOUND = 1e-5
IMG, BREAK, END = 10, 12, 13  # Pixtral's token ids ([IMG], [IMG_BREAK], [IMG_END])


def _vision(patch):
    from transformers import PixtralVisionConfig
    return PixtralVisionConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2,
                               image_size=8 * patch, patch_size=patch, hidden_act="silu")


def llava_pixtral(seed=0, feature_layer=-1):
    torch = need_torch()
    from transformers import LlavaConfig, LlavaForConditionalGeneration
    torch.manual_seed(seed)
    cfg = LlavaConfig(vision_config=_vision(8), text_config=tiny_llama(), vision_feature_layer=feature_layer,
                      vision_feature_select_strategy="full", image_token_index=IMG, attn_implementation="eager")
    return cfg, randomize(LlavaForConditionalGeneration(cfg), seed)


def mistral3(seed=0):
    torch = need_torch()
    from transformers import MistralConfig, Mistral3Config, Mistral3ForConditionalGeneration
    torch.manual_seed(seed)
    tc = MistralConfig(hidden_size=48, intermediate_size=64, num_attention_heads=2, num_key_value_heads=2,
                       head_dim=24, num_hidden_layers=1, vocab_size=64, rms_norm_eps=1e-5)
    cfg = Mistral3Config(vision_config=_vision(7), text_config=tc, spatial_merge_size=2, image_token_index=IMG,
                         attn_implementation="eager")
    return cfg, randomize(Mistral3ForConditionalGeneration(cfg), seed)


MODELS = {"llava": llava_pixtral, "mistral3": mistral3}
SIZES = {"llava": [(32, 48), (16, 24), (48, 16)], "mistral3": [(28, 42), (14, 28), (42, 14)]}


@pytest.fixture(scope="module", params=list(MODELS))
def tiny(request):
    cfg, model = MODELS[request.param]()
    c = pixtral.config_from_hf({**cfg.to_dict(), "image_break_token_id": BREAK, "image_end_token_id": END})
    return request.param, model, c, pixtral.hf_to_gguf(model.state_dict(), c)


def _images(which, n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((3, h, w)).astype(np.float32) for h, w in SIZES[which][:n]]


def _hf_features(model, imgs):
    """get_image_features on HF's batch: images padded to the largest, with image_sizes."""
    torch = need_torch()
    h, w = max(i.shape[1] for i in imgs), max(i.shape[2] for i in imgs)
    pv = np.zeros((len(imgs), 3, h, w), np.float32)
    for k, i in enumerate(imgs):
        pv[k, :, :i.shape[1], :i.shape[2]] = i
    with torch.no_grad():
        out = model.model.get_image_features(torch.from_numpy(pv), image_sizes=torch.tensor([i.shape[1:] for i in imgs]))
    return [f.numpy() for f in out.pooler_output]


def _features_only(c):
    return dataclasses.replace(c, img_break=False, img_end=False)


def _run(c, w, imgs, backend=BACKEND):
    x, grids = pixtral.PixtralVision(c).items(imgs)
    g = pixtral.build(c, grids)
    return graphdsl.compile(g, backend, weights={k: w[k] for k in g.weights})(pixels=x)["embd"]


@pytest.mark.parametrize("n", [1, 3], ids=["one image", "three sizes"])
def test_features_match_hf(tiny, n):
    which, model, c, w = tiny
    imgs = _images(which, n)
    ref = np.concatenate(_hf_features(model, imgs))
    for backend in (BACKEND, "reference"):
        err = rel_err(_run(_features_only(c), w, imgs, backend), ref)
        print(f"{which} {n} image(s) on {backend}: {err:.2e}")
        assert err <= BOUND


def test_negative_controls_fail(tiny, monkeypatch):
    """Swapping h and w in the RoPE positions, or dropping the per-image mask, must fail the
    comparison that passes above (non-square grids, three images)."""
    which, model, c, w = tiny
    imgs = _images(which, 3)
    ref = np.concatenate(_hf_features(model, imgs))
    c = _features_only(c)
    assert rel_err(_run(c, w, imgs), ref) <= BOUND
    with monkeypatch.context() as mp:
        mp.setattr(pixtral, "grid_positions", _swap_hw(pixtral.grid_positions))
        assert rel_err(_run(c, w, imgs), ref) > 100 * BOUND
    with monkeypatch.context() as mp:
        mp.setattr(pixtral.blocks, "seq_mask", lambda *a, **k: None)
        assert rel_err(_run(c, w, imgs), ref) > 100 * BOUND


def _swap_hw(fn):
    def swapped(h, w, merge=1, rows=4):
        return np.ascontiguousarray(fn(h, w, merge, rows)[[1, 0]])  # rows (w, h) for (h, w)
    return swapped


def _hf_decoder_input(model, imgs, c):
    """HF's inputs_embeds for [5, <image 0>, 7, <image 1>, ...], each image as PixtralProcessor
    writes it ([IMG] rows, [IMG_BREAK] after each, [IMG_END] for the last), and the spans."""
    torch = need_torch()
    ids, spans, m = [5], [], c.patch_size * c.merge
    for img in imgs:
        h, w = img.shape[1] // m, img.shape[2] // m
        row = ([IMG] * w + [BREAK]) * h
        row[-1] = END
        spans.append((len(ids), len(ids) + len(row)))
        ids += row + [7]
    got = {}

    def grab(mod, args, kw):
        got["embd"] = kw["inputs_embeds"][0].detach().numpy()
    hook = model.model.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    hh, ww = max(i.shape[1] for i in imgs), max(i.shape[2] for i in imgs)
    pv = np.zeros((len(imgs), 3, hh, ww), np.float32)
    for k, i in enumerate(imgs):
        pv[k, :, :i.shape[1], :i.shape[2]] = i
    try:
        with torch.no_grad():
            model(input_ids=torch.tensor([ids]), pixel_values=torch.from_numpy(pv),
                  image_sizes=torch.tensor([i.shape[1:] for i in imgs]))
    finally:
        hook.remove()
    return got["embd"], spans


def test_rows_are_hf_decoder_input(tiny):
    """With [IMG_BREAK] and [IMG_END] (a converted file's), each image's rows through the mixed
    batch (build_items: one packed graph) equal HF's decoder input over the image's span."""
    which, model, c, w = tiny
    assert c.img_break and c.img_end
    imgs = _images(which, 3, seed=1)
    ref, spans = _hf_decoder_input(model, imgs, c)
    out = Embedder(None, {"image": pixtral.PixtralVision(c)}, backend=BACKEND, weights=w)([("image", i) for i in imgs])
    assert [s.n_tokens for s in out.spans] == [b - a for a, b in spans]
    for s, (a, b) in zip(out.spans, spans):
        assert rel_err(out.embd[s.start:s.start + s.n_tokens], ref[a:b]) <= BOUND
    # llama.cpp's layout (no [IMG_END] row): the same rows, one fewer per image
    c2 = dataclasses.replace(c, img_end=False)
    out2 = Embedder(None, {"image": pixtral.PixtralVision(c2)}, backend=BACKEND,
                    weights={k: v for k, v in w.items() if k != pixtral.IMG_END})([("image", i) for i in imgs])
    for s, (a, b) in zip(out2.spans, spans):
        assert rel_err(out2.embd[s.start:s.start + s.n_tokens], ref[a:b - 1]) <= BOUND


def test_feature_layer_minus_two():
    """LLaVA's vision_feature_layer -2: the file keeps the blocks up to it."""
    _, model = llava_pixtral(feature_layer=-2)
    c = pixtral.config_from_hf(model.config)
    assert c.n_layer == 1 and not c.img_break
    imgs = _images("llava", 2)
    assert rel_err(_run(c, pixtral.hf_to_gguf(model.state_dict(), c), imgs), np.concatenate(_hf_features(model, imgs))) <= BOUND


def _save_folder(model, folder):
    model.save_pretrained(folder)
    added = {str(i): {"content": t, "special": True} for i, t in ((IMG, "[IMG]"), (BREAK, "[IMG_BREAK]"), (END, "[IMG_END]"))}
    (folder / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": added}))


def _cli(*args):
    r = subprocess.run([sys.executable, "-m", "graphdsl.cli", *map(str, args)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


def _text_gguf(path, table):
    """The decoder's token table as a text GGUF (f32, placeholder token strings: ids are given)."""
    from gguf import GGUFWriter
    w = GGUFWriter(str(path), arch="llama")
    w.add_embedding_length(table.shape[1])
    w.add_tokenizer_model("llama")
    w.add_token_list([f"t{i}" for i in range(table.shape[0])])
    w.add_tensor("token_embd.weight", np.ascontiguousarray(table, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def folder(tiny, tmp_path_factory):
    """The HF folder (save_pretrained + a tokenizer_config.json naming the marker tokens), two PNGs
    larger than image_size (scaled down, then rounded up), the decoder's token table as a text
    GGUF, and HF's decoder input for [5, <image>, 7, <image>, 7] with the images pre-processed
    by HF's PixtralImageProcessor (PIL)."""
    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil
    which, model, c, _ = tiny
    tmp = tmp_path_factory.mktemp(f"pixtral_{which}")
    _save_folder(model, tmp / "hf")
    _text_gguf(tmp / "text.gguf", model.get_input_embeddings().weight.detach().numpy())
    rng = np.random.default_rng(4)
    paths = []
    for k, (h, w) in enumerate([(45, 70), (90, 20)]):
        paths.append(tmp / f"{k}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    m = c.patch_size * c.merge
    pre = PixtralImageProcessorPil(size={"longest_edge": c.image_size}, patch_size={"height": m, "width": m})
    imgs = []
    for p in paths:
        px = pre(Image.open(p), return_tensors="np")
        (h, w), = px["image_sizes"]
        imgs.append(px["pixel_values"][0][:, :h, :w])
    ref, spans = _hf_decoder_input(model, imgs, c)
    return tmp, paths, ref, spans, imgs


@pytest.mark.children
def test_hf_folder_converts_and_embeds_cli(tiny, folder):
    """HF dir -> graphdsl convert -> graphdsl embed --text-model --image a.png --image b.png
    --tokens "5,<image>,7,<image>,7" (f32): the whole sequence equals HF's decoder input
    (inputs_embeds) for the same files and ids, marker rows included."""
    tmp, paths, ref, spans, imgs = folder
    gguf, out = tmp / "m.gguf", tmp / "e.npy"
    _cli("convert", tmp / "hf", "-o", gguf)
    _cli("embed", "--mmproj", gguf, "--text-model", tmp / "text.gguf", "--image", paths[0], "--image", paths[1],
         "--tokens", "5,<image>,7,<image>,7", "-o", out, "--backend", "cpu")
    err = rel_err(np.load(out), ref)
    print(f"{tiny[0]} f32: {err:.2e}")
    assert err <= BOUND
    # the file's pre-processing (longest edge image_size, sides multiples of patch * merge) is HF's
    from graphdsl.cli import main
    assert main(["preprocess", "image", str(paths[1]), "--mmproj", str(gguf), "-o", str(tmp / "px.npy")]) == 0
    assert np.abs(np.load(tmp / "px.npy") - imgs[1]).max() == 0.0
    for cmd in (["info", str(gguf)], ["inspect", str(gguf), "--image", str(paths[0])]):
        assert main(cmd) == 0, cmd


@pytest.mark.parametrize("outtype,bound", [("f16", 1e-3), ("q8_0", 5e-2)])
def test_hf_folder_converts_and_embeds_quantized(tiny, folder, outtype, bound):
    """The same path in-process (convert, embed_files: what the commands call) with f16 weights
    (1e-3: ggml's products round activations to f16 too) and q8_0 (a loose sanity bound, 5e-2,
    about 5x what these models measure: ggml quantizes activations to 8 bits as well)."""
    from graphdsl.convert import convert
    from graphdsl.embed import embed_files
    tmp, paths, ref, spans, _ = folder
    want = np.concatenate([ref[a:b] for a, b in spans])
    gguf = tmp / f"m_{outtype}.gguf"
    convert(str(tmp / "hf"), gguf, outtype)
    mm = graphdsl.models.from_gguf(gguf)
    assert mm.archs["image"].name == "pixtral" and mm.vision.cfg.img_end and mm.vision.cfg.img_break
    err = rel_err(embed_files(gguf, images=paths, backend="cpu").embd, want)
    print(f"{tiny[0]} {outtype}: {err:.2e}")
    assert err <= bound


def test_errors():
    c = pixtral.PixtralConfig(image_size=64, patch_size=8, n_embd=32, n_ff=64, n_head=4, n_layer=1, n_mm_embd=48, merge=2)
    with pytest.raises(ValueError, match="multiples of 16"):
        pixtral.patchify(np.zeros((3, 24, 16), np.float32), c)
    with pytest.raises(ValueError, match="do not fit grids"):
        pixtral.build(c, [(3, 4)])
    with pytest.raises(ValueError, match="rope_theta 10000"):
        pixtral.config_to_gguf(dataclasses.replace(c, rope_theta=1e6))
    with pytest.raises(ValueError, match="IMG_BREAK"):
        pixtral.hf_dir({"vision_config": {}}, "/nonexistent")


# HF module names -> graphdsl node names (the tower's layers, the merger, the projector)
MAPPING = {"vision_tower.ln_pre": "v.pre_ln", "transformer.layers.{i}.attention": "v.blk.{i}.attn_out",
           "transformer.layers.{i}.feed_forward.up_proj": "v.blk.{i}.ffn_up",
           "transformer.layers.{i}.feed_forward": "v.blk.{i}.ffn_down", "transformer.layers.{i}": "v.blk.{i}.layer_out",
           "multi_modal_projector.linear_1": "mm.1", "multi_modal_projector.linear_2": "mm.2"}
MERGER = {"multi_modal_projector.norm": "mm.input_norm", "multi_modal_projector.patch_merger": "mm.patch_merger"}


def test_node_by_node_against_hf(tiny):
    """inspect.diff_hf: every mapped node within the bound on a non-square image; a weight scaled
    by 1.05 (negative control) is named as the first bad node."""
    from graphdsl.inspect import diff_hf
    torch = need_torch()
    which, model, c, w = tiny
    c = _features_only(c)
    img = _images(which, 1, seed=3)[0]
    x, grids = pixtral.PixtralVision(c).items([img])
    g = pixtral.build(c, grids)
    mapping = {**MAPPING, **(MERGER if c.merge > 1 else {})}
    forward = lambda m, px: m.model.get_image_features(px, image_sizes=torch.tensor([img.shape[1:]]))  # noqa: E731
    for weights, ok in ((w, True), (dict(w, **{"v.blk.1.ffn_up.weight": w["v.blk.1.ffn_up.weight"] * 1.05}), False)):
        run = graphdsl.compile(g, BACKEND, weights={k: weights[k] for k in g.weights})
        rep = diff_hf(run, {"pixels": x}, model, torch.from_numpy(img)[None], mapping, forward=forward, rel_l2=BOUND)
        assert rep.ok == ok, rep
    assert rep.first_bad.name == "v.blk.1.ffn_up"
