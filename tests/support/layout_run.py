"""Child process of tests/ops/test_layouts.py: runs every (case, layout, precision) of one op.

    python tests/support/layout_run.py OP [DONE_ID ...]

Prints `BEGIN id` before a combination and `END id err tol`, `REFUSED id message` or
`FAIL id message` after it, flushing each line, so that when ggml aborts the process the parent
knows which combination did it and starts a new child after it. GRAPHDSL_LAYOUT_BREAK=1 puts the
lowering's old contiguity test back (the negative control: the parent must see it fail).
"""
from __future__ import annotations

import os
import sys
import zlib

import numpy as np

import graphdsl
from graphdsl import Graph
from layouts import ALL_CASES, LAYOUTS
from target import BACKEND

INVARIANT_TOL = 1e-6  # quantized mul_mat: the layout's result against the contiguous one, both ggml
FAST_TOL = 2e-3  # "fast" takes ggml's f16 paths (im2col, GELU tables, K/V), the conv layout's too


def combos(op):
    for case in (c for c in ALL_CASES if c.op == op):
        for name, layout in LAYOUTS.items():
            if not any(_applies(layout, spec) for spec in case.spec.values()):
                continue
            for precision in ("f32", "fast"):
                yield case, name, precision


def _applies(layout, spec):
    shape, dtype, kind, gen = spec
    # ids stay graph inputs (get_rows checks them per run); -inf mask entries would give NaN in a conv
    return (kind == "in" and dtype != "i32" and layout.stored(shape) is not None
            and not (gen == "mask" and layout.weights is not None))


def build(case, layout_name):
    """The case's graph and values (those of tests/ops/test_ops.py) with every float input fed
    through the layout where it applies."""
    layout = LAYOUTS[layout_name]
    ins, ws = case.values(np.random.default_rng(zlib.crc32(case.id.encode())))
    rng = np.random.default_rng(zlib.crc32(f"{case.id}/{layout_name}".encode()))
    logical = dict(ins)  # what the op itself reads
    g = Graph(f"{case.id}-{layout_name}")
    ts = []
    for name, spec in case.spec.items():
        shape, dtype, kind, _ = spec
        if kind == "w":
            ts.append(g.weight(name, shape, dtype))
        elif not _applies(layout, spec):
            ts.append(g.input(name, shape, dtype))
        else:
            stored = layout.stored(shape)
            ins[name] = layout.embed(ins[name], stored, rng)
            if layout_name == "conv_output":
                logical[name] = ins[name]
            assert ins[name].shape == stored, (name, ins[name].shape, stored)
            ts.append(layout.prefix(g.input(name, stored, dtype), shape))
            if layout.weights:
                ws.update(layout.weights(shape, name))
    g.output("out", case.build(*ts))
    return g, ins, ws, logical


def _quantized(case):
    return case.op == "mul_mat" and any(s[2] == "w" and s[1] != "f32" for s in case.spec.values())


def tolerance(case, precision):
    if _quantized(case):
        return INVARIANT_TOL
    f32 = case.tol.get("f32", 1e-5)
    return f32 if precision == "f32" else max(f32, case.tol.get("fast", FAST_TOL))


def _err(out, ref):
    if out.shape != ref.shape:
        raise AssertionError(f"shape {out.shape} != reference {ref.shape}")
    if ref.dtype == np.int32:
        return float(np.count_nonzero(out != ref))
    ref = ref.astype(np.float64)
    return float(np.abs(out.astype(np.float64) - ref).max() / max(np.abs(ref).max(), 1e-30))


def run(case, layout, precision):
    g, ins, ws, logical = build(case, layout)
    out = graphdsl.compile(g, BACKEND, precision=precision, weights=ws)(ins)["out"]
    if _quantized(case):
        # ggml rounds the activations to the weight type (f16, bf16, q8_0, q8_K), so the error against the reference
        # depends on the values, not the layout (tests/ops/test_ops.py bounds it): here the layout
        # must not change ggml's own result for the same logical values.
        base = {k: v for k, v in ws.items() if not k.startswith("layout.")}
        return _err(out, graphdsl.compile(case.graph(), BACKEND, precision=precision, weights=base)(logical)["out"])
    return _err(out, graphdsl.compile(g, "reference", weights=ws)(ins)["out"])


def _break_lowering():
    from graphdsl.backends import ggml_lower
    ggml_lower.Lowering.cont = lambda self, t: t if t.is_contiguous else ggml_lower.G.cont(self.ctx, t)


def main(op, done):
    if os.environ.get("GRAPHDSL_LAYOUT_BREAK") == "1":
        _break_lowering()
    for case, layout, precision in combos(op):
        cid = f"{case.id}/{layout}/{precision}"
        if cid in done:
            continue
        print("BEGIN", cid, flush=True)
        try:
            err = run(case, layout, precision)
        except ValueError as e:  # a clear refusal is allowed; the parent checks which
            print("REFUSED", cid, str(e).replace("\n", " "), flush=True)
            continue
        except Exception as e:  # noqa: BLE001 - reported to the parent as a failure
            print("FAIL", cid, f"{type(e).__name__}: {e}".replace("\n", " "), flush=True)
            continue
        print("END", cid, f"{err:.3e}", f"{tolerance(case, precision):.0e}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], set(sys.argv[2:]))
