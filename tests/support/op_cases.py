"""One or more cases per registry op: inputs, weights, and how to build the node.

Shapes include odd sizes (7, 13, 33) so that no SIMD-width assumption hides a bug. Each case is
run by tests/ops/test_ops.py on the ggml CPU backend against the NumPy reference interpreter.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from graphdsl import Graph, ops


@dataclass
class Case:
    op: str
    build: Callable  # (*tensors in spec order) -> Tensor
    spec: dict  # name -> (shape, dtype, kind "in" | "w", generator name)
    id: str = ""
    precisions: tuple = ("f32",)
    tol: dict = field(default_factory=dict)  # precision -> bound on the normalised max error

    def graph(self):
        g = Graph(self.id or self.op)
        ts = []
        for name, (shape, dtype, kind, _) in self.spec.items():
            ts.append(g.input(name, shape, dtype) if kind == "in" else g.weight(name, shape, dtype))
        g.output("out", self.build(*ts))
        return g

    def values(self, rng):
        ins, ws = {}, {}
        for name, (shape, dtype, kind, gen) in self.spec.items():
            v = GENERATORS[gen](rng, shape)
            (ins if kind == "in" else ws)[name] = v
        return ins, ws


GENERATORS = {
    "normal": lambda r, s: r.standard_normal(s).astype(np.float32),
    "positive": lambda r, s: r.uniform(0.1, 4.0, s).astype(np.float32),
    "nonzero": lambda r, s: (r.uniform(0.5, 2.0, s) * r.choice([-1, 1], s)).astype(np.float32),
    "wide": lambda r, s: (4 * r.standard_normal(s)).astype(np.float32),
    "ids7": lambda r, s: r.integers(0, 7, s).astype(np.int32),
    "ids1": lambda r, s: np.zeros(s, np.int32),
    "pos": lambda r, s: r.integers(0, 512, s).astype(np.int32),
    "mask": lambda r, s: np.where(r.random(s) < 0.3, -np.inf, 0).astype(np.float32),
}


def I(shape, gen="normal", dtype="f32"):  # noqa: E743 - input
    return (tuple(shape), dtype, "in", gen)


def W(shape, gen="normal", dtype="f32"):
    return (tuple(shape), dtype, "w", gen)


FAST = {"f32": 1e-5, "fast": 2e-3}  # fast: f16 im2col / f16 GELU tables / f16 K,V
CASES: list[Case] = []


def add(op, build, spec, **kw):
    kw.setdefault("id", f"{op}-{len([c for c in CASES if c.op == op])}")
    CASES.append(Case(op, build, spec, **kw))


# -- element-wise ---------------------------------------------------------------------------------
for _op, _fn in [("add", ops.add), ("sub", ops.sub), ("mul", ops.mul)]:
    add(_op, _fn, {"a": I((7, 33)), "b": I((7, 33))})
    add(_op, _fn, {"a": I((3, 5, 13)), "b": I((13,))})
    add(_op, _fn, {"a": I((2, 6, 4, 5)), "b": I((2, 1, 2, 5))})  # ggml tiles b
add("div", ops.div, {"a": I((7, 33)), "b": I((7, 33), "nonzero")})
add("div", ops.div, {"a": I((5, 9)), "b": I((1, 9), "nonzero")})
add("add", ops.add, {"a": I((13,)), "b": I((4, 13))})  # commutative: larger operand goes first
add("scale", lambda x: ops.scale(x, 0.37, -1.25), {"x": I((9, 17))})
add("scale", lambda x: 2.0 * x - 3.0, {"x": I((4, 3, 5))})
for _op in ["neg", "sqr", "exp", "tanh", "relu", "sigmoid", "silu", "gelu_erf"]:
    add(_op, getattr(ops, _op), {"x": I((11, 37))})
add("sqrt", ops.sqrt, {"x": I((11, 37), "positive")})
for _op in ["gelu", "gelu_quick"]:
    add(_op, getattr(ops, _op), {"x": I((11, 37), "wide")}, precisions=("f32", "fast"), tol=FAST)

# -- linear algebra ---------------------------------------------------------------------------------
add("mul_mat", ops.mul_mat, {"x": I((7, 33)), "w": W((13, 33))})
add("mul_mat", ops.mul_mat, {"x": I((33,)), "w": W((5, 33))})
add("mul_mat", ops.mul_mat, {"x": I((2, 6, 5, 16)), "w": W((2, 3, 7, 16))})  # batched, w repeats
add("mul_mat", lambda a, b: a @ b, {"a": I((4, 9, 17)), "b": I((4, 17, 6))})
for _q in ["f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k", "q5_k", "q6_k"]:
    _k = 256 if _q.endswith("_k") else 64
    add("mul_mat", ops.mul_mat, {"x": I((5, _k)), "w": W((11, _k), dtype=_q)}, id=f"mul_mat-{_q}")
add("get_rows", ops.get_rows, {"t": W((7, 19)), "ids": I((12,), "ids7", "i32")})
for _q in ["f16", "q8_0", "q4_k"]:
    add("get_rows", ops.get_rows, {"t": W((7, 256), dtype=_q), "ids": I((5,), "ids7", "i32")}, id=f"get_rows-{_q}")
add("norm", lambda x: ops.norm(x, 1e-5), {"x": I((7, 45))})
add("norm", lambda x: ops.norm(x, 1e-6), {"x": I((2, 3, 768))})
add("rms_norm", lambda x: ops.rms_norm(x, 1e-6), {"x": I((7, 45))})
add("soft_max", lambda x: ops.soft_max(x, scale=0.125), {"x": I((5, 3, 29), "wide")})
add("soft_max", lambda x, m: ops.soft_max(x, m, scale=0.5), {"x": I((2, 6, 7)), "m": I((6, 7), "mask")})
add("flash_attn_ext", lambda q, k, v: ops.flash_attn_ext(q, k, v, scale=0.25),
    {"q": I((4, 9, 16)), "k": I((4, 13, 16)), "v": I((4, 13, 16))}, precisions=("f32", "fast"), tol=FAST)
add("flash_attn_ext", lambda q, k, v: ops.flash_attn_ext(q, k, v, scale=0.125),
    {"q": I((8, 5, 64)), "k": I((2, 11, 64)), "v": I((2, 11, 64))}, precisions=("f32", "fast"), tol=FAST)
add("flash_attn_ext", lambda q, k, v, m: ops.flash_attn_ext(q, k, v, m, scale=0.3),
    {"q": I((2, 7, 32)), "k": I((2, 7, 32)), "v": I((2, 7, 32)), "m": I((7, 7), "mask")},
    precisions=("f32", "fast"), tol=FAST)
add("rope", lambda x, p: ops.rope(x, p, mode="normal"), {"x": I((7, 3, 16)), "p": I((7,), "pos", "i32")},
    tol={"f32": 3e-5})
add("rope", lambda x, p: ops.rope(x, p, mode="neox", n_dims=8, freq_base=500.0),
    {"x": I((5, 2, 16)), "p": I((5,), "pos", "i32")}, tol={"f32": 3e-5})

# -- layout ---------------------------------------------------------------------------------------------
add("reshape", lambda x: x.reshape(3, -1), {"x": I((6, 7, 2))})
add("reshape", lambda x: x.T.reshape(-1), {"x": I((5, 9))})  # non-contiguous source
add("view", lambda x: ops.view(x, 0, 2, 6), {"x": I((9, 13))})
add("view", lambda x: ops.view(x, 1, 1, 12, 3), {"x": I((4, 13, 5))})
add("view", lambda x: ops.view(x, 2, 3, 10) * 2.0, {"x": I((2, 3, 11))})
add("permute", lambda x: x.permute(2, 0, 1), {"x": I((3, 5, 7))})
add("permute", lambda x: x.permute(1, 3, 0, 2) + 0.0, {"x": I((2, 3, 4, 5))})
add("cont", lambda x: ops.cont(x.T), {"x": I((6, 11))})
add("concat", lambda a, b: ops.concat([a, b], 0), {"a": I((3, 7)), "b": I((5, 7))})
add("concat", lambda a, b, c: ops.concat([a, b, c], 1), {"a": I((2, 3, 4)), "b": I((2, 1, 4)), "c": I((2, 5, 4))})
add("concat", lambda a, b: ops.concat([a, b], -1), {"a": I((4, 3)), "b": I((4, 9))})
add("pad", lambda x: ops.pad(x, [(1, 2), (0, 3)]), {"x": I((5, 7))})
add("repeat", lambda x: ops.repeat(x, (3, 4, 10)), {"x": I((2, 5))})
# exact: ggml and the reference both round to nearest even; a bound of 1e-3 passed a cast that did
# nothing (the f16 round trip itself moves these values by up to 3.8e-4)
add("cast", lambda x: ops.cast(ops.cast(x, "f16"), "f32"), {"x": I((9, 17))}, tol={"f32": 0.0})
add("cast", lambda x: ops.cast(ops.cast(x, "bf16"), "f32"), {"x": I((9, 17))}, tol={"f32": 1e-5})

# -- reductions -------------------------------------------------------------------------------------------
add("sum_rows", ops.sum_rows, {"x": I((7, 33))})
add("mean", ops.mean, {"x": I((3, 4, 33))})
add("argmax", ops.argmax, {"x": I((9, 31))})

# -- convolution and pooling ----------------------------------------------------------------------------------
add("conv_2d", lambda w, x: ops.conv_2d(w, x, stride=4), {"w": W((8, 3, 4, 4)), "x": I((3, 16, 20))},
    precisions=("f32", "fast"), tol=FAST)
add("conv_2d", lambda w, x: ops.conv_2d(w, x, stride=(1, 2), padding=1, dilation=(1, 2)),
    {"w": W((5, 2, 3, 3)), "x": I((2, 2, 9, 11))}, precisions=("f32", "fast"), tol=FAST)
add("conv_1d", lambda w, x: ops.conv_1d(w, x, padding=1), {"w": W((8, 5, 3)), "x": I((5, 21))},
    precisions=("f32", "fast"), tol=FAST)
add("conv_1d", lambda w, x: ops.conv_1d(w, x, stride=2, padding=1), {"w": W((6, 4, 3)), "x": I((3, 4, 17))},
    precisions=("f32", "fast"), tol=FAST)
add("pool_2d", lambda x: ops.pool_2d(x, "avg", 2), {"x": I((3, 8, 10))})
add("pool_2d", lambda x: ops.pool_2d(x, "max", (3, 2), (2, 2)), {"x": I((2, 3, 9, 9))})

# -- constants ------------------------------------------------------------------------------------------
add("const", lambda x: x * x.graph.const("k", lambda s: np.linspace(-2, 2, s[-1]), shape_of=[x]), {"x": I((5, 13))})
add("const", lambda w: ops.get_rows(w, w.graph.const("ids", np.array([6, 0, 3, 3]))), {"w": W((7, 9))})
add("const", lambda x: x + ops.cast(x.graph.const("h", np.full((3, 5), -1.5, np.float16)), "f32"), {"x": I((2, 3, 5))})

# -- rope: the multi-section modes and Pixtral's rope_2d (graphdsl/ops/rope.py) --------------------------
_ROPE = {"f32": 3e-5}  # ggml's f32 angle ladder at positions < 512 (tests/ops/test_rope.py)
add("rope", lambda x, p: ops.rope(x, p, mode="mrope", sections=(3, 3, 2)),
    {"x": I((7, 3, 16)), "p": I((4, 7), "pos", "i32")}, tol=_ROPE)
add("rope", lambda x, p: ops.rope(x, p, mode="mrope", n_dims=10, sections=(1, 2, 1, 1), freq_base=500.0),
    {"x": I((5, 2, 16)), "p": I((4, 5), "pos", "i32")}, tol=_ROPE)
add("rope", lambda x, p: ops.rope(x, p, mode="vision"), {"x": I((9, 2, 16)), "p": I((4, 9), "pos", "i32")},
    tol=_ROPE)
add("rope", lambda x, p: ops.rope_2d(x, p), {"x": I((6, 3, 16)), "p": I((2, 6), "pos", "i32")}, tol=_ROPE)
add("rope", lambda x, p: ops.rope_2d(x, p, layout="neox"), {"x": I((6, 3, 16)), "p": I((4, 6), "pos", "i32")},
    tol=_ROPE)
