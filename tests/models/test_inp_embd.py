"""build_inp_embd: the registry, each input kind against HF's embedding modules, bicubic resizing."""
import re

import numpy as np
import pytest
from gguf.constants import TENSOR_NAMES
from hf_refs import BOUND, bert_tiny, llava_tiny, need_torch, randomize, rel_err, run_graph, whisper_tiny_random
from target import BACKEND

from graphdsl import Graph
from graphdsl.inp_embd import INPUT_KINDS, bicubic_matrix, build_inp_embd, register_input_kind
from graphdsl.models import clip, siglip, text, whisper_enc

BACKENDS = [BACKEND, "reference"]


def test_registry_has_the_four_kinds():
    assert {"text", "image", "audio", "embeddings"} <= set(INPUT_KINDS)
    with pytest.raises(RuntimeError, match="registered twice"):
        register_input_kind("text", "i32", (1,))(lambda x: x)


def test_unknown_kind_and_wrong_input_raise():
    g = Graph()
    x = g.input("x", (4, 8))
    with pytest.raises(ValueError, match=r"unknown input kind 'video'.*registered"):
        build_inp_embd("video", x)
    with pytest.raises(ValueError, match=r"'text' input %x must be i32 of rank 1"):
        build_inp_embd("text", x, n_vocab=10, n_embd=8)
    with pytest.raises(ValueError, match="smaller than one 16x16 patch"):
        build_inp_embd("image", g.input("px", (3, 8, 8)), n_embd=8, patch_size=16, image_size=32)
    with pytest.raises(ValueError, match="exceed the 4 learned positions"):
        build_inp_embd("text", g.input("ids", (5,), "i32"), n_vocab=10, n_embd=8, n_pos=4)


@pytest.mark.parametrize("n_in,n_out", [(4, 6), (4, 3), (5, 7), (24, 32), (16, 9), (3, 1), (7, 7), (2, 11)])
def test_bicubic_matrix_matches_torch(n_in, n_out):
    torch = need_torch()
    x = np.random.default_rng(0).standard_normal((n_in, 5))
    xt = torch.tensor(x.T[None, :, :, None], dtype=torch.float32)  # (1, 5, n_in, 1)
    ref = torch.nn.functional.interpolate(xt, size=(n_out, 1), mode="bicubic", align_corners=False)[0, :, :, 0].T
    assert np.abs(bicubic_matrix(n_in, n_out) @ x - ref.double().numpy()).max() < 1e-5


IMAGE_SIZES = [(32, 32), (40, 24), (24, 24), (48, 56), (33, 35)]


@pytest.mark.parametrize("hw", IMAGE_SIZES)
def test_image_kind_matches_clip_embeddings(hw):
    """CLIP: class token at position 0, position table resized as interpolate_pos_encoding=True."""
    torch = need_torch()
    cfg, m = llava_tiny()
    emb = m.model.vision_tower.embeddings
    c = clip.config_from_hf(cfg)
    px = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = emb(px, interpolate_pos_encoding=True).numpy()
    g = Graph()
    inp = g.input("px", px.shape)
    with g.scope("v"):
        x = build_inp_embd("image", inp, n_embd=c.n_embd, patch_size=c.patch_size,
                           image_size=c.image_size, class_embd=True)
    g.output("y", x)
    w = {k: v for k, v in clip.hf_to_gguf(m.state_dict(), c).items() if k in g.weights}
    for be in BACKENDS:
        assert rel_err(run_graph(g, w, {"px": px.numpy()}, be)["y"], ref) <= BOUND


@pytest.mark.parametrize("hw", [(32, 32), (40, 24), (16, 16)])
def test_image_kind_matches_siglip_embeddings(hw):
    """SigLIP: patch bias, no class token."""
    torch = need_torch()
    from transformers import SiglipVisionConfig, SiglipVisionModel
    vc = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=1,
                            image_size=32, patch_size=4)
    m = randomize(SiglipVisionModel(vc))
    c = siglip.config_from_hf(vc)
    px = torch.randn(1, 3, *hw, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = getattr(m, "vision_model", m).embeddings(px, interpolate_pos_encoding=True)[0].numpy()
    g = Graph()
    inp = g.input("px", px.shape[1:])
    with g.scope("v"):
        g.output("y", build_inp_embd("image", inp, n_embd=c.n_embd,
                                     patch_size=c.patch_size, image_size=c.image_size, patch_bias=True))
    w = {k: v for k, v in siglip.hf_to_gguf(m.state_dict(), c).items() if k in g.weights}
    assert rel_err(run_graph(g, w, {"px": px[0].numpy()})["y"], ref) <= BOUND


def test_interpolation_constants_are_const_nodes_that_follow_the_pixels():
    g = Graph()
    inp = g.input("px", (3, 40, 24))
    with g.scope("v"):
        build_inp_embd("image", inp, n_embd=8, patch_size=8, image_size=32)
    assert list(g.inputs) == ["px"]  # nothing for the caller to feed
    k = {n.name: n for n in g.nodes if n.op == "const"}
    assert sorted(k) == ["v.pos_resize_h", "v.pos_resize_w"]
    assert k["v.pos_resize_h"].shape == (5, 4) and k["v.pos_resize_w"].shape == (3, 4)
    s = {n.name: n for n in g.specialize({"px": (3, 24, 40)}).nodes if n.op == "const"}
    assert s["v.pos_resize_h"].shape == (3, 4) and s["v.pos_resize_w"].shape == (5, 4)
    np.testing.assert_array_equal(s["v.pos_resize_w"].attrs["value"].evaluate([(3, 24, 40)]),
                                  bicubic_matrix(4, 5).astype(np.float32))


def test_constants_helper_is_deprecated_and_empty():
    from graphdsl.inp_embd import constants
    g = Graph()
    with pytest.warns(DeprecationWarning, match="Graph.const"):
        assert constants(g) == {}


def test_audio_kind_matches_whisper_conv_stem():
    torch = need_torch()
    cfg, m = whisper_tiny_random()
    c = whisper_enc.config_from_hf(cfg)
    mel = torch.randn(2, c.n_mel, c.n_frames, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        x = torch.nn.functional.gelu(m.conv1(mel))
        x = torch.nn.functional.gelu(m.conv2(x)).permute(0, 2, 1)
        ref = (x + m.embed_positions.weight).numpy()
    g = Graph()
    inp = g.input("mel", mel.shape)
    with g.scope("a"):
        g.output("y", build_inp_embd("audio", inp, n_embd=c.n_embd, n_pos=c.n_ctx))
    w = {k: v for k, v in whisper_enc.hf_to_gguf(m.state_dict(), c).items() if k in g.weights}
    for be in BACKENDS:
        assert rel_err(run_graph(g, w, {"mel": mel.numpy()}, be)["y"], ref) <= BOUND


def test_text_kind_matches_bert_embeddings():
    torch = need_torch()
    cfg, m = bert_tiny()
    ids = np.array([1, 7, 99, 0, 42, 5], np.int32)
    with torch.no_grad():
        ref = m.embeddings(input_ids=torch.from_numpy(ids.astype(np.int64))[None])[0].numpy()
    c = text.config_from_hf(cfg)
    g = text.build(c, n_tokens=len(ids))
    for be in BACKENDS:
        assert rel_err(run_graph(g, text.hf_to_gguf(m.state_dict(), c), {"ids": ids}, be)["embd"], ref) <= BOUND


@pytest.mark.parametrize("wtype", ["f16", "q8_0", "q4_0"])
def test_text_kind_quantized_table(wtype):
    """get_rows on a quantized token table: ggml equals the reference (which dequantizes with gguf)."""
    rng = np.random.default_rng(4)
    c = text.TextConfig(n_vocab=50, n_embd=64, wtype=wtype)
    table = rng.standard_normal((50, 64)).astype(np.float32)
    ids = rng.integers(0, 50, 9).astype(np.int32)
    g = text.build(c, n_tokens=9)
    out, ref = (run_graph(g, {"token_embd.weight": table}, {"ids": ids}, be)["embd"] for be in BACKENDS)
    assert np.array_equal(out, ref)
    assert rel_err(out, table[ids]) < {"f16": 1e-3, "q8_0": 1e-2, "q4_0": 0.2}[wtype]


def test_embeddings_kind_passes_through():
    g = Graph()
    x = g.input("e", (3, 8))
    assert build_inp_embd("embeddings", x, n_embd=8) is x
    with pytest.raises(ValueError, match="width 8, the decoder expects 16"):
        build_inp_embd("embeddings", x, n_embd=16)


_GGUF = [re.compile(re.escape(p).replace(r"\{bid\}", r"\d+") + r"(\.(weight|bias))?$") for p in TENSOR_NAMES.values()]


@pytest.mark.parametrize("mod,cfg", [
    (clip, clip.ClipConfig(image_size=32, patch_size=8, n_embd=32, n_ff=64, n_head=2, n_layer=2, n_mm_embd=16)),
    (siglip, siglip.SiglipConfig(image_size=32, patch_size=8, n_embd=32, n_ff=64, n_head=2, n_layer=2,
                                 mm_tokens_per_image=4, n_mm_embd=16)),
    (whisper_enc, whisper_enc.WhisperEncConfig(n_mel=8, n_ctx=8, n_embd=32, n_head=2, n_layer=2, n_ff=64,
                                               n_mm_embd=16)),
    (text, text.TextConfig(n_vocab=10, n_embd=8, n_pos=16, n_types=2, norm_eps=1e-12)),
])
def test_weight_names_are_gguf_names(mod, cfg):
    """Every weight is a gguf MODEL_TENSOR name (llama.cpp mmproj conventions), nodes named by scope."""
    g = mod.build(cfg)
    bad = [n for n in g.weights if not any(p.match(n) for p in _GGUF)]
    assert not bad, bad
    if mod in (clip, siglip):
        assert g.find("v.blk.0.attn_q") and g.find("v.blk.0.layer_out")
