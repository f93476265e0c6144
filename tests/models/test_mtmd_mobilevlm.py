"""MobileVLM (graphdsl.models.mobilevlm, projectors "ldp" and "ldpv2") against llama.cpp's own mtmd
(tests/support/mtmd_ref.py in the mtmd venv; skipped without it, ``make test-mtmd`` builds it).

The same mmproj file (random weights, llama.cpp's names and keys) and the same image go through
both; mtmd gives one image chunk, graphdsl one span: same token count, embeddings within BOUND.
mtmd hard-codes a 24 x 24 patch grid for these projectors, so the tower is 48 px at patch 2.

BOUND: graphdsl runs exact f32 here; mtmd's CPU path rounds through f16 in im2col (both
depthwise convolutions take the map as f16, and the kernels are f16 in the file) and in its GELU /
quick-GELU lookup tables (f16 is 2^-11 ~ 4.9e-4 relative per value). Measured here (2026-12-01):
5.9e-4 (ldp) and 3.6e-4 (ldpv2) relative L2, the same with mtmd's flash attention off (it is not
where the difference comes from). The bound is 5e-3; each negative control (one depthwise kernel
flipped in the file mtmd reads) lands at 0.37-0.59.
"""
from __future__ import annotations

import numpy as np
import pytest
from mtmd_util import rel_l2, run_mtmd, write_text_gguf
from PIL import Image

import graphdsl
from graphdsl.convert.writer import write_gguf
from graphdsl.models import from_gguf, mobilevlm
from target import BACKEND

pytestmark = pytest.mark.children  # llama.cpp's mtmd runs in its own venv, in a child

BOUND = 5e-3
N_MM = 64


def random_weights(shapes: dict, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for n, s in shapes.items():
        if n.endswith(".bias") or n == "v.class_embd":
            a = 0.1 * rng.standard_normal(s)
        elif len(s) == 1:  # LayerNorm weights
            a = 1.0 + 0.1 * rng.standard_normal(s)
        else:
            a = rng.standard_normal(s) / np.sqrt(np.prod(s[1:]))
        out[n] = a.astype(np.float32)
    return out


def write_mobilevlm(path, cfg, weights):
    # the depthwise kernels f16, as llama.cpp's converter writes them: ggml's CPU conv_2d_dw needs that
    write_gguf(str(path), "clip", mobilevlm.config_to_gguf(cfg),
               {k: (v, "f16" if v.ndim == 4 and k.startswith("mm.") else "f32") for k, v in weights.items()})


def photo(size: int, path):
    from skimage import data
    Image.fromarray(data.astronaut()).resize((size, size), Image.Resampling.BICUBIC).save(path)
    return path


def pixels(path, mean, std):
    a = np.asarray(Image.open(path).convert("RGB"), np.float32) / np.float32(255.0)
    return np.ascontiguousarray(((a - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).transpose(2, 0, 1))


def graphdsl_embd(path, image):
    m = from_gguf(path)
    g = graphdsl.Graph("mobilevlm")
    g.output("embd", m.vision(g.input("pixels", (3, m.vision.cfg.image_size, m.vision.cfg.image_size))))
    run = graphdsl.compile(g, BACKEND)
    run.load_weights(m.weights)
    v = m.config.vision
    return run({"pixels": pixels(image, v.image_mean, v.image_std)})["embd"]


def cfg_of(projector, class_token=False):
    return mobilevlm.MobileVLMConfig(image_size=48, patch_size=2, n_embd=32, n_ff=64, n_head=4, n_layer=2,
                                     feature_layer=2, class_token=class_token, projector=projector,
                                     n_mm_embd=N_MM, n_se=16)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("mtmd_mobilevlm")
    write_text_gguf(d / "text.gguf", N_MM)
    return d, d / "text.gguf", photo(48, d / "photo.png")


@pytest.mark.parametrize("projector", ["ldp", "ldpv2"])
def test_matches_mtmd_chunk_by_chunk(files, projector):
    d, text, image = files
    cfg = cfg_of(projector)
    w = random_weights(mobilevlm.weight_shapes(cfg), seed=1)
    path = d / f"{projector}.gguf"
    write_mobilevlm(path, cfg, w)
    ref = run_mtmd(path, text, image, d)
    assert list(ref["kinds"]) == ["image"], ref["kinds"]
    ours = graphdsl_embd(path, image)
    assert ours.shape == ref["embd.0"].shape == (144, N_MM)
    err = rel_l2(ours, ref["embd.0"])
    print(f"{projector}: relative L2 vs mtmd {err:.2e}")
    assert err < BOUND

    # negative control: the stride-2 (ldp) / PEG (ldpv2) depthwise kernel flipped in the file mtmd reads
    name = "mm.model.mb_block.2.block.0.0.weight" if projector == "ldp" else "mm.model.peg.0.weight"
    bad = dict(w, **{name: np.ascontiguousarray(w[name][..., ::-1, :])})
    write_mobilevlm(d / f"{projector}_bad.gguf", cfg, bad)
    err_bad = rel_l2(ours, run_mtmd(d / f"{projector}_bad.gguf", text, image, d)["embd.0"])
    print(f"{projector}: negative control {err_bad:.2e}")
    assert err_bad > 30 * BOUND


def test_class_token_order_is_where_mtmd_differs(files):
    """With a class token, mtmd appends it after the patches but numbers positions as if it came
    first and then drops row 0 (a patch), keeping the class token (upstream #25814); graphdsl
    follows HF/CLIP (class token first, dropped). Pinned so that an upstream fix shows up."""
    d, text, image = files
    cfg = cfg_of("ldpv2", class_token=True)
    path = d / "ldpv2_cls.gguf"
    write_mobilevlm(path, cfg, random_weights(mobilevlm.weight_shapes(cfg), seed=2))
    ref = run_mtmd(path, text, image, d)
    ours = graphdsl_embd(path, image)
    assert ours.shape == ref["embd.0"].shape
    err = rel_l2(ours, ref["embd.0"])
    print(f"class token: relative L2 vs mtmd {err:.2e} (mtmd's order defect)")
    assert err > 10 * BOUND
