"""NaN / inf weights and broken normalisation constants in GGUF files are refused, not computed with.

`from_gguf` (mmproj and text) refuses non-finite weights by default, listing them, and loads them
with `check_finite=False`; `graphdsl info` reports them. Quantized scales are located by
`gguf_io.finite.SCALE_OFFSETS`; those offsets are checked here against the gguf package's own
dequantizer (an independent reading of ggml's block layouts): with every scale finite, blocks of
random bytes dequantize to finite values, and one poisoned scale makes exactly its block non-finite.
"""
from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, quants
from gguf import GGMLQuantizationType as Q
from test_hostile_files_gguf import clip_spec, make, text_spec

from graphdsl.convert.info import describe
from graphdsl.gguf_io import GGUFTensor, load_mmproj, nonfinite
from graphdsl.gguf_io.finite import SCALE_OFFSETS, count_nonfinite
from graphdsl.models import from_gguf, text

V = gguf.Keys.ClipVision
POISONS = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}


def _bf16(a):
    return (np.asarray(a, np.float32).view(np.uint32) >> 16).astype(np.uint16)  # truncation keeps NaN/inf


def _retyped(spec, name, dtype, poison=None, at=(3, 5)):
    """spec with tensor `name` stored as f32 / f16 / bf16, one value replaced by `poison`."""
    tensors, kv, arch = spec
    out = []
    for n, a, raw in tensors:
        if n == name:
            a = a.copy()
            if poison is not None:
                a[at] = poison
            if dtype == "f16":
                a = a.astype(np.float16)
            elif dtype == "bf16":
                a, raw = _bf16(a), Q.BF16
        out.append((n, a, raw))
    return out, kv, arch


def test_clean_files_load_and_info_says_so(tmp_path):
    """Negative control: nothing non-finite, nothing refused."""
    path = make(tmp_path / "c.gguf", _retyped(clip_spec(), "v.blk.0.attn_q.weight", "bf16"))
    assert from_gguf(path).weights and "weights: no NaN or inf" in describe(path)
    assert nonfinite(load_mmproj(path)[1]) == []


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("poison", list(POISONS))
def test_nonfinite_mmproj_weight_is_refused_and_listed(tmp_path, dtype, poison):
    name = "v.blk.1.ffn_up.weight"
    path = make(tmp_path / "p.gguf", _retyped(clip_spec(), name, dtype, POISONS[poison]))
    with pytest.raises(ValueError, match=rf"^{path}: 1 tensors hold NaN or inf: {name} \(1 values\); "
                                         r"pass check_finite=False"):
        from_gguf(path)
    loaded = load_mmproj(path)[1][name]  # check_finite=False loads it as it is
    assert name in from_gguf(path, check_finite=False).weights and count_nonfinite(loaded) == 1
    assert f"weights: 1 tensors hold NaN or inf: {name} (from_gguf refuses them" in describe(path)


def test_every_offending_tensor_is_named(tmp_path):
    spec = _retyped(clip_spec(), "mm.2.bias", "f32", np.inf, at=(7,))
    spec = _retyped(spec, "v.patch_embd.weight", "f16", np.nan, at=(0, 0, 0, 0))
    path = make(tmp_path / "two.gguf", spec)
    with pytest.raises(ValueError, match=r"2 tensors hold NaN or inf: v.patch_embd.weight \(1 values\), "
                                         r"mm.2.bias \(1 values\)"):
        from_gguf(path)


def test_large_finite_values_are_not_flagged(tmp_path):
    """f16's largest value and f32 values near its overflow are finite: no false alarm."""
    spec = _retyped(clip_spec(), "v.blk.0.attn_k.weight", "f16", 65504.0)
    spec = _retyped(spec, "mm.0.weight", "f32", 3.0e38)
    assert from_gguf(make(tmp_path / "big.gguf", spec)).weights


def test_nonfinite_text_table_is_refused(tmp_path):
    table = np.random.default_rng(0).standard_normal((32, 64)).astype(np.float32)
    table[31, 63] = np.nan
    path = make(tmp_path / "t.gguf", text_spec(table=table))
    with pytest.raises(ValueError, match=rf"^{path}: 1 tensors hold NaN or inf: token_embd.weight \(1 values\)"):
        text.from_gguf(path)
    assert np.isnan(text.from_gguf(path, check_finite=False).weights["token_embd.weight"][31, 63])
    assert "weights: 1 tensors hold NaN or inf: token_embd.weight" in describe(path)


@pytest.mark.parametrize("eps", [float("nan"), float("inf"), -1e-5, 0.0])
def test_text_layer_norm_eps_must_be_finite_and_positive(tmp_path, eps):
    path = make(tmp_path / "e.gguf", text_spec(**{"bert.attention.layer_norm_epsilon": eps}))
    with pytest.raises(ValueError, match=f"^{path}: bert.attention.layer_norm_epsilon"):
        text.from_gguf(path)


# -- quantized: the scales, located by SCALE_OFFSETS, checked against gguf's dequantizer ------------------
def _blocks(q, n_blocks=256, seed=0):
    """Random bytes with every scale set to a small finite f16: the rest of a block is integers."""
    block, size = GGML_QUANT_SIZES[q]
    raw = np.random.default_rng(seed).integers(0, 256, (n_blocks, size), dtype=np.uint8)
    for o in SCALE_OFFSETS[q]:
        raw[:, o:o + 2] = np.full((n_blocks, 1), 0.01, np.float16).view(np.uint8)
    return raw, block


@pytest.mark.parametrize("q", list(SCALE_OFFSETS), ids=lambda q: q.name)
def test_quantized_scales_are_the_only_float_fields(q):
    raw, block = _blocks(q)
    rows = raw.reshape(16, -1)  # 16 rows of 16 blocks
    assert np.isfinite(quants.dequantize(rows, q)).all()
    t = GGUFTensor(rows, q.name.lower(), (16, 16 * block))
    assert nonfinite({"w": t}) == [] and count_nonfinite(t) == 0


@pytest.mark.parametrize("q", list(SCALE_OFFSETS), ids=lambda q: q.name)
def test_one_poisoned_scale_is_found_in_its_block(q):
    for o in SCALE_OFFSETS[q]:
        for poison in (np.nan, np.inf):
            raw, block = _blocks(q)
            raw[37, o:o + 2] = np.array([poison], np.float16).view(np.uint8)
            rows = raw.reshape(16, -1)
            with np.errstate(invalid="ignore"):  # inf * 0
                values = quants.dequantize(rows, q).reshape(-1, block)
            assert not np.isfinite(values[37]).all(), (q.name, o)  # gguf agrees this is a scale
            assert np.isfinite(np.delete(values, 37, axis=0)).all()
            t = GGUFTensor(rows, q.name.lower(), (16, 16 * block))
            assert nonfinite({"w": t}) == ["w"] and count_nonfinite(t) == 1


def test_quantized_mmproj_weight_with_nan_scale_is_refused(tmp_path):
    tensors, kv, arch = clip_spec()
    w = dict((n, a) for n, a, _ in tensors)["mm.2.weight"]  # (96, 96): 3 q8_0 blocks per row
    data = quants.quantize(w, Q.Q8_0)
    data[4, 34:36] = np.array([np.nan], np.float16).view(np.uint8)  # row 4, block 1's d
    tensors = [(n, data, Q.Q8_0) if n == "mm.2.weight" else (n, a, r) for n, a, r in tensors]
    path = make(tmp_path / "q.gguf", (tensors, kv, arch))
    with pytest.raises(ValueError, match=r"1 tensors hold NaN or inf: mm.2.weight \(1 block scales\)"):
        from_gguf(path)
    assert from_gguf(path, check_finite=False).weights["mm.2.weight"].dtype == np.uint8


# -- normalisation constants in the metadata ------------------------------------------------------------------
@pytest.mark.parametrize("key,value,message", [
    (V.IMAGE_STD, [0.26, 1e-40, 0.27], "std >= 0.001"),  # denormal in f32
    (V.IMAGE_STD, [0.26, 0.0, 0.27], "std >= 0.001"),
    (V.IMAGE_STD, [0.26, -0.5, 0.27], "std >= 0.001"),
    (V.IMAGE_STD, [0.26, float("nan"), 0.27], "clip.vision.image_std' must be finite"),
    (V.IMAGE_MEAN, [0.5, float("inf"), 0.5], "clip.vision.image_mean' must be finite"),
])
def test_image_mean_and_std_must_be_sane(tmp_path, key, value, message):
    path = make(tmp_path / "n.gguf", clip_spec(**{key: value}))
    with pytest.raises(ValueError, match=message) as e:
        load_mmproj(path)
    assert str(e.value).startswith(path)
    assert "not usable by graphdsl" in describe(path)
