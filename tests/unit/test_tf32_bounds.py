"""The bounds that tests apply on a TF32 device (target.TF32_OP, target.TF32_REL) hold for TF32
arithmetic, emulated on the CPU by rounding every matrix product's inputs (tests/support/tf32.py).

Measured here (2026-11-29, `pytest -s`): op cases 2.0e-4 to 5.5e-4 normalised max error; models vs
HF fp32 in relative L2: LLaVA 5.8e-4, Gemma 3 5.2e-4, Whisper 1.9e-4, Voxtral 9.3e-4. The bounds
(2e-3, 3e-3) sit about 3.5x and 3x above the largest.
"""
import zlib

import numpy as np
import pytest
from hf_refs import gemma3_tiny, llava_tiny, need_torch, rel_err, run_graph, voxtral_tiny, whisper_tiny_random
from op_cases import CASES
from target import TF32_OP, TF32_REL
from tf32 import emulate_tf32, tf32

import graphdsl
from graphdsl.models import clip, siglip, whisper_enc


def test_rounding_keeps_ten_mantissa_bits():
    u = 2.0 ** -10  # TF32's spacing in [1, 2)
    x = np.float32([1 + u / 2, 1 + 1.5 * u, 1 + u / 4, 1 + 0.75 * u, np.pi, -2.5e-30, 3e38])
    want = [1, 1 + 2 * u, 1, 1 + u, 3.140625, None, None]  # ties go to even
    got = tf32(x)
    np.testing.assert_array_equal(got[:5], want[:5])
    assert np.all(np.abs(got[5:] - x[5:].astype(np.float64)) <= np.abs(x[5:]) * 2.0 ** -11)  # f32's range kept


@pytest.mark.parametrize("case", [c for c in CASES if c.op in ("mul_mat", "conv_1d", "conv_2d", "flash_attn_ext")
                                  and all(s[1] == "f32" for s in c.spec.values())], ids=lambda c: c.id)
def test_tf32_op_error_is_within_the_op_bound(case):
    g = case.graph()
    ins, ws = case.values(np.random.default_rng(zlib.crc32(case.id.encode())))
    exact = graphdsl.compile(g, "reference", weights=ws)(ins)["out"].astype(np.float64)
    with emulate_tf32():
        rounded = graphdsl.compile(g, "reference", weights=ws)(ins)["out"]
    err = np.abs(rounded - exact).max() / np.abs(exact).max()
    print(f"{case.id}: {err:.2e}")
    assert 0 < err <= TF32_OP  # 0 would mean the emulation did not take effect


def _models():
    torch = need_torch()
    gen = lambda seed: torch.Generator().manual_seed(seed)  # noqa: E731
    cfg, m = llava_tiny()
    c = clip.config_from_hf(cfg)
    px = torch.randn(1, 3, 32, 32, generator=gen(0))
    with torch.no_grad():
        ref = m.model.get_image_features(px, vision_feature_layer=-2, vision_feature_select_strategy="default",
                                         interpolate_pos_encoding=True).pooler_output[0].numpy()
    yield "llava", clip.build(c), clip.hf_to_gguf(m.state_dict(), c), {"pixels": px[0].numpy()}, ref
    cfg, m = gemma3_tiny()
    c = siglip.config_from_hf(cfg)
    px = torch.randn(2, 3, 32, 32, generator=gen(0))
    with torch.no_grad():
        ref = m.model.get_image_features(px).pooler_output.numpy()
    yield "gemma3", siglip.build(c, n_images=2), siglip.hf_to_gguf(m.state_dict(), c), {"pixels": px.numpy()}, ref
    cfg, m = whisper_tiny_random()
    c = whisper_enc.config_from_hf(cfg)
    mel = torch.randn(3, c.n_mel, c.n_frames, generator=gen(0))
    with torch.no_grad():
        ref = m(mel).last_hidden_state.reshape(-1, c.n_embd).numpy()
    yield "whisper", whisper_enc.build(c, 3), whisper_enc.hf_to_gguf(m.state_dict(), c), {"mel": mel.numpy()}, ref
    cfg, m = voxtral_tiny()
    c = whisper_enc.config_from_hf(cfg)
    mel = torch.randn(2, c.n_mel, c.n_frames, generator=gen(1))
    with torch.no_grad():
        ref = m.get_audio_features(mel).pooler_output.numpy()
    yield "voxtral", whisper_enc.build(c, 2), whisper_enc.hf_to_gguf(m.state_dict(), c), {"mel": mel.numpy()}, ref


def test_tf32_model_error_is_within_the_model_bound():
    for name, g, w, ins, ref in _models():
        with emulate_tf32():
            err = rel_err(run_graph(g, w, ins, "reference")["embd"], ref)
        print(f"{name}: {err:.2e}")
        assert 1e-5 < err <= TF32_REL, name  # above the f32 bound: TF32 really was emulated
