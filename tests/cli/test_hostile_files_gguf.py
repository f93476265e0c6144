"""Hostile GGUF metadata: every count a loader trusts is bounded by what the file holds.

A valid mmproj with one u32 edited (`clip.vision.block_count = 0xFFFFFFFF`) used to make
`from_gguf` / `graphdsl info` loop for ever while memory grew. Here every integer metadata value of
complete, loadable files (CLIP + LLaVA, SigLIP + Gemma 3, Whisper + Voxtral, a text model) is
overwritten with 0, 1, 2**31 + 1 and 0xFFFFFFFF, and each mutant goes through `from_gguf` and
`describe` in a child process with a memory limit and a timeout: it must load or raise ValueError
naming the file, each within seconds. The unmutated files load (negative control).
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

import gguf
import numpy as np
import pytest
from test_gguf_io import write

from graphdsl.convert.info import describe
from graphdsl.gguf_io import load_mmproj
from graphdsl.models import clip, from_gguf, siglip, text, whisper_enc

V, A = gguf.Keys.ClipVision, gguf.Keys.ClipAudio
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]


def _tensors(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [(n, (0.1 * rng.standard_normal(s)).astype(np.float32), None) for n, s in shapes.items()]


def _vision_kv(projector, n_layer=2, extra=()):
    return [(gguf.Keys.Clip.HAS_VISION_ENCODER, True, "bool"), (gguf.Keys.Clip.PROJECTOR_TYPE, projector, "string"),
            (V.IMAGE_SIZE, 32, "uint32"), (V.PATCH_SIZE, 8, "uint32"), (V.EMBEDDING_LENGTH, 64, "uint32"),
            (V.FEED_FORWARD_LENGTH, 128, "uint32"), (V.BLOCK_COUNT, n_layer, "uint32"),
            (V.Attention.HEAD_COUNT, 4, "uint32"), (V.Attention.LAYERNORM_EPS, 1e-5, "float32"),
            (V.IMAGE_MEAN, CLIP_MEAN, "array"), (V.IMAGE_STD, CLIP_STD, "array"),
            (V.PROJECTION_DIM, 96, "uint32"), *extra]


def _with(kv, changes):
    """kv with values replaced (key -> value) and new keys appended (kind from the value)."""
    kv = [(k, changes.pop(k), kind) if k in changes else (k, v, kind) for k, v, kind in kv]
    kinds = {list: "array", str: "string", float: "float32", bool: "bool", int: "uint32"}
    return kv + [(k, v, kinds[type(v)]) for k, v in changes.items()]


def clip_spec(tensors=None, **kv):
    """A complete CLIP + LLaVA mmproj (32 px / 8, width 64, 2 blocks, projector -> 96):
    (tensors, kv, arch) for `write`; tensors / kv replace entries by name / key."""
    shapes = clip.weight_shapes(clip.ClipConfig(image_size=32, patch_size=8, n_embd=64, n_ff=128, n_head=4, n_layer=2,
                                                feature_layer=(2,), n_mm_embd=96))
    t = [(n, (tensors or {}).get(n, a), r) for n, a, r in _tensors(shapes)]
    return t, _with(_vision_kv("mlp", extra=[("clip.vision.feature_layer", [2], "array")]), kv), "clip"


def siglip_spec(**kv):
    shapes = siglip.weight_shapes(siglip.SiglipConfig(image_size=32, patch_size=8, n_embd=64, n_ff=128, n_head=4,
                                                      n_layer=2, mm_tokens_per_image=4, n_mm_embd=96))
    return _tensors(shapes, 1), _with(_vision_kv("gemma3", extra=[(V.Projector.SCALE_FACTOR, 2, "uint32")]), kv), "clip"


def whisper_spec(**kv):
    shapes = whisper_enc.weight_shapes(whisper_enc.WhisperEncConfig(n_mel=16, n_ctx=16, n_embd=64, n_head=4, n_layer=2,
                                                                    n_ff=128, stack_factor=4, n_mm_embd=96))
    base = [(gguf.Keys.Clip.HAS_AUDIO_ENCODER, True, "bool"), (gguf.Keys.Clip.PROJECTOR_TYPE, "voxtral", "string"),
            (A.NUM_MEL_BINS, 16, "uint32"), (A.EMBEDDING_LENGTH, 64, "uint32"), (A.FEED_FORWARD_LENGTH, 128, "uint32"),
            (A.BLOCK_COUNT, 2, "uint32"), (A.Attention.HEAD_COUNT, 4, "uint32"),
            (A.Attention.LAYERNORM_EPS, 1e-5, "float32"), (A.Projector.STACK_FACTOR, 4, "uint32"),
            (A.PROJECTION_DIM, 96, "uint32")]
    return _tensors(shapes, 2), _with(base, kv), "clip"


def text_spec(table=None, **kv):
    """A BERT-style text GGUF: token table, positions, token types and the embedding LayerNorm."""
    rng = np.random.default_rng(3)
    tables = {"token_embd.weight": table if table is not None else rng.standard_normal((32, 64)).astype(np.float32),
              "position_embd.weight": rng.standard_normal((16, 64)).astype(np.float32),
              "token_types.weight": rng.standard_normal((2, 64)).astype(np.float32),
              "token_embd_norm.weight": np.ones(64, np.float32), "token_embd_norm.bias": np.zeros(64, np.float32)}
    base = [("tokenizer.ggml.tokens", [f"t{i}" for i in range(32)], "array"), ("tokenizer.ggml.model", "bert", "string"),
            ("tokenizer.ggml.token_type", [1] * 32, "array"), ("bert.embedding_length", 64, "uint32"),
            ("bert.attention.layer_norm_epsilon", 1e-12, "float32"), ("tokenizer.ggml.bos_token_id", 2, "uint32"),
            ("tokenizer.ggml.seperator_token_id", 3, "uint32")]
    return [(n, a, None) for n, a in tables.items()], _with(base, kv), "bert"


def make(path, spec):
    tensors, kv, arch = spec
    return write(path, tensors, kv, arch=arch)


FAMILIES = {"clip": (clip_spec, "mmproj"), "siglip": (siglip_spec, "mmproj"), "whisper": (whisper_spec, "mmproj"),
            "text": (text_spec, "text")}

# Runs in a child: a hang is a timeout and runaway memory a MemoryError, neither a dead test runner.
CHILD = textwrap.dedent("""
    import json, resource, sys, time
    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
    from graphdsl.convert.info import describe
    from graphdsl.models import from_gguf, text
    out = []
    for path, kind in json.loads(sys.stdin.read()):
        t0 = time.perf_counter()
        for step in ("load", "describe"):
            try:
                if step == "load":
                    (from_gguf if kind == "mmproj" else text.from_gguf)(path)
                    res = "ok"
                else:  # the report's last part: what the file is, or why it is not usable
                    res = "ok: " + describe(path).split("model: ", 1)[1]
            except ValueError as e:
                res = "ValueError: " + str(e)
            except BaseException as e:
                res = type(e).__name__ + ": " + str(e)[:300]
            out.append([path, step, res, time.perf_counter() - t0])
    print(json.dumps(out))
""")


def run_child(cases, timeout):
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", CHILD], input=json.dumps(cases), capture_output=True, text=True,
                       timeout=timeout)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout), time.perf_counter() - t0


def test_complete_files_load(tmp_path):
    """Negative control: every unmutated family loads through from_gguf and describe calls it usable."""
    for name, (spec, kind) in FAMILIES.items():
        path = make(tmp_path / f"{name}.gguf", spec())
        m = from_gguf(path) if kind == "mmproj" else text.from_gguf(path)
        assert m.weights and "not usable" not in describe(path), name


def test_block_count_edited_in_place_fails_fast(tmp_path):
    """The issue's 4-byte edit of a valid file: a ValueError naming the file and the key, in well under a second."""
    blob = bytearray(open(make(tmp_path / "ok.gguf", clip_spec()), "rb").read())
    key = V.BLOCK_COUNT.encode()
    at = blob.index(key) + len(key)
    assert blob[at:at + 8] == bytes([4, 0, 0, 0, 2, 0, 0, 0])  # type u32, value 2
    blob[at + 4:at + 8] = b"\xff\xff\xff\xff"
    bad = tmp_path / "bc.gguf"
    bad.write_bytes(bytes(blob))
    out, _ = run_child([[str(bad), "mmproj"]], timeout=60)
    (_, _, load, t_load), (_, _, info, _) = out
    assert load.startswith(f"ValueError: {bad}: clip.vision.block_count is 4294967295, but the file holds "
                           "tensors for 2 blocks"), load
    assert t_load < 2.0
    assert "not usable by graphdsl" in info and "block_count is 4294967295" in info


MUTANT_VALUES = (0, 1, 2**31 + 1, 0xFFFFFFFF)


def _integer_entries(kv):
    return [i for i, (_, v, kind) in enumerate(kv) if kind.startswith(("uint", "int"))
            or kind == "array" and isinstance(v[0], int) and not isinstance(v[0], bool)]


def test_every_integer_metadata_value_is_bounded(tmp_path):
    """Each integer value (scalars; arrays filled with it) of every family x 4 values: load or ValueError, fast."""
    cases = []
    for name, (spec, kind) in FAMILIES.items():
        tensors, kv, arch = spec()
        for i in _integer_entries(kv):
            k, v, kv_kind = kv[i]
            for value in MUTANT_VALUES:
                # GGUFWriter writes int arrays as i32: the same 4 bytes, read as signed
                as_i32 = int(np.uint32(value).view(np.int32))
                new = (k, [as_i32] * len(v), kv_kind) if kv_kind == "array" else (k, value, "uint32")
                path = make(tmp_path / f"{name}-{i}-{value}.gguf", (tensors, kv[:i] + [new] + kv[i + 1:], arch))
                cases.append([path, kind])
    assert len(cases) >= 100, len(cases)
    out, wall = run_child(cases, timeout=300)
    assert len(out) == 2 * len(cases)
    bad = [o for o in out if not o[2].startswith(("ok", f"ValueError: {o[0]}: "))]
    assert not bad, bad[:5]
    slow = [o for o in out if o[3] > 5.0]
    assert not slow, slow[:5]
    loads = {o[0]: o[2] for o in out if o[1] == "load"}
    assert sum(r != "ok" for r in loads.values()) > len(cases) // 2  # most of these values are nonsense here


@pytest.mark.parametrize("key,value,message", [
    ("clip.vision.feature_layer", [1, 1, 1, 1], "lists 4 layers; a 2-block tower has 3 hidden states"),
    (V.Projector.SCALE_FACTOR, 5, "patch merge factor 5"),
    (V.EMBEDDING_LENGTH, 1 << 20, "embedding_length is 1048576, wider than any tensor"),
    (V.FEED_FORWARD_LENGTH, 1 << 30, "feed_forward_length is 1073741824, wider than any tensor"),
])
def test_bounded_counts_name_the_key(tmp_path, key, value, message):
    path = make(tmp_path / "x.gguf", clip_spec(**{key: value}))
    with pytest.raises(ValueError, match=message) as e:
        load_mmproj(path)
    assert str(e.value).startswith(path)


def test_fewer_blocks_than_stored_is_a_quirk_not_a_secret(tmp_path):
    """block_count below the stored blocks runs only block_count blocks (as llama.cpp does), and says so."""
    cfg, _ = load_mmproj(make(tmp_path / "s.gguf", siglip_spec(**{V.BLOCK_COUNT: 1})))
    assert cfg.vision.n_layer == 1
    assert "clip.vision.block_count is 1 but the file stores 2 blocks: the rest are ignored" in cfg.quirks
    assert not load_mmproj(make(tmp_path / "ok.gguf", siglip_spec()))[0].quirks


# -- the embedded tokenizer -------------------------------------------------------------------------------
def _wordpiece_json(n=32):
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordPiece
    tok = Tokenizer(WordPiece({f"t{i}": i for i in range(n)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok.to_str()


@pytest.mark.parametrize("bad,reason", [(_wordpiece_json()[:-40], "EOF while parsing"),
                                        ('{"version": "1.0"}', "Model missing"), ("\x00garbage", "expected value")])
def test_corrupt_embedded_tokenizer_names_file_and_key(tmp_path, bad, reason):
    """tokenizers' bare Exception becomes a ValueError naming the file and the key; info says so."""
    path = make(tmp_path / "t.gguf", text_spec(**{"tokenizer.huggingface.json": bad}))
    m = text.from_gguf(path)  # the weights are fine: loading them does not need the tokenizer
    with pytest.raises(ValueError, match=f"^{path}: tokenizer.huggingface.json: not a valid tokenizer.json: .*{reason}"):
        text.tokenizer_of(m.info)
    report = describe(path)
    assert f"tokenizer: not usable: {path}: tokenizer.huggingface.json: not a valid tokenizer.json" in report


def test_valid_embedded_tokenizer_is_reported_usable(tmp_path):
    """Negative control for the above: the same key holding a valid tokenizer.json."""
    path = make(tmp_path / "t.gguf", text_spec(**{"tokenizer.huggingface.json": _wordpiece_json()}))
    assert text.tokenizer_of(text.from_gguf(path).info).encode("t3 t5").tolist() == [3, 5]
    assert "tokenizer: embedded tokenizer.huggingface.json, 32 tokens" in describe(path)
    no_vocab = make(tmp_path / "l.gguf", text_spec(**{"tokenizer.ggml.model": "llama"}))
    assert "tokenizer: not usable: [text] a 'llama' vocabulary without an embedded" in describe(no_vocab)
