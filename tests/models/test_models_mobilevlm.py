"""MobileVLM's projectors (graphdsl.models.mobilevlm) against torch's own operators, in the
default venv (the comparison with llama.cpp's mtmd, file to embeddings, is tests/models/test_mtmd_mobilevlm.py).

MobileVLM's LDP is MobileNetV3's InvertedResidual without expansion (depthwise conv + LayerNorm +
Hardswish, squeeze-excite with ReLU / Hardsigmoid, pointwise conv + LayerNorm, a skip at stride 1);
LDPv2 is a 2x2 average pool then a PEG (depthwise conv with bias, plus the input). The torch side
is written with torch.nn.functional (conv2d with groups, hardswish, hardsigmoid, avg_pool2d) on
the patch features graphdsl's tower gives, so only the projector is compared. Bound: 1e-5
relative L2 in f32; negative control: the depthwise kernel transposed.
"""
from __future__ import annotations

import numpy as np
import pytest
from hf_refs import need_torch

import graphdsl
from graphdsl.models import mobilevlm
from target import BACKEND
from test_mtmd_mobilevlm import random_weights

BOUND = 1e-5


def _torch_ldp(feat, w, projector, grid, eps):
    torch = need_torch()
    F = torch.nn.functional
    t = {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in w.items()}
    x = torch.from_numpy(feat)[None]  # (1, n, c)

    def lin(x, name, bias=True):
        return F.linear(x, t[f"{name}.weight"], t[f"{name}.bias"] if bias else None)

    def ln2d(x, name):  # LayerNorm over channels of (1, C, H, W)
        y = F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], t[f"{name}.weight"], t[f"{name}.bias"], eps)
        return y.permute(0, 3, 1, 2)

    a, b = ("mm.model.mlp.1", "mm.model.mlp.3") if projector == "ldp" else ("mm.model.mlp.0", "mm.model.mlp.2")
    gelu = "tanh" if mobilevlm.MobileVLMConfig().mm_act == "gelu" else "none"
    y = lin(F.gelu(lin(x, a), approximate=gelu), b)
    c = y.shape[-1]
    y = y.permute(0, 2, 1).reshape(1, c, *grid)
    if projector == "ldp":
        for i, stride in ((1, 1), (2, 2)):
            p = f"mm.model.mb_block.{i}.block"
            h = F.conv2d(y, t[f"{p}.0.0.weight"], stride=stride, padding=1, groups=c)
            h = F.hardswish(ln2d(h, f"{p}.0.1"))
            s = F.adaptive_avg_pool2d(h, 1).flatten(1)
            s = F.hardsigmoid(lin(F.relu(lin(s, f"{p}.1.fc1")), f"{p}.1.fc2"))
            h = h * s[:, :, None, None]
            h = ln2d(F.conv2d(h, t[f"{p}.2.0.weight"][:, :, None, None]), f"{p}.2.1")
            y = y + h if stride == 1 else h
    else:
        y = F.avg_pool2d(y, 2)
        y = F.conv2d(y, t["mm.model.peg.0.weight"], t["mm.model.peg.0.bias"], padding=1, groups=c) + y
    return y.flatten(2).permute(0, 2, 1)[0].numpy()


@pytest.mark.parametrize("projector", ["ldp", "ldpv2"])
def test_projector_matches_torch(projector):
    cfg = mobilevlm.MobileVLMConfig(image_size=40, patch_size=4, n_embd=32, n_ff=64, n_head=4, n_layer=1,
                                    feature_layer=1, class_token=True, projector=projector, n_mm_embd=48, n_se=16)
    w = random_weights(mobilevlm.weight_shapes(cfg), seed=3)
    g = mobilevlm.build(cfg)
    run = graphdsl.compile(g, BACKEND)
    run.load_weights(w)
    px = np.random.default_rng(0).standard_normal((3, 40, 40)).astype(np.float32)
    out = run({"pixels": px}, capture=["v.features_no_cls"])
    feat = out["v.features_no_cls"]
    ref = _torch_ldp(feat, w, projector, (10, 10), cfg.eps)
    err = float(np.linalg.norm(out["embd"] - ref) / np.linalg.norm(ref))
    assert out["embd"].shape == (25, 48) and err < BOUND, err

    # negative control: the depthwise kernel transposed (H <-> W) on the torch side
    name = "mm.model.mb_block.1.block.0.0.weight" if projector == "ldp" else "mm.model.peg.0.weight"
    bad = dict(w, **{name: np.ascontiguousarray(w[name].transpose(0, 1, 3, 2))})
    err_bad = float(np.linalg.norm(out["embd"] - _torch_ldp(feat, bad, projector, (10, 10), cfg.eps))
                    / np.linalg.norm(ref))
    assert err_bad > 1e3 * BOUND, err_bad


def test_odd_grid_and_unknown_projector_are_refused():
    with pytest.raises(ValueError, match="must be even"):
        mobilevlm.build(mobilevlm.MobileVLMConfig(image_size=36, patch_size=4, n_embd=32, n_ff=64, n_head=4,
                                                  n_layer=1, feature_layer=1, n_mm_embd=48))
    with pytest.raises(ValueError, match="unknown projector"):
        mobilevlm.build(mobilevlm.MobileVLMConfig(image_size=32, patch_size=4, n_embd=32, n_ff=64, n_head=4,
                                                  n_layer=1, feature_layer=1, n_mm_embd=48, projector="ldpv3"))


def test_a_batch_of_images_equals_one_by_one():
    from graphdsl.embed import Embedder
    cfg = mobilevlm.MobileVLMConfig(image_size=32, patch_size=4, n_embd=32, n_ff=64, n_head=4, n_layer=1,
                                    feature_layer=1, projector="ldp", n_mm_embd=48, n_se=16)
    e = Embedder(None, {"image": mobilevlm.MobileVLMVision(cfg)}, backend=BACKEND,
                 weights=random_weights(mobilevlm.weight_shapes(cfg), seed=4))
    rng = np.random.default_rng(1)
    a, b = (rng.standard_normal((3, 32, 32)).astype(np.float32) for _ in range(2))
    both = e([("image", a), ("image", b)])
    assert [s.n_tokens for s in both.spans] == [16, 16]
    np.testing.assert_allclose(both.embd, np.concatenate([e([("image", a)]).embd, e([("image", b)]).embd]),
                               rtol=1e-5, atol=1e-6)
