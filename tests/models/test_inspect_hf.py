"""inspect.hf: graphdsl vs HF torch models node by node, through forward hooks and the default
mappings (CLIP, SigLIP + Gemma 3's projector, LLaVA's projector, Whisper), with a broken weight
as the negative control and the mapping's errors."""
import pytest

torch = pytest.importorskip("torch", reason="needs torch (pip install -e .[test])")
pytest.importorskip("transformers", reason="needs transformers (pip install -e .[test])")

import hf_refs  # our own helper: plain import, a bug in it must fail, not skip
from target import BACKEND

import graphdsl
from graphdsl.inspect import hf
from graphdsl.models import clip, siglip, whisper_enc


def _clip_vision(n_layer=3):
    from transformers import CLIPVisionConfig, CLIPVisionModel
    torch.manual_seed(0)
    vc = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=n_layer,
                          image_size=32, patch_size=8, attn_implementation="eager")
    m = hf_refs.randomize(CLIPVisionModel(vc))
    c = clip.config_from_hf(vc)
    return m, clip.build(c), clip.hf_to_gguf(m.state_dict(), c)


def _pixels(seed=0):
    return torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _expected(keys, n_layer):
    """Node names the default mapping should give: every entry, every layer."""
    out = []
    for k in keys:
        v = hf.MAPPINGS[k[0]][k[1]]
        out += [v.format(i=i) for i in range(n_layer)] if "{i}" in v else [v]
    return set(out)


def _all(name):
    return [(name, k) for k in hf.MAPPINGS[name]]


@pytest.mark.parametrize("backend", [BACKEND, "reference"])
def test_clip_every_mapped_node_within_bound(backend):
    m, g, w = _clip_vision()
    px = _pixels()
    run = graphdsl.compile(g, backend, weights=w)
    rep = hf.diff_hf(run, {"pixels": px[0].numpy()}, m, {"pixel_values": px}, rel_l2=hf_refs.BOUND)
    assert {r.name for r in rep.rows} == _expected(_all("clip"), 3)
    assert rep.ok and not rep.missing, str(rep)
    assert rep.names == (run.backend, "HF CLIPVisionModel")
    assert f"run: {run.backend}; reference: HF CLIPVisionModel" in str(rep)
    assert "encoder.layers.2.mlp.fc1" in str(rep)  # rows name the HF module they came from


def test_clip_broken_weight_names_the_first_bad_layer():
    """Negative control: a 5% error in layer 1's ffn_up; everything before it stays within bound."""
    m, g, w = _clip_vision()
    w = dict(w, **{"v.blk.1.ffn_up.weight": w["v.blk.1.ffn_up.weight"] * 1.05})
    px = _pixels()
    rep = hf.diff_hf(graphdsl.compile(g, BACKEND, weights=w), {"pixels": px[0].numpy()}, m, {"pixel_values": px},
                     rel_l2=hf_refs.BOUND)
    assert not rep.ok and rep.first_bad.name == "v.blk.1.ffn_up"
    assert rep.first_bad.source == "encoder.layers.1.mlp.fc1" and rep.first_bad.rel_l2 > 1e-2
    before = rep.rows[:rep.rows.index(rep.first_bad)]
    assert len(before) > 10 and all(r.ok for r in before)
    assert "first node over the bound" in rep.headline() and "%v.blk.1.ffn_up" in rep.headline()


def test_siglip_gemma3_every_mapped_node_within_bound():
    _, m = hf_refs.gemma3_tiny()
    c = siglip.config_from_hf(m.config)
    g = siglip.build(c)
    px = _pixels(1)
    run = graphdsl.compile(g, BACKEND, weights=siglip.hf_to_gguf(m.state_dict(), c))
    rep = hf.diff_hf(run, {"pixels": px[0].numpy()}, m, px, forward=lambda mm, x: mm.model.get_image_features(x),
                     rel_l2=hf_refs.BOUND)
    assert {r.name for r in rep.rows} == _expected(_all("siglip") + _all("gemma3_projector"), 2)
    assert rep.ok, str(rep)


def test_llava_lists_the_layers_the_graph_does_not_build():
    """feature_layer -2: HF runs 3 layers, the graph builds 2; layer 2 is reported, not compared."""
    cfg, m = hf_refs.llava_tiny()
    c = clip.config_from_hf(cfg)
    g = clip.build(c)
    px = _pixels(2)
    run = graphdsl.compile(g, BACKEND, weights=clip.hf_to_gguf(m.state_dict(), c))
    rep = hf.diff_hf(run, {"pixels": px[0].numpy()}, m, px, rel_l2=hf_refs.BOUND,
                     forward=lambda mm, x: mm.model.get_image_features(x, vision_feature_layer=-2,
                                                                       vision_feature_select_strategy="default"))
    assert {r.name for r in rep.rows} == _expected(_all("clip") + _all("llava_projector"), 2)
    assert rep.ok, str(rep)
    assert "10 HF module(s) have no node in the graph" in str(rep) and "encoder.layers.2." in str(rep)


def test_whisper_every_mapped_node_within_bound():
    cfg, m = hf_refs.whisper_tiny_random()
    c = whisper_enc.config_from_hf(cfg)
    g = whisper_enc.build(c)
    mel = torch.randn(1, 16, 64, generator=torch.Generator().manual_seed(3))
    run = graphdsl.compile(g, BACKEND, weights=whisper_enc.hf_to_gguf(m.state_dict(), c))
    rep = hf.diff_hf(run, {"mel": mel.numpy()}, m, mel, rel_l2=hf_refs.BOUND)
    assert {r.name for r in rep.rows} == _expected(_all("whisper"), 2)
    assert rep.ok, str(rep)


# -- the mapping's own errors -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def clip_run():
    m, g, w = _clip_vision(2)
    return m, graphdsl.compile(g, "reference", weights=w), _pixels()


def _diff(clip_run, mapping):
    m, run, px = clip_run
    return hf.diff_hf(run, {"pixels": px[0].numpy()}, m, {"pixel_values": px}, mapping)


def test_key_matching_no_module_is_an_error(clip_run):
    with pytest.raises(ValueError, match=r"match no module: 'encoder.layers.\{i\}.mlp.fc3'.*close: .*mlp.fc"):
        _diff(clip_run, {"encoder.layers.{i}.mlp.fc1": "v.blk.{i}.ffn_up", "encoder.layers.{i}.mlp.fc3": "x"})


def test_node_the_graph_lacks_is_an_error(clip_run):
    with pytest.raises(ValueError, match=r"does not have: 'encoder.layers.\{i\}.mlp.fc1' -> 'v.blk.0.ffn_upp'"
                                         r".*close: v.blk.0.ffn_up"):
        _diff(clip_run, {"encoder.layers.{i}.mlp.fc1": "v.blk.{i}.ffn_upp"})


def test_two_modules_for_one_node_is_an_error(clip_run):
    with pytest.raises(ValueError, match="both map to node 'v.blk.0.ffn_down'"):
        _diff(clip_run, {"encoder.layers.0.mlp": "v.blk.0.ffn_down", "encoder.layers.0.mlp.fc2": "v.blk.0.ffn_down"})


def test_layouts_need_a_converter_beyond_the_batch_axis(clip_run):
    """HF's patch conv gives (1, D, h, w); the graph's v.patch_embd.t is (h*w, D)."""
    with pytest.raises(ValueError, match=r"gives \(1, 32, 4, 4\), node 'v.patch_embd.t' is \(16, 32\)"):
        _diff(clip_run, {"embeddings.patch_embedding": "v.patch_embd.t"})
    rep = _diff(clip_run, {"embeddings.patch_embedding": ("v.patch_embd.t", lambda a: a[0].reshape(32, -1).T),
                           "re:encoder\\.layers\\.(?P<i>\\d+)$": "v.blk.{i}.layer_out"})
    assert [r.name for r in rep.rows] == ["v.patch_embd.t", "v.blk.0.layer_out", "v.blk.1.layer_out"]
    assert rep.ok, str(rep)
    # the converter is what makes it right: the same values without the transpose are far off
    wrong = _diff(clip_run, {"embeddings.patch_embedding": ("v.patch_embd.t", lambda a: a[0].reshape(-1, 32))})
    assert wrong.first_bad.name == "v.patch_embd.t" and wrong.first_bad.rel_l2 > 0.5


def test_default_mapping_refuses_an_unknown_model():
    with pytest.raises(ValueError, match="no default HF mapping for Linear"):
        hf.default_mapping(torch.nn.Linear(2, 2))


@pytest.mark.children
def test_torch_is_not_imported_by_graphdsl():
    """torch is a test extra: importing graphdsl.inspect.hf must not need it."""
    import subprocess
    import sys
    code = ("import sys; sys.modules['torch'] = None; import graphdsl.inspect.hf as h; "
            "assert 'clip' in h.MAPPINGS")
    subprocess.run([sys.executable, "-c", code], check=True)
