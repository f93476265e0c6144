"""Fuzzing the GGUF reader: truncations, bit flips and huge counts in valid files.

Every mutated file must either load or raise ValueError: no other exception, no hang (hypothesis
deadline), no allocation beyond a small bound (tracemalloc peak; NumPy reports to it).
Bounded: derandomized, 150 examples per strategy, no example database written.
"""
from __future__ import annotations

import struct
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_gguf_io import vision_kv, vit_tensors, write

from graphdsl.gguf_io import load_mmproj, load_text, read_gguf

FUZZ = settings(max_examples=150, deadline=2000, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
PEAK_BYTES = 32 << 20  # the files are ~40 KB; a count taken on trust would allocate far more


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzz")
    mmproj = write(d / "mmproj.gguf", vit_tensors(n_layer=1), vision_kv(n_layer=1, extra=[("clip.vision.feature_layer", [1], "array")]))
    tokens = [f"tok{i}" for i in range(32)]
    text = write(d / "text.gguf", [("token_embd.weight", np.zeros((32, 64), np.float16), None)],
                 [("tokenizer.ggml.tokens", tokens, "array"), ("tokenizer.ggml.model", "llama", "string"),
                  ("tokenizer.ggml.token_type", [1] * 32, "array"), ("llama.embedding_length", 64, "uint32")],
                 arch="llama")
    blobs = {}
    for name, path in (("mmproj", mmproj), ("text", text)):
        f = read_gguf(path)
        with open(path, "rb") as fh:
            blobs[name] = (fh.read(), f.data_offset)
    return d, blobs


def check(path, loader):
    """Load; anything but success or ValueError fails the test. Returns the peak traced bytes."""
    tracemalloc.start()
    try:
        loader(path)
    except ValueError as e:
        assert str(e).startswith(str(path)), e
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < PEAK_BYTES, f"peak allocation {peak} bytes"


LOADERS = {"mmproj": load_mmproj, "text": lambda p: load_text(p)}


@FUZZ
@given(kind=st.sampled_from(["mmproj", "text"]), frac=st.floats(0, 1, exclude_max=True))
def test_truncated(files, kind, frac):
    d, blobs = files
    blob, _ = blobs[kind]
    path = d / "trunc.gguf"
    path.write_bytes(blob[:int(frac * len(blob))])
    check(path, LOADERS[kind])


@FUZZ
@given(kind=st.sampled_from(["mmproj", "text"]), data=st.data())
def test_bit_flips(files, kind, data):
    d, blobs = files
    blob, header_end = blobs[kind]
    flips = data.draw(st.lists(st.tuples(st.integers(0, header_end - 1), st.integers(0, 7)), min_size=1, max_size=8))
    b = bytearray(blob)
    for pos, bit in flips:
        b[pos] ^= 1 << bit
    path = d / "flip.gguf"
    path.write_bytes(bytes(b))
    check(path, LOADERS[kind])


HUGE = st.sampled_from([2**64 - 1, 2**63, 2**62 + 7, 2**40, 2**32, 2**32 - 1, 2**31, 10**9, 65536])


@FUZZ
@given(kind=st.sampled_from(["mmproj", "text"]), data=st.data(), value=HUGE | st.integers(0, 2**64 - 1))
def test_huge_counts(files, kind, data, value):
    """A u64 written over any 8 bytes of the header: counts, lengths, dims, offsets."""
    d, blobs = files
    blob, header_end = blobs[kind]
    pos = data.draw(st.integers(8, header_end - 8))
    b = bytearray(blob)
    b[pos:pos + 8] = struct.pack("<Q", value)
    path = d / "huge.gguf"
    path.write_bytes(bytes(b))
    check(path, LOADERS[kind])


def test_header_counts_are_rejected_before_parsing(tmp_path):
    """The counts a reader would loop over are checked against the file size first."""
    path = tmp_path / "h.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 2**63, 2**63) + b"\0" * 100)
    with pytest.raises(ValueError, match="header claims 9223372036854775808 metadata entries"):
        read_gguf(path)
