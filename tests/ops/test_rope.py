"""RoPE in every mode: ggml vs the NumPy reference, the reference vs HF transformers' own rotary
code (Qwen2-VL text M-RoPE, Qwen2-VL / Qwen2.5-VL vision, Pixtral), shape rules and FLOPs.

HF computes its angles in float32 (`position_ids.float() * inv_freq`), the reference in float64:
the bound HF_TOL (normalised max error) covers that rounding; every HF check has a negative
control (sections or h/w swapped) that must miss it by orders of magnitude.
"""
from __future__ import annotations

import numpy as np
import pytest
from target import BACKEND

import graphdsl
from graphdsl import Graph, ops
from graphdsl.ops import REGISTRY
from graphdsl.ops.rope import grid_positions, neox_to_normal

# ggml builds each angle as p * theta_scale^j by j f32 products, so its error grows with the
# position: over 8 seeds at positions < 256 the worst was 1.6e-5 (M-RoPE, head_dim 128, base 1e6),
# 2.7e-5 at < 512; at the grid positions of the HF checks below (< 10) it is about 2e-7.
GGML_TOL = 3e-5
GGML_SMALL_POS_TOL = 1e-6
HF_TOL = 1e-5  # HF: f32 angles (measured 2e-6 for text M-RoPE at positions < 128, < 3e-7 on grids)
R = np.random.default_rng(7)


def _err(out, ref):
    ref = np.asarray(ref, np.float64)
    return float(np.abs(np.asarray(out, np.float64) - ref).max() / np.abs(ref).max())


def _graph(build, x, pos):
    g = Graph("rope")
    g.output("out", build(g.input("x", x.shape), g.input("p", pos.shape, "i32")))
    return g


def _run(build, x, pos, backend="reference"):
    x = np.asarray(x, np.float32)
    return graphdsl.compile(_graph(build, x, pos), backend)({"x": x, "p": np.asarray(pos, np.int32)})["out"]


def _pos4(rows, n):
    """(4, n) i32 positions with the given leading rows, zeros after."""
    out = np.zeros((4, n), np.int32)
    out[: len(rows)] = rows
    return out


# -- ggml vs the reference, at the sizes of the models that use each mode -----------------------------
MODES = {
    "normal": (lambda x, p: ops.rope(x, p), (9, 4, 64), (9,)),
    "neox-partial": (lambda x, p: ops.rope(x, p, mode="neox", n_dims=32, freq_base=1e6), (9, 4, 64), (9,)),
    "mrope-qwen2vl-text": (lambda x, p: ops.rope(x, p, mode="mrope", sections=(16, 24, 24), freq_base=1e6),
                           (9, 2, 128), (4, 9)),
    "mrope-4-sections": (lambda x, p: ops.rope(x, p, mode="mrope", n_dims=24, sections=(3, 4, 3, 2)),
                         (9, 2, 32), (4, 9)),
    "vision-qwen2vl": (lambda x, p: ops.rope(x, p, mode="vision"), (24, 3, 80), (4, 24)),
    "vision-3-sections": (lambda x, p: ops.rope(x, p, mode="vision", sections=(6, 5, 5)), (24, 3, 32), (4, 24)),
    "rope_2d-normal": (lambda x, p: ops.rope_2d(x, p, freq_base=1e4), (24, 3, 64), (2, 24)),
    "rope_2d-neox": (lambda x, p: ops.rope_2d(x, p, freq_base=1e4, layout="neox"), (24, 3, 64), (4, 24)),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_ggml_matches_reference(mode):
    build, xs, ps = MODES[mode]
    x = R.standard_normal(xs).astype(np.float32)
    pos = R.integers(0, 256, ps).astype(np.int32)
    err = _err(_run(build, x, pos, BACKEND), _run(build, x, pos))
    print(f"rope {mode}: ggml vs reference {err:.2e}")
    assert err <= GGML_TOL


# -- the reference vs HF ------------------------------------------------------------------------------------
torch = pytest.importorskip("torch")


def _t(a):
    return torch.from_numpy(np.asarray(a, np.float64))


def test_mrope_matches_hf_qwen2vl_text():
    """Qwen2VLRotaryEmbedding (mrope_section) + apply_rotary_pos_emb = mode "mrope", rows t, h, w."""
    m = pytest.importorskip("transformers.models.qwen2_vl.modeling_qwen2_vl")
    from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLTextConfig
    heads, d, n, section = 2, 128, 11, [16, 24, 24]
    cfg = Qwen2VLTextConfig(hidden_size=heads * d, num_attention_heads=heads, num_key_value_heads=heads,
                            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": section})
    x = R.standard_normal((n, heads, d))
    thw = R.integers(0, 128, (3, n))
    cos, sin = m.Qwen2VLRotaryEmbedding(cfg)(_t(x), torch.from_numpy(thw)[:, None, :])
    q = _t(x).transpose(0, 1)[None]  # (1, heads, n, d)
    hf = m.apply_rotary_pos_emb(q, q, cos, sin)[0][0].transpose(0, 1).numpy()

    def ours(sections, rows):
        return REGISTRY["rope"].reference(x, _pos4(rows, n), n_dims=d, mode="mrope", sections=(*sections, 0),
                                          freq_base=1e6, freq_scale=1.0)
    err = _err(ours(section, thw), hf)
    print(f"mrope vs HF Qwen2-VL text: {err:.2e}")
    assert err <= HF_TOL
    assert _err(ours([24, 16, 24], thw), hf) > 100 * HF_TOL  # sections swapped
    assert _err(ours(section, thw[[0, 2, 1]]), hf) > 100 * HF_TOL  # h and w rows swapped


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_vision_matches_hf_qwen_vision(family):
    """HF's VisionRotaryEmbedding at get_vision_position_ids + apply_rotary_pos_emb_vision = mode
    "vision" at grid_positions (two images, one a 2-frame video, 2x2 merge order)."""
    m = pytest.importorskip(f"transformers.models.{family}.modeling_{family}")
    from transformers.vision_utils import get_vision_position_ids
    heads, d = 3, 80
    if family == "qwen2_vl":
        from transformers.models.qwen2_vl.configuration_qwen2_vl import (
            Qwen2VLVisionConfig,
        )
        rot = m.Qwen2VLVisionRotaryEmbedding(Qwen2VLVisionConfig(embed_dim=heads * d, num_heads=heads))
    else:
        from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import (
            Qwen2_5_VLVisionConfig,
        )
        rot = m.Qwen2_5_VLVisionRotaryEmbedding(Qwen2_5_VLVisionConfig(hidden_size=heads * d, num_heads=heads))
    grids = [(1, 6, 8), (2, 4, 4)]
    hf_pos = get_vision_position_ids(torch.tensor(grids), 2)  # (n, 2): h, w
    pos = np.concatenate([np.tile(grid_positions(h, w, merge=2), t) for t, h, w in grids], axis=1)
    np.testing.assert_array_equal(pos[:2].T, hf_pos.numpy())
    n = pos.shape[1]
    x = R.standard_normal((n, heads, d))
    cos, sin = rot(_t(x), hf_pos)
    hf = m.apply_rotary_pos_emb_vision(_t(x), _t(x), cos, sin)[0].numpy()  # computes in f32

    def ours(p):
        return REGISTRY["rope"].reference(x, p, n_dims=d, mode="vision", sections=(d // 4, d // 4, 0, 0),
                                          freq_base=10000.0, freq_scale=1.0)
    err = _err(ours(pos), hf)
    print(f"vision vs HF {family}: {err:.2e}")
    assert err <= HF_TOL
    assert _err(ours(pos[[1, 0, 2, 3]]), hf) > 100 * HF_TOL  # h and w swapped
    ggml = _run(lambda a, p: ops.rope(a, p, mode="vision"), x, pos, BACKEND)
    err = _err(ggml, hf)
    print(f"vision ({BACKEND}) vs HF {family}: {err:.2e}")
    assert err <= GGML_SMALL_POS_TOL


@pytest.mark.parametrize("layout", ["neox", "normal"])
def test_rope_2d_matches_hf_pixtral(layout):
    """PixtralVisionRotaryEmbedding + apply_rotary_pos_emb = rope_2d: on HF's own q ("neox") and on
    q permuted as llama.cpp's converter stores it ("normal"), on both backends."""
    m = pytest.importorskip("transformers.models.pixtral.modeling_pixtral")
    from transformers.models.pixtral.configuration_pixtral import PixtralVisionConfig
    heads, d, gh, gw = 4, 64, 5, 7
    rot = m.PixtralVisionRotaryEmbedding(PixtralVisionConfig(hidden_size=heads * d, num_attention_heads=heads,
                                                             head_dim=d, rope_parameters={"rope_type": "axial",
                                                                                          "rope_theta": 10000.0}))
    pos = grid_positions(gh, gw, rows=2)  # Pixtral: raster order, no merge
    n = pos.shape[1]
    x = R.standard_normal((n, heads, d))
    cos, sin = rot(_t(x), torch.from_numpy(pos.T.astype(np.int64)))
    q = _t(x).transpose(0, 1)[None]
    hf = m.apply_rotary_pos_emb(q, q, cos, sin, unsqueeze_dim=0)[0][0].transpose(0, 1).numpy()
    if layout == "normal":  # permute each head as the q/k weights are permuted, and back after
        perm = neox_to_normal(np.arange(heads * d), heads).reshape(heads, d)[0]
        x, back = x[..., perm], np.argsort(perm)
    else:
        back = slice(None)
    for backend in ("reference", BACKEND):
        ours = _run(lambda a, p: ops.rope_2d(a, p, layout=layout), x, pos, backend)[..., back]
        err = _err(ours, hf)
        print(f"rope_2d ({layout}) {backend} vs HF Pixtral: {err:.2e}")
        assert err <= (HF_TOL if backend == "reference" else GGML_SMALL_POS_TOL)
    swapped = _run(lambda a, p: ops.rope_2d(a, p, layout=layout), x, pos[::-1].copy())[..., back]
    assert _err(swapped, hf) > 100 * HF_TOL


def test_neox_to_normal_matches_llama_cpp_permute():
    """The q/k row permutation llama.cpp's converter applies (LlamaModel.permute), on a (out, in) weight."""
    w = np.arange(2 * 8 * 3).reshape(16, 3)
    llama = w.reshape(2, 2, 4, 3).swapaxes(1, 2).reshape(16, 3)
    np.testing.assert_array_equal(neox_to_normal(w, 2), llama)


# -- shape rules, FLOPs --------------------------------------------------------------------------------
BAD = [
    (lambda g, x: ops.rope(x, g.input("p", (4, 6), "i32")), r"pos must be \(n_tokens,\) = \(6,\)"),
    (lambda g, x: ops.rope(x, g.input("p", (6,), "i32"), mode="vision"), r"pos must be \(4, n_tokens\)"),
    (lambda g, x: ops.rope(x, g.input("p", (3, 6), "i32"), mode="mrope", sections=(2, 3, 3)), r"\(4, 6\)"),
    (lambda g, x: ops.rope(x, g.input("p", (4, 6), "i32"), mode="mrope"), r"sections must be 4 counts"),
    (lambda g, x: ops.rope(x, g.input("p", (4, 6), "i32"), mode="mrope", sections=(2, 3, 2)), r"add up to .* 8"),
    (lambda g, x: ops.rope(x, g.input("p", (4, 6), "i32"), mode="mrope", sections=(0, 0, 0, 8)),
     r"first three must be > 0"),
    (lambda g, x: ops.rope(x, g.input("p", (4, 6), "i32"), mode="vision", sections=(4, 0, 4)),
     r"must be > 0 up to the last"),
    (lambda g, x: ops.rope(x, g.input("p", (4, 6), "i32"), mode="vision", n_dims=8), r"n_dims 8 must be head_dim 16"),
    (lambda g, x: ops.rope(x, g.input("p", (6,), "i32"), sections=(4, 4)), r"sections are for modes"),
    (lambda g, x: ops.rope(x, g.input("p", (6,), "f32")), r"pos must be i32"),
    (lambda g, x: ops.rope(x, g.input("p", (6,), "i32"), mode="yarn"), r"mode must be one of"),
    (lambda g, x: ops.rope(x, g.input("p", (6,), "i32"), n_dims=7), r"n_dims 7 must be even"),
    (lambda g, x: ops.rope(x, g.input("p", (6,), "i32"), freq_base=0.0), r"must be positive and finite"),
    (lambda g, x: ops.rope(ops.view(x, -1, 0, 15), g.input("p", (6,), "i32"), n_dims=8), r"head_dim 15 must be even"),
    (lambda g, x: ops.rope_2d(x, g.input("p", (3, 6), "i32")), r"\[rope_2d\] .*pos \(3, 6\)"),
    (lambda g, x: ops.rope_2d(x, g.input("p", (2, 6), "i32"), layout="gptj"), r"\[rope_2d\] .*layout 'gptj'"),
]


@pytest.mark.parametrize("build,msg", BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_rope_is_a_value_error(build, msg):
    g = Graph("bad")
    x = g.input("x", (6, 2, 16))
    with pytest.raises(ValueError, match=msg) as e:
        build(g, x)
    msg = str(e.value)  # the graph names the node and its inputs' shapes; rope_2d names x and pos itself
    assert ("[rope] node 'rope'" in msg and "f32[6,2," in msg) or "[rope_2d] node 'rope_2d': x (6, 2, 16)" in msg


def test_rope_flops_count_rotated_pairs():
    g = Graph("f")
    x = g.input("x", (5, 3, 32))
    p4 = g.input("p4", (4, 5), "i32")
    nodes = {"neox": ops.rope(x, g.input("p", (5,), "i32"), mode="neox", n_dims=16),
             "mrope": ops.rope(x, p4, mode="mrope", sections=(4, 6, 6)),
             "vision": ops.rope(x, p4, mode="vision")}
    for mode, want in {"neox": 5 * 3 * 8 * 6, "mrope": 5 * 3 * 16 * 6, "vision": 5 * 3 * 16 * 6}.items():
        n = nodes[mode].node
        assert REGISTRY["rope"].flops(n.shape, [i.shape for i in n.inputs], **n.attrs) == want, mode
