"""SigLIP ViT + Gemma 3 projector vs HF Gemma3ForConditionalGeneration / SiglipVisionModel (fp32, eager)."""
import numpy as np
import pytest
from hf_refs import BOUND, gemma3_tiny, need_torch, rel_err, run_graph
from target import BACKEND

from graphdsl.models import siglip


def test_gemma3_image_features_match_hf():
    torch = need_torch()
    cfg, m = gemma3_tiny()
    c = siglip.config_from_hf(cfg)
    assert (c.projector, c.pool, c.act) == ("gemma3", 2, "gelu")
    px = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = m.model.get_image_features(px).pooler_output.numpy()
    w = siglip.hf_to_gguf(m.state_dict(), c)
    hf_norm = m.model.multi_modal_projector.mm_soft_emb_norm.weight.detach().numpy()
    np.testing.assert_array_equal(w["mm.soft_emb_norm.weight"], hf_norm + np.float32(1))  # stored as 1 + w
    for be in (BACKEND, "reference"):
        out = run_graph(siglip.build(c, n_images=2), w, {"pixels": px.numpy()}, be)["embd"]
        assert out.shape == ref.shape == (2, 16, 48)
        assert rel_err(out, ref) <= BOUND


@pytest.mark.parametrize("hw", [(40, 24), (48, 48), (20, 36)])
@pytest.mark.parametrize("attn", ["flash", "softmax"])
def test_siglip_tower_odd_sizes(hw, attn):
    """The tower (post-LN output) at other sizes, positions resized as interpolate_pos_encoding=True."""
    torch = need_torch()
    cfg, m = gemma3_tiny()
    c = siglip.SiglipConfig(**{**siglip.config_from_hf(cfg).__dict__, "projector": None, "attn": attn})
    px = torch.randn(1, 3, *hw, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = m.model.vision_tower(pixel_values=px, interpolate_pos_encoding=True).last_hidden_state[0].numpy()
    g = siglip.build(c, hw)
    out = run_graph(g, siglip.hf_to_gguf(m.state_dict(), c), {"pixels": px[0].numpy()})["embd"]
    assert rel_err(out, ref) <= BOUND


def test_gemma3_projector_on_odd_grid():
    """At a non-trained size the projector pools the actual (gh, gw) grid with the trained kernel
    (HF's module reshapes to the trained grid and cannot run there): checked against torch ops."""
    torch = need_torch()
    cfg, m = gemma3_tiny()
    c = siglip.config_from_hf(cfg)
    px = torch.randn(1, 3, 48, 24, generator=torch.Generator().manual_seed(2))
    proj = m.model.multi_modal_projector
    with torch.no_grad():
        x = m.model.vision_tower(pixel_values=px, interpolate_pos_encoding=True).last_hidden_state
        x = x.transpose(1, 2).reshape(1, -1, 12, 6)
        x = torch.nn.functional.avg_pool2d(x, 2).flatten(2).transpose(1, 2)
        ref = (proj.mm_soft_emb_norm(x) @ proj.mm_input_projection_weight)[0].numpy()
    out = run_graph(siglip.build(c, (48, 24)), siglip.hf_to_gguf(m.state_dict(), c), {"pixels": px[0].numpy()})
    assert rel_err(out["embd"], ref) <= BOUND


def test_siglip_vision_model_and_config():
    torch = need_torch()
    from hf_refs import randomize
    from transformers import SiglipVisionConfig, SiglipVisionModel
    vc = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2,
                            image_size=16, patch_size=4, attn_implementation="eager")
    m = randomize(SiglipVisionModel(vc))
    c = siglip.config_from_hf(vc)
    px = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = m(px).last_hidden_state[0].numpy()
    w = siglip.hf_to_gguf(m.state_dict(), c)  # the attention-pooling head is not part of the graph
    assert not any(k.startswith("mm.") for k in w)
    assert rel_err(run_graph(siglip.build(c), w, {"pixels": px[0].numpy()})["embd"], ref) <= BOUND


def test_two_tower_siglip_config_is_the_vision_tower():
    need_torch()
    from transformers import SiglipConfig
    hf = SiglipConfig(vision_config=dict(hidden_size=32, intermediate_size=64, num_attention_heads=2,
                                         num_hidden_layers=2, image_size=16, patch_size=4), text_config=dict(hidden_size=48))
    assert siglip.config_from_hf(hf).projector is None and siglip.config_from_hf(hf.to_dict()).n_embd == 32
    assert siglip.config_from_hf(gemma3_tiny()[0]).projector == "gemma3"


# q8_0 with a q8_0 projection: 1.1e-2 measured, the projection being one more quantized matrix (with
# q8_0-rounded activations on the CPU) after the tower, with no residual path to dilute it
@pytest.mark.parametrize("transposed,wtype,bound", [(False, "q8_0", 2e-2), (True, "q8_0", 1e-2), (False, "f16", 1e-3)])
def test_gemma3_projection_layouts_and_types(transposed, wtype, bound):
    """mm.input_projection in either layout: (d_text, d_vision) is a plain mul_mat weight of any type
    (q8_0 here); HF's (d_vision, d_text) is used through a transpose, so a quantized config keeps it f16."""
    torch = need_torch()
    cfg, m = gemma3_tiny()
    c = siglip.SiglipConfig(**{**siglip.config_from_hf(cfg).__dict__, "wtype": wtype, "mm_proj_transposed": transposed})
    w = siglip.hf_to_gguf(m.state_dict(), c)
    hf_w = m.model.multi_modal_projector.mm_input_projection_weight.detach().numpy()
    np.testing.assert_array_equal(w["mm.input_projection.weight"], hf_w if transposed else hf_w.T)
    g = siglip.build(c)
    expect = "f16" if transposed and wtype == "q8_0" else wtype
    assert g.weights["mm.input_projection.weight"].dtype.name == expect
    assert bool(g.find("mm.input_projection.t")) == transposed
    px = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = m.model.get_image_features(px).pooler_output[0].numpy()
    assert rel_err(run_graph(g, w, {"pixels": px[0].numpy()})["embd"], ref) <= bound


def test_gemma3_quantized_projection_cannot_be_transposed():
    cfg = siglip.SiglipConfig(image_size=32, patch_size=4, n_embd=64, n_ff=128, n_head=4, n_layer=1,
                              mm_tokens_per_image=16, n_mm_embd=96, wtypes={"mm.input_projection.weight": "q8_0"})
    with pytest.raises(ValueError, match=r"input_projection.weight' is q8_0 \[64, 96\].*cannot take"):
        siglip.build(cfg)
