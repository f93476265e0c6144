"""CLIP ViT + LLaVA projector vs HF LlavaForConditionalGeneration.get_image_features (fp32, eager)."""
import numpy as np
import pytest
from hf_refs import BOUND, llava_tiny, need_torch, randomize, rel_err, run_graph
from target import BACKEND

import graphdsl
from graphdsl.models import clip


def _hf_features(m, px, layer, select):
    torch = need_torch()
    with torch.no_grad():
        out = m.model.get_image_features(px, vision_feature_layer=layer, vision_feature_select_strategy=select,
                                         interpolate_pos_encoding=True).pooler_output
    return np.stack([o.numpy() for o in out])


@pytest.mark.parametrize("layer,select", [(-2, "default"), (-1, "full"), (1, "default"), ([-3, -1], "default")])
def test_llava_features_match_hf(layer, select):
    torch = need_torch()
    cfg, m = llava_tiny(feature_layer=layer, select=select)
    c = clip.config_from_hf(cfg)
    px = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ref = _hf_features(m, px, layer, select)[0]
    g = clip.build(c)
    w = clip.hf_to_gguf(m.state_dict(), c)
    for be in (BACKEND, "reference"):
        assert rel_err(run_graph(g, w, {"pixels": px[0].numpy()}, be)["embd"], ref) <= BOUND


@pytest.mark.parametrize("hw", [(40, 24), (48, 48), (24, 32), (37, 29)])
@pytest.mark.parametrize("attn", ["flash", "softmax"])
def test_llava_odd_image_sizes(hw, attn):
    """Non-square and other-than-trained sizes: positions resized like interpolate_pos_encoding=True."""
    torch = need_torch()
    cfg, m = llava_tiny()
    c = clip.ClipConfig(**{**clip.config_from_hf(cfg).__dict__, "attn": attn})
    px = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(1))
    ref = _hf_features(m, px, -2, "default")
    g = clip.build(c, hw, n_images=2)
    out = run_graph(g, clip.hf_to_gguf(m.state_dict(), c), {"pixels": px.numpy()})["embd"]
    assert out.shape == ref.shape == (2, (hw[0] // 8) * (hw[1] // 8), 48)
    assert rel_err(out, ref) <= BOUND


def test_clip_vision_model_encoder_only():
    """A bare CLIPVisionConfig: last_hidden_state (class token kept, no projector)."""
    torch = need_torch()
    from transformers import CLIPVisionConfig, CLIPVisionModel
    vc = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2,
                          image_size=32, patch_size=8, attn_implementation="eager")
    m = randomize(CLIPVisionModel(vc))
    c = clip.config_from_hf(vc)
    px = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = m(px).last_hidden_state[0].numpy()
    out = run_graph(clip.build(c), clip.hf_to_gguf(m.state_dict(), c), {"pixels": px[0].numpy()})["embd"]
    assert rel_err(out, ref) <= BOUND


def test_node_names_and_capture():
    """Nodes are named like llama.cpp's cb(): captures by glob give per-layer tensors."""
    torch = need_torch()
    cfg, m = llava_tiny()
    c = clip.config_from_hf(cfg)
    px = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        hs = m.model.vision_tower(px, output_hidden_states=True).hidden_states
    g = clip.build(c)
    exe = graphdsl.compile(g, BACKEND, weights=clip.hf_to_gguf(m.state_dict(), c))
    out = exe({"pixels": px[0].numpy()}, capture=["v.blk.*.layer_out", "v.pre_ln"])
    assert sorted(k for k in out if k.startswith("v.blk")) == ["v.blk.0.layer_out", "v.blk.1.layer_out"]
    assert rel_err(out["v.pre_ln"], hs[0][0].numpy()) <= BOUND
    assert rel_err(out["v.blk.1.layer_out"], hs[2][0].numpy()) <= BOUND


def test_strict_weights_list_everything():
    cfg, m = llava_tiny()
    c = clip.config_from_hf(cfg)
    w = clip.hf_to_gguf(m.state_dict(), c)
    assert "v.post_ln.weight" not in w and "v.blk.2.ln1.weight" not in w  # unused by feature layer -2
    bad = dict(w)
    del bad["mm.0.weight"]
    bad["v.blk.0.attn_q.weight"] = np.zeros((3, 3), np.float32)
    bad["v.blk.9.attn_q.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(ValueError, match=r"missing 1: mm\.0\.weight.*unexpected 1: v\.blk\.9.*mis-shaped"):
        graphdsl.compile(clip.build(c), "cpu", weights=bad)
    sd = {k: v for k, v in m.state_dict().items() if "layer_norm1" not in k}
    with pytest.raises(ValueError, match=r"\[clip.hf_to_gguf\].*v\.blk\.0\.ln1\.weight"):
        clip.hf_to_gguf(sd, c)


def test_fast_precision_is_close():
    """precision="fast" (f16 im2col, GELU tables, f16 flash attention) stays near, not at, 1e-5."""
    torch = need_torch()
    cfg, m = llava_tiny()
    c = clip.config_from_hf(cfg)
    px = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    ref = _hf_features(m, px, -2, "default")[0]
    out = run_graph(clip.build(c), clip.hf_to_gguf(m.state_dict(), c), {"pixels": px[0].numpy()}, precision="fast")
    assert rel_err(out["embd"], ref) < 1e-2


def test_config_from_hf_llava_defaults():
    need_torch()
    from transformers import LlavaConfig
    c = clip.config_from_hf(LlavaConfig())
    got = (c.image_size, c.patch_size, c.n_layer, c.feature_layer, c.layers, c.n_mm_embd)
    assert got == (336, 14, 24, -2, (23,), 4096)
    assert c.act == "gelu_quick" and c.mm_act == "gelu_erf"


def test_two_tower_clip_config_is_the_vision_tower():
    """A CLIPConfig (text_config + vision_config, no LLaVA keys) is the vision encoder alone, not LLaVA."""
    need_torch()
    from transformers import CLIPConfig
    vc = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2, image_size=32, patch_size=8)
    for hf in (CLIPConfig(vision_config=vc, text_config=dict(hidden_size=48)),
               CLIPConfig(vision_config=vc, text_config=dict(hidden_size=48)).to_dict()):
        c = clip.config_from_hf(hf)
        assert (c.projector, c.select, c.layers, c.n_embd, c.n_layer) == (None, "full", (2,), 32, 2)
    cfg, _ = llava_tiny()
    assert clip.config_from_hf(cfg).projector == "mlp"
    assert clip.config_from_hf({**cfg.to_dict(), "model_type": ""}).projector == "mlp"  # LLaVA's keys suffice
