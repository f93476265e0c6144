"""The oneDNN matmul backend (cpp/onednn_backend.cpp) against ggml's CPU backend and the rounding
that precision="f32" promises (tests/ops/test_precision_weights.py).

With f32 weights both backends compute f32 dot products and differ only in summation order; with
bf16 weights both round the activations to bf16 (nearest even) and accumulate in f32. So each
product must equal the NumPy emulation of that rounding (float64) within 1e-6 relative L2, the
bound test_precision_weights holds ggml to; oneDNN sums along K in order where ggml sums in SIMD
lanes, so its f32 error is a few times ggml's (2.8e-7 vs 8e-8 at K = 256) and well inside it.
Negative controls: the same check refuses a result with the activations left unrounded, and one
with the weights transposed.
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest

import graphdsl
from graphdsl import Graph, ops
from graphdsl import dtypes as dt
from graphdsl.backends import onednn
from graphdsl.backends.devices import plan_devices, resolve_devices
from isa import onednn_kernel
from target import BACKEND

pytestmark = [
    pytest.mark.skipif(BACKEND != "cpu", reason="oneDNN pairs with ggml's CPU backend"),
    pytest.mark.skipif(not onednn.load(), reason=f"oneDNN backend: {onednn.status()}"),
]

BOUND = 1e-6


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _product(wtype, x_shape, n_out, backend="cpu", seed=3, n_threads=2):
    r = np.random.default_rng(seed)
    k = x_shape[-1]
    g = Graph("proj")
    x = g.input("x", x_shape)
    with g.weight_types({"w": wtype}):
        g.output("y", ops.mul_mat(x, g.weight("w", (n_out, k))))
    xv = r.standard_normal(x_shape).astype(np.float32)
    w = (r.standard_normal((n_out, k)) / 16).astype(np.float32)
    run = graphdsl.compile(g, backend, n_threads=n_threads, precision="f32", weights={"w": w})
    y = run(x=xv)["y"]
    where = {b for name, b in run.placement()["nodes"].items() if name == g.outputs["y"].name}
    ws = dt.bf16_to_f32(dt.f32_to_bf16(w)) if wtype == "bf16" else w  # the weights as stored
    return y, xv, ws, where


def _emulate(xv, ws, wtype):
    xr = dt.bf16_to_f32(dt.f32_to_bf16(xv)) if wtype == "bf16" else xv
    return xr.astype(np.float64) @ ws.astype(np.float64).T


@onednn_kernel("f32")
def test_cpu_means_onednn_then_ggml_and_ggml_cpu_opts_out():
    assert resolve_devices("cpu") == [onednn.NAME, "CPU"]
    assert resolve_devices("ggml-cpu") == ["CPU"]
    dev = next(d for d in graphdsl.devices() if d["name"] == onednn.NAME)
    assert dev["features"]["F32"] == "1"


def test_the_device_plan_makes_onednn_and_the_cpu_one_host_device():
    pair, alone = plan_devices("cpu"), plan_devices("ggml-cpu")
    assert (pair.name, pair.on_host, pair.cpu_partner, pair.home) == ("cpu", True, True, {0, 1})
    assert (alone.name, alone.on_host, alone.cpu_partner, alone.home) == ("cpu", True, False, {0})
    g = Graph("p")
    g.output("y", ops.mul_mat(g.input("x", (64, 256)), g.weight("w", (384, 256))))
    exe = graphdsl.compile(g, "cpu", weights={"w": np.ones((384, 256), np.float32)}, strict=True)
    exe(x=np.ones((64, 256), np.float32))  # products on oneDNN, the rest on its CPU partner: strict passes
    assert exe.backend == "cpu" and exe.plan == pair and not exe.placement()["fallbacks"]
    # negative control: a plan that called the CPU a fallback would refuse the same placement
    exe = graphdsl.compile(g, "cpu", weights={"w": np.ones((384, 256), np.float32)}, strict=True)
    exe.plan = dataclasses.replace(pair, cpu_partner=False)
    with pytest.raises(ValueError, match="strict placement"):
        exe(x=np.ones((64, 256), np.float32))


@pytest.mark.parametrize("wtype", [pytest.param("f32", marks=onednn_kernel("f32")),
                                   pytest.param("bf16", marks=onednn_kernel("bf16"))])
@pytest.mark.parametrize("x_shape", [(64, 256), (3, 40, 96)], ids=["2d", "batched"])
def test_products_match_the_promised_rounding(wtype, x_shape):
    y, xv, ws, where = _product(wtype, x_shape, 384)
    assert where == {onednn.NAME}, where
    want = _emulate(xv, ws, wtype)
    assert _rel(y, want) <= BOUND
    # the same product on ggml's kernels meets the same bound, and the two agree
    y_ggml, _, _, where_ggml = _product(wtype, x_shape, 384, backend="ggml-cpu")
    assert where_ggml == {"CPU"}
    assert _rel(y_ggml, want) <= BOUND
    assert _rel(y, y_ggml) <= 2 * BOUND


def test_negative_controls_the_check_refuses_wrong_products():
    y, xv, ws, _ = _product("bf16", (64, 256), 384)
    unrounded = xv.astype(np.float64) @ ws.astype(np.float64).T  # activations not rounded to bf16
    assert _rel(y, unrounded) > 50 * BOUND
    y32, xv32, w32, _ = _product("f32", (64, 256), 256)
    assert _rel(y32, xv32.astype(np.float64) @ w32.astype(np.float64)) > 0.5  # weights transposed


@pytest.mark.parametrize("wtype,x_shape,n_out", [
    ("f16", (64, 256), 384),   # no oneDNN kernel for f16 without AVX512_FP16: ggml keeps it
    ("f32", (8, 256), 384),    # too few rows to pay for a split
    ("f32", (64, 16), 384),    # too short a dot product
])
def test_what_onednn_does_not_claim_stays_on_ggml(wtype, x_shape, n_out):
    y, xv, ws, where = _product(wtype, x_shape, n_out)
    assert where == {"CPU"}, where
    if wtype == "f32":
        assert _rel(y, _emulate(xv, ws, wtype)) <= BOUND


def test_thread_counts_agree():
    a, *_ = _product("f32", (200, 512), 512, n_threads=1)
    b, *_ = _product("f32", (200, 512), 512, n_threads=2)
    assert _rel(a, b) <= BOUND


@onednn_kernel("f32")
def test_mmapped_gguf_weights_are_used_in_place(tmp_path):
    from graphdsl.convert.writer import write_gguf
    from graphdsl.gguf_io import read_gguf, weights_of
    r = np.random.default_rng(5)
    w = (r.standard_normal((128, 256)) / 16).astype(np.float32)
    path = str(tmp_path / "w.gguf")
    write_gguf(path, "clip", [], {"w": (w, "f32")})
    g = Graph("proj")
    g.output("y", ops.mul_mat(g.input("x", (64, 256)), g.weight("w", (128, 256))))
    run = graphdsl.compile(g, "cpu", weights=weights_of(read_gguf(path).tensors))
    xv = r.standard_normal((64, 256)).astype(np.float32)
    y = run(x=xv)["y"]
    p = run.placement()
    assert p["nodes"][g.outputs["y"].name] == onednn.NAME
    assert "CPU (mmap, in place)" in p["weight_bytes"]
    assert _rel(y, xv.astype(np.float64) @ w.astype(np.float64).T) <= BOUND


@onednn_kernel("f32")
def test_a_model_runs_on_both_and_strict_holds():
    """A ViT block stack large enough for oneDNN: products there, the rest on ggml (both backends
    allocate from the CPU buffer type, so ggml's allocator gives them one compute buffer)."""
    from graphdsl.models import clip
    from transformers import CLIPVisionConfig
    hc = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2,
                          image_size=64, patch_size=8)
    cfg = clip.config_from_hf(hc)
    r = np.random.default_rng(0)
    g = clip.build(cfg)
    weights = {n: (r.standard_normal(node.shape) * 0.05).astype(np.float32) for n, node in g.weights.items()}
    x = r.standard_normal((3, 64, 64)).astype(np.float32)
    run = graphdsl.compile(g, "cpu", weights=weights, strict=True)
    out = next(iter(g.outputs))
    y = run({"pixels": x})[out]
    p = run.placement()
    assert onednn.NAME in p["nodes"].values() and not p["fallbacks"]
    y_ggml = graphdsl.compile(g, "ggml-cpu", weights=weights)({"pixels": x})[out]
    assert _rel(y, y_ggml) <= 1e-5  # f32 summation order through two layers


@pytest.mark.children
def test_env_switch_keeps_it_unloaded():
    code = ("from graphdsl.backends import onednn, devices; "
            "print(devices.resolve_devices('cpu'), onednn.status())")
    env = {**os.environ, "GRAPHDSL_ONEDNN": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['CPU'] disabled by GRAPHDSL_ONEDNN"
