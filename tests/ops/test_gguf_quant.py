"""Quantized weights from a GGUF file through graphdsl ops on the ggml CPU backend.

get_rows and mul_mat on q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k tables read back from a
file, against the gguf package's own dequantization (an independent implementation):
- get_rows dequantizes rows with the same formulas, so it must match exactly;
- mul_mat also quantizes the activations (ggml's vec_dot types q8_0 / q8_1 / q8_K), so it is held
  to a relative L2 error of 1e-2 against x @ dequantize(w).T.
"""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize

import graphdsl
from graphdsl import Graph, ops
from graphdsl.convert.writer import encode, write_gguf
from graphdsl.gguf_io import read_gguf

TYPES = ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k", "q5_k", "q6_k"]
ROWS, K = 24, 512  # K: two super-blocks of 256 for the k-quants


@pytest.fixture(scope="module")
def table_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((ROWS, K)).astype(np.float32)
    path = str(tmp_path_factory.mktemp("q") / "quant.gguf")
    write_gguf(path, "test", [], {t: (w, t) for t in TYPES})
    return read_gguf(path), w


def deq(t):
    return dequantize(t.array, GGMLQuantizationType[t.dtype.upper()]).reshape(t.shape)


@pytest.mark.parametrize("qtype", TYPES)
def test_file_holds_ggml_blocks(table_file, qtype):
    f, w = table_file
    t = f.tensors[qtype]
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[qtype.upper()]]
    assert t.shape == (ROWS, K) and t.array.shape == (ROWS, K // block * size) and t.array.dtype == np.uint8
    np.testing.assert_array_equal(t.array, encode(w, qtype))  # written = ggml's quantizer output
    assert np.linalg.norm(deq(t) - w) / np.linalg.norm(w) < 0.2  # and it is w, coarsely


@pytest.mark.parametrize("qtype", TYPES)
def test_get_rows(table_file, qtype):
    f, _ = table_file
    t = f.tensors[qtype]
    g = Graph("rows")
    ids = g.input("ids", (7,), "i32")
    g.output("y", ops.get_rows(g.weight("table", t.shape, t.dtype), ids))
    run = graphdsl.compile(g, "cpu", n_threads=2, weights={"table": t.array})
    pick = np.array([0, 5, 23, 5, 1, 17, 9], np.int32)
    np.testing.assert_array_equal(run(ids=pick)["y"], deq(t)[pick])  # same formula, exactly


@pytest.mark.parametrize("qtype", TYPES)
def test_mul_mat(table_file, qtype):
    f, _ = table_file
    t = f.tensors[qtype]
    g = Graph("mm")
    x = g.input("x", (5, K))
    g.output("y", ops.mul_mat(x, g.weight("w", t.shape, t.dtype)))
    run = graphdsl.compile(g, "cpu", n_threads=2, weights={"w": t.array})
    xv = np.random.default_rng(1).standard_normal((5, K)).astype(np.float32)
    y, ref = run(x=xv)["y"], xv.astype(np.float64) @ deq(t).T.astype(np.float64)
    assert np.linalg.norm(y - ref) / np.linalg.norm(ref) < 1e-2
