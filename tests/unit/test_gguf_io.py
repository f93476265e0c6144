"""graphdsl.gguf_io: reading GGUF files as llama.cpp writes them, its quirks, and bad files.

Files here are written by hand with the gguf package (GGUFWriter) in llama.cpp's layouts, not
by graphdsl's converter, so the reader is checked against an independent writer; valid files are
also read with gguf.GGUFReader and compared.
"""
from __future__ import annotations

import struct

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf.quants import quantize

from graphdsl import gguf_io
from graphdsl.gguf_io import GGUFError, load_mmproj, load_text, read_gguf

rng = np.random.default_rng(0)
N, FF, P, IMG, NL = 64, 128, 8, 32, 3  # a tiny ViT: 4x4 patches of 8 px, 3 blocks


def write(path, tensors=(), kv=(), arch="clip", alignment=None):
    """GGUFWriter with (name, array, raw ggml type or None) tensors and (key, value, kind) kv."""
    w = gguf.GGUFWriter(str(path), arch=arch)
    if alignment:
        w.add_custom_alignment(alignment)
    for key, value, kind in kv:
        getattr(w, f"add_{kind}")(key, value)
    for name, arr, raw in tensors:
        w.add_tensor(name, arr, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


def f32(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def vision_kv(n_layer=NL, projector="mlp", extra=(), ff=FF):
    V = gguf.Keys.ClipVision
    kv = [(gguf.Keys.Clip.HAS_VISION_ENCODER, True, "bool"), (V.IMAGE_SIZE, IMG, "uint32"), (V.PATCH_SIZE, P, "uint32"),
          (V.EMBEDDING_LENGTH, N, "uint32"), (V.FEED_FORWARD_LENGTH, ff, "uint32"), (V.BLOCK_COUNT, n_layer, "uint32"),
          (V.Attention.HEAD_COUNT, 4, "uint32"), (V.Attention.LAYERNORM_EPS, 1e-5, "float32"),
          (V.IMAGE_MEAN, [0.48145466, 0.4578275, 0.40821073], "array"),
          (V.IMAGE_STD, [0.26862954, 0.26130258, 0.27577711], "array"), (V.USE_GELU, False, "bool")]
    if projector is not None:
        kv.append((gguf.Keys.Clip.PROJECTOR_TYPE, projector, "string"))
    return kv + list(extra)


def vit_tensors(n_layer=NL, swapped=False, mm=True, ff=FF):
    """A CLIP tower (+ LLaVA projector mm.0/mm.2) in llama.cpp's names; the patch embedding in f16
    as the legacy converter stores it. swapped: fc1 named ffn_down and fc2 ffn_up (legacy naming)."""
    t = [("v.patch_embd.weight", f32(N, 3, P, P).astype(np.float16), None), ("v.class_embd", f32(N), None),
         ("v.position_embd.weight", f32(17, N), None), ("v.pre_ln.weight", f32(N), None), ("v.pre_ln.bias", f32(N), None)]
    for i in range(n_layer):
        b = f"v.blk.{i}"
        t += [(f"{b}.{n}.weight", f32(N, N), None) for n in ("attn_q", "attn_k", "attn_v", "attn_out")]
        t += [(f"{b}.{n}.{s}", f32(N), None) for n in ("ln1", "ln2") for s in ("weight", "bias")]
        up, down = ("ffn_down", "ffn_up") if swapped else ("ffn_up", "ffn_down")
        t += [(f"{b}.{up}.weight", f32(ff, N), None), (f"{b}.{up}.bias", f32(ff), None),
              (f"{b}.{down}.weight", f32(N, ff), None), (f"{b}.{down}.bias", f32(N), None)]
    if mm:
        t += [("mm.0.weight", f32(96, N), None), ("mm.0.bias", f32(96), None),
              ("mm.2.weight", f32(96, 96), None), ("mm.2.bias", f32(96), None)]
    return t


# -- the reader ------------------------------------------------------------------------------------
def test_reads_what_gguf_reader_reads(tmp_path):
    data = {"f32": f32(3, 4, 5), "f16": f32(2, 32).astype(np.float16), "i32": np.arange(6, dtype=np.int32),
            "q8_0": quantize(f32(4, 64), Q.Q8_0), "q4_0": quantize(f32(2, 64), Q.Q4_0),
            "bf16": quantize(f32(3, 32), Q.BF16)}
    raw = {"q8_0": Q.Q8_0, "q4_0": Q.Q4_0, "bf16": Q.BF16}
    path = write(tmp_path / "a.gguf", [(k, v, raw.get(k)) for k, v in data.items()],
                 [("x.u32", 7, "uint32"), ("x.i64", -3, "int64"), ("x.f64", 0.25, "float64"), ("x.s", "héllo", "string"),
                  ("x.arr", [1.5, 2.5], "array"), ("x.strs", ["a", "", "ü"], "array"), ("x.b", True, "bool")])
    f = read_gguf(path)
    ref = gguf.GGUFReader(path)
    for t in ref.tensors:
        mine = f.tensors[t.name]
        assert mine.shape == tuple(int(d) for d in reversed(t.shape))  # gguf stores ne order
        assert mine.array.tobytes() == np.asarray(t.data).tobytes()
        assert f.offsets[t.name] == t.data_offset
    assert {k: f.tensors[k].dtype for k in data} == {k: k for k in data}
    assert f.tensors["bf16"].array.dtype == np.uint16 and f.tensors["bf16"].shape == (3, 32)
    assert f.tensors["q8_0"].shape == (4, 64) and f.tensors["q8_0"].array.shape == (4, 68)
    assert f.data_offset == ref.data_offset and f.alignment == 32
    for key in ("x.u32", "x.i64", "x.f64", "x.s", "x.b"):
        assert f.metadata[key] == ref.fields[key].contents()
    assert list(f.metadata["x.arr"]) == [1.5, 2.5] and f.metadata["x.strs"] == ["a", "", "ü"]
    assert f.value_types["x.i64"] == "i64" and f.value_types["x.strs"] == "arr[str]"


@pytest.mark.parametrize("alignment", [None, 64])
def test_views_are_zero_copy_read_only_and_aligned(tmp_path, alignment):
    path = write(tmp_path / "a.gguf", [("a", f32(3), None), ("b", f32(5, 7), None), ("c", quantize(f32(1, 32), Q.Q8_0), Q.Q8_0)],
                 alignment=alignment)
    f = read_gguf(path)
    for t in f.tensors.values():
        assert not t.array.flags.owndata  # a view into the mapping, no copy
        assert not t.array.flags.writeable
        assert t.aligned(alignment or 32)
    assert f.alignment == (alignment or 32)


def test_weights_bind_to_a_graph_as_they_are(tmp_path):
    """A quantized tensor's uint8 rows are what the executor's weight check accepts."""
    import graphdsl
    from graphdsl import Graph, ops
    w = f32(8, 64)
    path = write(tmp_path / "w.gguf", [("w", quantize(w, Q.Q8_0), Q.Q8_0)], arch="test")
    t = read_gguf(path)["w"]
    g = Graph()
    g.output("y", ops.mul_mat(g.input("x", (2, 64)), g.weight("w", t.shape, t.dtype)))
    x = f32(2, 64)
    y = graphdsl.compile(g, "reference", weights=gguf_io.weights_of({"w": t}))(x=x)["y"]
    np.testing.assert_allclose(y, x @ gguf.quants.dequantize(t.array, Q.Q8_0).T, rtol=1e-5, atol=1e-5)


# -- mmproj files and llama.cpp's loader quirks -------------------------------------------------------
def test_modern_llava_file(tmp_path):
    path = write(tmp_path / "m.gguf", vit_tensors(), vision_kv(extra=[("clip.vision.feature_layer", [3], "array")]))
    cfg, t = load_mmproj(path)
    v = cfg.vision
    assert (v.projector_type, v.n_layer, v.feature_layer, v.select, v.act, v.n_patches) == ("mlp", 3, (3,), "default",
                                                                                           "gelu_quick", 16)
    assert cfg.audio is None and cfg.quirks == []
    assert t["v.patch_embd.weight"].dtype == "f16" and t["v.blk.0.ffn_up.weight"].shape == (FF, N)


def test_legacy_llava_file_quirks(tmp_path):
    """Legacy converter output: no projector_type, fc1/fc2 named ffn_down/ffn_up, block_count one
    short (the dropped last block) and no feature_layer."""
    tensors = vit_tensors(n_layer=2, swapped=True)
    path = write(tmp_path / "legacy.gguf", tensors,
                 vision_kv(n_layer=2, projector=None, extra=[("clip.has_llava_projector", True, "bool")]))
    cfg, t = load_mmproj(path)
    v = cfg.vision
    assert v.projector_type == "mlp" and v.feature_layer == (2,) and v.n_layer == 2
    assert len(cfg.quirks) == 3, cfg.quirks
    assert t["v.blk.1.ffn_up.weight"].shape == (FF, N) and t["v.blk.1.ffn_down.weight"].shape == (N, FF)
    original = {n: a for n, a, _ in tensors}
    np.testing.assert_array_equal(t["v.blk.0.ffn_up.weight"].array, original["v.blk.0.ffn_down.weight"])
    np.testing.assert_array_equal(t["v.blk.0.ffn_down.bias"].array, original["v.blk.0.ffn_up.bias"])


@pytest.mark.parametrize("writer,legacy", [
    ([("graphdsl.writer", "graphdsl 0.1.0", "string")], False),  # graphdsl's convert
    ([("graphdsl.vision.act", "gelu", "string")], False),  # graphdsl files from before the marker
    ([("general.type", "mmproj", "string")], False),  # llama.cpp's convert_hf_to_gguf.py
    ([], True),  # llama.cpp's legacy scripts: fc1 named ffn_down
])
def test_square_ffn_naming_is_the_writers(tmp_path, writer, legacy):
    """n_ff == n_embd: ffn_down's input width is n_embd in both namings, so the file's writer
    decides; fc1 must end up as ffn_up either way."""
    tensors = vit_tensors(swapped=legacy, ff=N)
    kv = vision_kv(ff=N, extra=[("clip.vision.feature_layer", [3], "array"), *writer])
    cfg, t = load_mmproj(write(tmp_path / "sq.gguf", tensors, kv))
    stored = {n: a for n, a, _ in tensors}
    for i in range(NL):
        up, down = f"v.blk.{i}.ffn_up", f"v.blk.{i}.ffn_down"
        fc1, fc2 = (down, up) if legacy else (up, down)
        np.testing.assert_array_equal(t[f"v.blk.{i}.ffn_up.weight"].array, stored[fc1 + ".weight"])
        np.testing.assert_array_equal(t[f"v.blk.{i}.ffn_down.bias"].array, stored[fc2 + ".bias"])
    assert any("swapped back" in q for q in cfg.quirks) == legacy, cfg.quirks


@pytest.mark.parametrize("projector,key,value,field,expect", [
    ("gemma3", None, None, "n_merge", 4),  # clip.cpp's default for gemma3
    ("gemma3", "clip.vision.projector.scale_factor", 2, "n_merge", 2),
    ("qwen2vl_merger", None, None, "n_merge", 2),
    ("mlp", "clip.use_silu", True, "act", "silu"),
    ("mlp", "graphdsl.vision.act", "gelu_erf", "act", "gelu_erf"),
    ("idefics3", None, None, "select", "full"),
])
def test_per_projector_defaults(tmp_path, projector, key, value, field, expect):
    kind = {int: "uint32", bool: "bool", str: "string"}
    extra = [(key, value, kind[type(value)])] if key else []
    tensors = vit_tensors(mm=projector == "mlp")
    if projector == "gemma3":
        tensors = [x for x in tensors if x[0] != "v.class_embd"]
        tensors[1] = ("v.position_embd.weight", f32(16, N), None)
        tensors += [("mm.input_projection.weight", f32(N, 96), None), ("mm.soft_emb_norm.weight", f32(N), None)]
    if projector == "idefics3":
        tensors += [("mm.model.fc.weight", f32(96, 4 * N), None)]
    cfg, _ = load_mmproj(write(tmp_path / "p.gguf", tensors, vision_kv(projector=projector, extra=extra)))
    assert getattr(cfg.vision, field) == expect


def audio_file(path, projector="ultravox", stack=True, extra=()):
    A = gguf.Keys.ClipAudio
    kv = [(gguf.Keys.Clip.HAS_AUDIO_ENCODER, True, "bool"), (gguf.Keys.Clip.PROJECTOR_TYPE, projector, "string"),
          (A.NUM_MEL_BINS, 16, "uint32"), (A.EMBEDDING_LENGTH, N, "uint32"), (A.FEED_FORWARD_LENGTH, FF, "uint32"),
          (A.BLOCK_COUNT, 1, "uint32"), (A.Attention.HEAD_COUNT, 4, "uint32"), (A.Attention.LAYERNORM_EPS, 1e-5, "float32")]
    kv += [(A.Projector.STACK_FACTOR, 2, "uint32")] if stack else []
    t = [("a.conv1d.1.weight", f32(N, 16, 3), None), ("a.conv1d.1.bias", f32(N, 1), None),
         ("a.conv1d.2.weight", f32(N, N, 3), None), ("a.conv1d.2.bias", f32(N, 1), None),
         ("a.position_embd.weight", f32(8, N), None)]
    t += [(f"a.blk.0.{n}.weight", f32(N, N), None) for n in ("attn_q", "attn_k", "attn_v", "attn_out")]
    t += [(f"a.blk.0.{n}.weight", f32(N), None) for n in ("ln1", "ln2")]
    t += [("a.blk.0.ffn_up.weight", f32(FF, N), None), ("a.blk.0.ffn_down.weight", f32(N, FF), None)]
    t += [("mm.a.mlp.1.weight", f32(96, 2 * N), None), ("mm.a.mlp.2.weight", f32(96, 48), None),
          ("mm.a.fc.weight", f32(96, N), None)]
    return write(path, t, kv + list(extra))


def test_audio_file_and_whisper_defaults(tmp_path):
    cfg, _ = load_mmproj(audio_file(tmp_path / "a.gguf", extra=[("clip.use_gelu", True, "bool")]))
    a = cfg.audio
    assert (a.projector_type, a.n_mel, a.stack_factor, a.act, a.sample_rate, a.hop_length) == ("ultravox", 16, 2,
                                                                                                 "gelu_erf", 16000, 160)
    cfg, _ = load_mmproj(audio_file(tmp_path / "o.gguf", projector="qwen2.5o", stack=False))
    assert cfg.audio.projector_type == "qwen2a" and cfg.quirks
    with pytest.raises(ValueError, match="missing metadata key 'clip.audio.projector.stack_factor'"):
        load_mmproj(audio_file(tmp_path / "u.gguf", stack=False))


# -- text models ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("qtype", [Q.F16, Q.Q8_0, Q.Q4_K])
def test_text_token_embd_and_vocab(tmp_path, qtype):
    tokens = ["<unk>", "<s>", "</s>"] + [f"t{i}" for i in range(61)]
    emb = f32(64, 256)
    data = emb.astype(np.float16) if qtype == Q.F16 else _ggml_quantize(emb, qtype)
    kv = [("llama.embedding_length", 256, "uint32"), ("tokenizer.ggml.model", "llama", "string"),
          ("tokenizer.ggml.tokens", tokens, "array"), ("tokenizer.ggml.scores", [0.0] * 64, "array"),
          ("tokenizer.ggml.bos_token_id", 1, "uint32"), ("tokenizer.ggml.eos_token_id", 2, "uint32"),
          ("tokenizer.ggml.padding_token_id", 999, "uint32")]  # out of range: ignored, as llama.cpp does
    path = write(tmp_path / "t.gguf", [("token_embd.weight", data, None if qtype == Q.F16 else qtype)], kv, arch="llama")
    info, t = load_text(path)
    assert (info.architecture, info.n_vocab, info.n_embd, info.tokenizer_model) == ("llama", 64, 256, "llama")
    assert info.tokens == tokens and info.special == {"bos": 1, "eos": 2} and info.scores.shape == (64,)
    assert t.shape == (64, 256) and t.dtype == Q(qtype).name.lower()
    if qtype != Q.F16:
        np.testing.assert_array_equal(gguf.quants.dequantize(t.array, qtype), gguf.quants.dequantize(data, qtype))


def _ggml_quantize(x, qtype):
    from graphdsl import _ggml
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    out = np.empty((x.shape[0], x.shape[1] // block * size), np.uint8)
    _ggml.quantize(int(qtype), np.ascontiguousarray(x), out)
    return out


def test_text_rows_must_match_vocab(tmp_path):
    path = write(tmp_path / "t.gguf", [("token_embd.weight", f32(5, 8), None)],
                 [("tokenizer.ggml.tokens", ["a", "b"], "array")], arch="llama")
    with pytest.raises(ValueError, match=r"t.gguf: token_embd.weight \(5, 8\) disagrees with the metadata"):
        load_text(path)


# -- bad files --------------------------------------------------------------------------------------------
def header(version=3, n_tensors=0, n_kv=0, magic=b"GGUF"):
    return magic + struct.pack("<IQQ", version, n_tensors, n_kv)


def kv_str(key, value):
    k, v = key.encode(), value.encode()
    return struct.pack("<Q", len(k)) + k + struct.pack("<IQ", 8, len(v)) + v


def tinfo(name, ne, qtype=0, offset=0):
    n = name.encode()
    return struct.pack("<Q", len(n)) + n + struct.pack("<I", len(ne)) + struct.pack(f"<{len(ne)}Q", *ne) \
        + struct.pack("<IQ", qtype, offset)


def one_tensor(ne=(4,), qtype=0, offset=0, data=16, name="t"):
    head = header(n_tensors=1, n_kv=1) + kv_str("general.architecture", "x") + tinfo(name, ne, qtype, offset)
    return head + b"\0" * (-len(head) % 32) + b"\1" * data


BAD = {
    "empty": (b"", "too short for a GGUF header"),
    "short": (b"GGUF\3\0", "too short for a GGUF header"),
    "magic": (b"GGML" + header()[4:], "wrong magic"),
    "version 1": (header(version=1), "unknown GGUF version 1"),
    "version 99": (header(version=99), "unknown GGUF version 99"),
    "big-endian": (b"GGUF" + struct.pack(">IQQ", 3, 0, 0), "big-endian"),
    "huge kv count": (header(n_kv=2**62), "more than 0 bytes can hold"),
    "huge tensor count": (header(n_tensors=2**40) + b"\0" * 64, "header claims"),
    "truncated kv": (header(n_kv=1) + kv_str("general.architecture", "clip")[:-2], "truncated"),
    "huge string": (header(n_kv=1) + struct.pack("<Q", 2**60) + b"abc" * 8, "truncated: key of metadata entry 0"),
    "huge array": (header(n_kv=1) + struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 0, 2**61), "truncated"),
    "array of arrays": (header(n_kv=1) + struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 9, 1) + b"\0" * 16,
                        "element type 9, which a GGUF array cannot hold"),
    "bad value type": (header(n_kv=1) + struct.pack("<Q", 1) + b"k" + struct.pack("<I", 77) + b"\0" * 8,
                       "unknown value type 77"),
    "duplicate key": (header(n_kv=2) + kv_str("a", "x") + kv_str("a", "y"), "duplicate metadata key 'a'"),
    "data past end": (one_tensor(ne=(4, 4), data=16), "runs past the end of the file"),
    "truncated data": (one_tensor(ne=(4,), data=10), "runs past the end of the file"),
    "5 dims": (one_tensor(ne=(1, 1, 1, 1, 1)), "has 5 dims"),
    "0 dims": (one_tensor(ne=()), "has 0 dims"),
    "unknown type": (one_tensor(qtype=1234), "unknown ggml type 1234"),
    "partial block": (one_tensor(ne=(33,), qtype=8, data=68), r"rows of 33 are not whole blocks of 32"),
    "misaligned offset": (one_tensor(offset=4, data=64), "not a multiple of the alignment 32"),
    "huge dims": (one_tensor(ne=(2**62, 2**62)), "more than the whole file"),
    "long name": (one_tensor(name="x" * 64), "longer than ggml's 63 bytes"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_files_raise_valueerror_naming_the_file(tmp_path, case):
    blob, message = BAD[case]
    path = tmp_path / "bad.gguf"
    path.write_bytes(blob)
    with pytest.raises(GGUFError, match=message) as e:
        read_gguf(path)
    assert str(e.value).startswith(str(path)) and isinstance(e.value, ValueError)


def test_truncation_anywhere_in_a_real_file(tmp_path):
    path = write(tmp_path / "ok.gguf", vit_tensors(n_layer=1), vision_kv(n_layer=1))
    with open(path, "rb") as fh:
        blob = fh.read()
    for cut in sorted(set(np.linspace(0, len(blob) - 1, 60).astype(int))):
        (tmp_path / "cut.gguf").write_bytes(blob[:cut])
        with pytest.raises(GGUFError, match=r"cut.gguf: .*(too short|truncated|past the end|more than the whole file)"):
            read_gguf(tmp_path / "cut.gguf")


def test_duplicate_tensor(tmp_path):
    head = header(n_tensors=2, n_kv=0) + tinfo("t", (4,)) + tinfo("t", (4,), offset=32)
    (tmp_path / "d.gguf").write_bytes(head + b"\0" * (-len(head) % 32) + b"\0" * 64)
    with pytest.raises(GGUFError, match="duplicate tensor 't'"):
        read_gguf(tmp_path / "d.gguf")


MMPROJ_BAD = {
    "architecture": (dict(arch="llama"), "general.architecture is 'llama'"),
    "no encoder": (dict(drop_key=gguf.Keys.Clip.HAS_VISION_ENCODER), "neither clip.has_vision_encoder"),
    "unknown projector": (dict(projector="warp9"), "unknown vision projector type 'warp9'"),
    "missing tensor": (dict(drop_tensor="v.blk.2.attn_k.weight"), r"missing 1: v.blk.2.attn_k.weight"),
    "position rows": (dict(replace=("v.position_embd.weight", f32(20, N))), r"v.position_embd.weight \(20, 64\) != \(17, 64\)"),
    "ffn width": (dict(replace=("v.blk.0.ffn_up.weight", f32(FF + 32, N))), r"v.blk.0.ffn_up.weight \(160, 64\) != \(128, 64\)"),
    "missing key": (dict(drop_key=gguf.Keys.ClipVision.IMAGE_SIZE), "missing metadata key 'clip.vision.image_size'"),
    "key type": (dict(set_key=(gguf.Keys.ClipVision.PATCH_SIZE, "8", "string")), "clip.vision.patch_size' is str"),
    "feature layer": (dict(set_key=("clip.vision.feature_layer", [9], "array")), "must lie in 0..block_count"),
    "heads": (dict(set_key=(gguf.Keys.ClipVision.Attention.HEAD_COUNT, 5, "uint32")), "multiple of head_count 5"),
    "gelu and silu": (dict(set_key=("clip.use_silu", True, "bool"), also=("clip.use_gelu", True, "bool")),
                      "both clip.use_gelu and clip.use_silu"),
    # a ggml type graphdsl does not run (q2_k): 84 bytes = one block of 256
    "unsupported type": (dict(replace=("v.blk.0.attn_q.weight", np.zeros((N, 84), np.uint8)), raw=Q.Q2_K),
                         r"types graphdsl cannot run: v.blk.0.attn_q.weight \(q2_k\)"),
}


@pytest.mark.parametrize("case", list(MMPROJ_BAD))
def test_bad_mmproj_files(tmp_path, case):
    spec, message = MMPROJ_BAD[case]
    tensors = [t for t in vit_tensors() if t[0] != spec.get("drop_tensor")]
    if "replace" in spec:
        name, arr = spec["replace"]
        tensors = [(n, arr, spec.get("raw")) if n == name else (n, a, r) for n, a, r in tensors]
    kv = [k for k in vision_kv(projector=spec.get("projector", "mlp"))
          if k[0] != spec.get("drop_key") and k[0] != spec.get("set_key", ("",))[0]]
    kv += [spec[k] for k in ("set_key", "also") if k in spec]
    path = write(tmp_path / "bad.gguf", tensors, kv, arch=spec.get("arch", "clip"))
    with pytest.raises(ValueError, match=message) as e:
        load_mmproj(path)
    assert str(e.value).startswith(path)


@pytest.mark.parametrize("drop,replace,message", [
    ("mm.0.weight", None, r"tensors do not fit the ClipVision the metadata describes: missing \['mm.0.weight'"),
    (None, ("mm.2.weight", (96, 99)), r"mis-shaped \['mm.2.weight \(96, 99\) != \(96, 96\)'\]"),
])
def test_projector_tensors_are_checked_by_the_arch_that_builds_them(tmp_path, drop, replace, message):
    """A projector's tensors belong to its architecture (graphdsl.models' registry): from_gguf and
    info check each one the block declares, with the shape the metadata implies."""
    from graphdsl.convert.info import describe
    from graphdsl.models import from_gguf
    tensors = [t for t in vit_tensors() if t[0] != drop]
    if replace:
        tensors = [(n, f32(*replace[1]), r) if n == replace[0] else (n, a, r) for n, a, r in tensors]
    path = write(tmp_path / "p.gguf", tensors, vision_kv(projector="mlp"))
    load_mmproj(path)  # the tower is fine
    with pytest.raises(ValueError, match=message):
        from_gguf(path)
    assert "graphdsl.models: tensors do not fit" in describe(path)
