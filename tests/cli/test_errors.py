"""Bad shapes, dtypes, ops, weights and inputs raise ValueError naming the node; nothing aborts.

Each case that would reach a GGML_ASSERT if unchecked is also run in a subprocess, so a regression
that lets ggml abort shows up as a failed test instead of a dead test runner.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import graphdsl
from graphdsl import Graph, ops


def g2():
    g = Graph("t")
    return g, g.input("x", (4, 8)), g.weight("w", (16, 8))


@pytest.mark.parametrize("build,match", [
    (lambda g, x, w: ops.mul_mat(x, g.weight("w2", (16, 9))), r"\[mul_mat\] node 'mul_mat': .*inner dims 8 != 9"),
    (lambda g, x, w: x + g.input("y", (3, 8)), r"\[add\] node 'add': .*cannot be repeated"),
    (lambda g, x, w: ops.sub(g.input("y", (8,)), x), r"\[sub\] .*cannot be repeated"),
    (lambda g, x, w: x.reshape(5, -1), r"\[reshape\] .*cannot infer -1"),
    (lambda g, x, w: x.permute(0, 0), r"\[permute\] .*not a permutation"),
    (lambda g, x, w: ops.view(x, 1, 4, 9), r"\[view\] .*out of range"),
    (lambda g, x, w: ops.concat([x, w], 1), r"\[concat\] .*differ outside axis"),
    (lambda g, x, w: ops.get_rows(w, x), r"\[get_rows\] .*ids must be i32"),
    (lambda g, x, w: ops.norm(x, -1.0), r"\[norm\] .*eps must be >= 0"),
    (lambda g, x, w: ops.conv_2d(g.weight("k", (4, 3, 9, 9)), g.input("img", (3, 5, 5)), stride=1),
     r"\[conv_2d\] .*does not fit"),
    (lambda g, x, w: ops.conv_1d(g.weight("k", (4, 2, 3)), g.input("m", (3, 10))), r"\[conv_1d\] .*channels 3 != "),
    (lambda g, x, w: ops.soft_max(x, g.input("m", (2, 8))), r"\[soft_max\] .*mask rows 2 < x rows 4"),
    (lambda g, x, w: ops.flash_attn_ext(g.input("q", (3, 4, 8)), g.input("k", (2, 5, 8)), g.input("v", (2, 5, 8)),
                                        scale=1.0), r"\[flash_attn_ext\] .*multiple of k heads"),
    (lambda g, x, w: ops.rope(x.reshape(4, 2, 4), g.input("p", (3,), "i32")), r"\[rope\] .*pos must be"),
    (lambda g, x, w: ops.argmax(x.reshape(2, 2, 8)), r"\[argmax\] .*2-D"),
    (lambda g, x, w: ops.cast(g.input("i", (3,), "i32"), "f16"), r"\[cast\] .*not supported"),
    (lambda g, x, w: ops.pool_2d(x, "median"), r"\[pool_2d\] .*'max' or 'avg'"),
    (lambda g, x, w: x.reshape(1, 1, 1, 1, 32), r"\[reshape\] .*rank 5"),
    (lambda g, x, w: g.emit("nonexistent", [x], {}, None), r"\[nonexistent\] node 'nonexistent': unknown op"),
    (lambda g, x, w: g.weight("q", (4, 30), "q8_0"), r"\[weight\] node 'q': q8_0 needs rows .* multiple of 32"),
    (lambda g, x, w: g.input("x", (2,)), r"\[input\] node 'x': name already used"),
    (lambda g, x, w: g.input("z", (0, 3)), r"\[input\] .*positive"),
    (lambda g, x, w: x + Graph("other").input("y", (4, 8)), r"belongs to another graph"),
])
def test_bad_graphs_raise_at_build(build, match):
    g, x, w = g2()
    with pytest.raises(ValueError, match=match):
        build(g, x, w)


def test_errors_name_the_scoped_node():
    g, x, w = g2()
    with g.scope("v"), g.scope("blk.3"), pytest.raises(ValueError, match=r"node 'v\.blk\.3\.attn_q'.*\(4, 8\)"):
        ops.mul_mat(x, g.weight("attn_q.weight", (5, 7)), name="attn_q")


def _mlp():
    g, x, w = g2()
    g.output("y", ops.linear(x, w).gelu_erf())
    return g


def test_weights_are_strict_and_all_listed():
    run = graphdsl.compile(_mlp(), "cpu")
    with pytest.raises(ValueError, match="unbound weights"):
        run(x=np.zeros((4, 8), np.float32))
    with pytest.raises(ValueError, match=r"missing 1: w"):
        run.load_weights({})
    with pytest.raises(ValueError, match=r"unexpected 1: extra.*mis-shaped or mistyped 1: w: shape \(8, 16\)"):
        run.load_weights({"w": np.zeros((8, 16), np.float32), "extra": np.zeros(3)})


def test_bad_inputs_raise():
    run = graphdsl.compile(_mlp(), "cpu", weights={"w": np.ones((16, 8), np.float32)})
    with pytest.raises(ValueError, match="missing"):
        run({})
    with pytest.raises(ValueError, match="rank 1"):
        run(x=np.zeros(8, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        run(x=np.full((4, 8), np.nan, np.float32))
    with pytest.raises(ValueError, match=r"\[mul_mat\] .*inner dims 9 != 8"):
        run(x=np.zeros((4, 9), np.float32))  # a new shape replays the shape rules first
    assert run(x=np.ones((4, 8), np.float32))["y"].shape == (4, 16)  # the executor still works


def test_unknown_backend_and_precision():
    with pytest.raises(ValueError, match="no ggml device matches backend='nosuchgpu'"):
        graphdsl.compile(_mlp(), "nosuchgpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        graphdsl.compile(_mlp(), "cpu", precision="f8")


GGML_ASSERT_CASES = {
    # get_rows asserts 0 <= id < n_rows inside the CPU kernel: checked per run.
    "get_rows ids": """
        g = Graph(); t = g.weight("t", (5, 4)); ids = g.input("ids", (3,), "i32")
        g.output("y", ops.get_rows(t, ids))
        run = graphdsl.compile(g, "cpu", weights={"t": np.zeros((5, 4), np.float32)})
        try:
            run(ids=np.array([0, 7, 1], np.int32))
        except ValueError as e:
            print("ValueError:", e)
    """,
    "computed ids": """
        g = Graph(); t = g.weight("t", (5, 4)); x = g.input("x", (3, 8))
        g.output("y", ops.get_rows(t, ops.argmax(x)))
        try:
            graphdsl.compile(g, "cpu", weights={"t": np.zeros((5, 4), np.float32)})(x=np.zeros((3, 8), np.float32))
        except ValueError as e:
            print("ValueError:", e)
    """,
}


@pytest.mark.parametrize("name", sorted(GGML_ASSERT_CASES))
def test_ggml_asserts_become_value_errors(name, tmp_path):
    code = "import numpy as np, graphdsl\nfrom graphdsl import Graph, ops\n" + textwrap.dedent(GGML_ASSERT_CASES[name])
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)  # the installed package, not the source tree
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ValueError: [get_rows]" in proc.stdout
