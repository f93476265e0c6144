"""Every op: ggml CPU backend vs the NumPy reference interpreter, and registry completeness.

The error metric is the normalised max error max|ggml - ref| / max|ref| (ref in float64).
Bounds (precision "f32" unless said): 1e-5 for float ops; quantized mul_mat weights have their
own bounds because ggml quantizes the activations to the weight's dot-product type (q8_0 or q8_K)
while the reference keeps them in f32. "fast" takes ggml's f16 paths (im2col, GELU tables, K/V):
2e-3, about four f16 ulps at unit scale. On CUDA, f32 matrix products are TF32 (tests/support/tf32.py), so
"f32" cases that ran one there get that same 2e-3: TF32 has f16's 10 mantissa bits.
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest

import graphdsl
from graphdsl import inspect
from graphdsl import ops
from graphdsl.backends import ggml_lower
from graphdsl.inspect.drawing import COLOURS
from graphdsl.ops import KINDS, OPS_API, REGISTRY
from graphdsl.ops.registry import add_lowering
from op_cases import CASES
from target import BACKEND, TF32, TF32_OP

# Measured on this machine (tests print them with -s); bounds carry about a 3x margin.
QUANT_TOL = {"f16": 2e-3, "bf16": 1e-2, "q8_0": 1e-2, "q4_0": 2e-2, "q4_1": 2e-2, "q5_0": 1e-2,
             "q5_1": 1e-2, "q4_k": 1e-2, "q5_k": 1e-2, "q6_k": 1e-2}


def _err(out, ref):
    ref = ref.astype(np.float64)
    return float(np.abs(out.astype(np.float64) - ref).max() / max(np.abs(ref).max(), 1e-30))


def _params():
    for c in CASES:
        for p in c.precisions:
            yield pytest.param(c, p, id=f"{c.id}-{p}")


@pytest.mark.parametrize("case,precision", list(_params()))
def test_op_matches_reference(case, precision):
    rng = np.random.default_rng(zlib.crc32(case.id.encode()))
    g = case.graph()
    ins, ws = case.values(rng)
    ref = graphdsl.compile(g, "reference", weights=ws)(ins)["out"]
    exe = graphdsl.compile(g, BACKEND, precision=precision, weights=ws)
    out = exe(ins)["out"]
    assert out.shape == ref.shape == g.outputs["out"].shape
    # On a multi-device schedule the op must really run on the device under test, or be reported
    # as unsupported there (then it runs on the CPU, which is tested too).
    moved = {n: why for n, why in exe.placement()["fallbacks"].items() if "unsupported by" not in why}
    assert not moved, moved
    if ref.dtype == np.int32:
        np.testing.assert_array_equal(out, ref)
        return
    wdtype = next((s[1] for s in case.spec.values() if s[2] == "w" and s[1] != "f32"), None)
    tol = QUANT_TOL[wdtype] if wdtype in QUANT_TOL and case.op == "mul_mat" else case.tol.get(precision, 1e-5)
    if TF32 and precision == "f32" and _products_on_tf32(exe):
        tol = max(tol, TF32_OP)
    err = _err(out, ref)
    print(f"{case.id}-{precision}: {err:.2e} (bound {tol:.0e})")
    assert err <= tol


def _products_on_tf32(exe) -> bool:
    """Whether the last run put a MUL_MAT on a CUDA device (f32 products there are TF32)."""
    return any(n.op == "MUL_MAT" and n.backend.startswith("CUDA") for n in inspect.lowered(exe).nodes)


def test_registry_is_complete():
    """Each op has a shape rule, a reference, FLOPs, a kind, a ggml lowering and a test case."""
    covered = {c.op for c in CASES}
    for name, op in REGISTRY.items():
        assert callable(op.infer) and callable(op.reference) and callable(op.flops), name
        assert op.doc, f"{name} has no doc"
        assert op.kind in KINDS and op.kind in COLOURS, f"{name}: kind {op.kind!r} has no colour"
        assert callable(op.lowerings.get(ggml_lower.BACKEND)), f"{name} has no ggml lowering"
        assert name in covered, f"{name} has no ggml-vs-reference case"


def test_every_builder_is_an_ops_name():
    """`ops.<name>` is each builder itself (imported by name, not copied in at import time)."""
    assert {n: getattr(ops, n, None) for n in OPS_API} == OPS_API


def test_a_lowering_names_a_known_op_once():
    with pytest.raises(ValueError, match="unknown op 'no_such_op'"):
        add_lowering("ggml", "no_such_op", lambda L, node: None)
    with pytest.raises(ValueError, match="'add' lowered twice"):
        ggml_lower.lowers("add")(lambda L, node, a, b: None)


def test_only_declared_ops_read_strided_inputs():
    """Layout facts live in the OpDef; an op that does not declare strided_ok gets contiguous inputs."""
    assert {n for n, op in REGISTRY.items() if op.strided_ok} == {"permute", "view", "cont", "mul_mat",
                                                                   "flash_attn_ext"}
    assert {n for n, op in REGISTRY.items() if op.view} == {"reshape", "view", "permute"}


# FLOPs per op, written here from what each op computes (not read from the registry), as ggml's
# test-backend-ops `op_flops` counts them: a multiply-add is 2, an element-wise op 1 per output.
_PER_ELEMENT = {  # unary ops: arithmetic per output element
    "neg": 1, "sqr": 1, "sqrt": 1, "exp": 1, "tanh": 1, "relu": 1,
    "sigmoid": 4,  # 1 / (1 + exp(-x)): neg, exp, add, div
    "silu": 5,  # x * sigmoid(x)
    "gelu": 8,  # 0.5 x (1 + tanh(c (x + 0.044715 x^3))): x^3 (2), fma, mul, tanh, add, 2 mul
    "gelu_erf": 8,  # 0.5 x (1 + erf(x / sqrt 2)), counted like the tanh form
    "gelu_quick": 6,  # x * sigmoid(1.702 x)
    "add": 1, "sub": 1, "mul": 1, "div": 1, "cast": 1,
    "scale": 2,  # s * x + b
    "norm": 5,  # mean, centre, square-sum, rsqrt, scale
    "rms_norm": 3,  # square-sum, rsqrt, scale
    "soft_max": 5,  # scale (+ mask), max, exp, sum, divide
}
_ZERO = {"reshape", "view", "permute", "cont", "concat", "pad", "repeat", "get_rows", "const"}  # data movement


def _size(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


def _expected_flops(n) -> int:
    ins = [i.shape for i in n.inputs]
    if n.op in _PER_ELEMENT:
        return _PER_ELEMENT[n.op] * _size(n.shape)
    if n.op in _ZERO:
        return 0
    if n.op == "mul_mat":  # (.., m, k) x (.., n, k): 2 m n k per output matrix
        return 2 * _size(n.shape) * ins[0][-1]
    if n.op in ("conv_1d", "conv_2d"):  # each output: ic * kernel multiply-adds
        return 2 * _size(n.shape) * _size(ins[0][1:])
    if n.op == "pool_2d":  # each output reads its window once
        return _size(n.shape) * _size(n.attrs["kernel"])
    if n.op in ("sum_rows", "mean", "argmax"):  # one op per input element
        return _size(ins[0])
    if n.op == "flash_attn_ext":  # q k^T (2 nq nkv dk) and p v (2 nq nkv dv) per head and batch
        q, k, v = ins[:3]
        heads_x_nq = _size(q[:-1])
        return 2 * heads_x_nq * k[-2] * q[-1] + 2 * heads_x_nq * v[-2] * v[-1]
    if n.op == "rope":  # per rotated pair: 4 multiplies, 2 adds
        return 6 * _size(n.shape[:-1]) * n.attrs["n_dims"] // 2
    raise KeyError(n.op)


def _flops_mismatches(case) -> list[str]:
    out = []
    for n in case.graph().nodes:
        if n.op in REGISTRY:
            got = REGISTRY[n.op].flops(n.shape, [i.shape for i in n.inputs], **n.attrs)
            if not isinstance(got, (int, np.integer)) or got != _expected_flops(n):
                out.append(f"{n.name} ({n.op}): registry {got!r}, expected {_expected_flops(n)}")
    return out


def test_every_op_has_a_flops_formula_here():
    formulas = {*_PER_ELEMENT, *_ZERO, "mul_mat", "conv_1d", "conv_2d", "pool_2d", "sum_rows", "mean", "argmax",
                "flash_attn_ext", "rope"}  # the branches of _expected_flops
    missing = sorted(set(REGISTRY) - formulas)
    assert not missing, f"write the FLOPs formula of {missing} in tests/ops/test_ops.py"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_flops_match_the_formulas(case):
    assert not _flops_mismatches(case)


def test_flops_check_catches_a_wrong_rule(monkeypatch):
    """Negative control: a mul_mat rule that forgot the multiply-add's 2, and an attention rule that
    counted only q k^T, are both reported."""
    import dataclasses
    for op, wrong in [("mul_mat", lambda out, ins: int(np.prod(out)) * ins[0][-1]),
                      ("flash_attn_ext", lambda out, ins, **a: 2 * int(np.prod(ins[0][:-1])) * ins[1][-2] * ins[0][-1])]:
        monkeypatch.setitem(REGISTRY, op, dataclasses.replace(REGISTRY[op], flops=wrong))
        case = next(c for c in CASES if c.op == op)
        assert any(f"({op}): registry" in m for m in _flops_mismatches(case))


def test_mul_mat_on_a_permuted_input_does_not_abort():
    """A permute that leaves the last axis strided (not 'transposed' in ggml's sense) is made
    contiguous before ggml_mul_mat, whose CPU kernel asserts unit-stride rows."""
    from graphdsl import Graph, ops
    g = Graph("t")
    x, w = g.input("x", (2, 3, 4)), g.input("w", (5, 3))
    g.output("y", ops.mul_mat(ops.permute(x, (2, 0, 1)), w))
    r = np.random.default_rng(0)
    ins = {"x": r.standard_normal((2, 3, 4)).astype(np.float32), "w": r.standard_normal((5, 3)).astype(np.float32)}
    np.testing.assert_allclose(graphdsl.compile(g, BACKEND)(ins)["y"], graphdsl.compile(g, "reference")(ins)["y"],
                               rtol=1e-5, atol=1e-6)


def test_constants_are_nodes_not_inputs():
    from graphdsl import Graph
    g = Graph("c")
    x, m = g.input("x", (2, 3)), g.const("m", np.eye(3, dtype=np.float32) * 2)
    g.output("y", x @ m)
    xv = np.ones((2, 3), np.float32)
    for backend in ("reference", BACKEND):
        np.testing.assert_allclose(graphdsl.compile(g, backend)(x=xv)["y"], 2 * xv)
        with pytest.raises(ValueError, match=r"unexpected \['m'\] \(m: constants, computed by the graph\)"):
            graphdsl.compile(g, backend)(x=xv, m=np.eye(3, dtype=np.float32))


_PRODUCT_CASES = [c for c in CASES if c.op in ("mul_mat", "conv_1d", "conv_2d", "flash_attn_ext")]


@pytest.mark.parametrize("case", _PRODUCT_CASES, ids=lambda c: c.id)
def test_f32_policy_asks_ggml_for_f32_accumulation(case):
    """Every ggml MUL_MAT that "f32" lowers to (linear, conv, attention) carries GGML_PREC_F32; "fast"
    leaves ggml's default. The CPU accumulates in f32 either way, but CUDA's default for f16 weights
    is f16 accumulation with an f16 result, so the tag is what keeps "f32" meaningful there."""
    g = case.graph()
    ins, ws = case.values(np.random.default_rng(0))
    for precision in ("f32", "fast"):
        exe = graphdsl.compile(g, BACKEND, precision=precision, weights=ws)
        exe(ins)
        cg = exe.last_program.cgraph
        precs = {cg.node(i).op_params[0] for i in range(cg.n_nodes) if cg.node(i).op == "MUL_MAT"}
        assert precs <= ({10} if precision == "f32" else {0}), (precision, precs)  # 10: GGML_PREC_F32
        assert precs or case.op == "flash_attn_ext"  # the CPU's exact attention has no MUL_MAT
