"""SigLIP ViT + Gemma 3 projector vs HF Gemma3ForConditionalGeneration / SiglipVisionModel (fp32, eager)."""
import numpy as np
import pytest
from hf_refs import BOUND, gemma3_tiny, need_torch, rel_err, run_graph

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
    for be in ("cpu", "reference"):
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
