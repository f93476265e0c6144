"""One executor over many input shapes (issue 28): the programs it keeps (one per set of input
shapes and capture list) are bounded, the least recently used freed first."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import graphdsl
from graphdsl import Graph, ops
from target import BACKEND
from paths import SUPPORT

HERE = SUPPORT  # the children import the test helpers (and layout_run.py lives there)



def _consts_graph():
    g = Graph("c")
    x = g.input("x", (5, 32))
    g.output("y", ops.linear(x, g.weight("w", (16, 32))) + g.const("b", np.arange(16, dtype=np.float32)))
    return g


def test_programs_past_max_programs_are_freed_and_rebuilt_on_demand():
    g = _consts_graph()
    w = {"w": np.random.default_rng(0).standard_normal((16, 32)).astype(np.float32)}
    run, ref = graphdsl.compile(g, BACKEND, weights=w, max_programs=4), graphdsl.compile(g, "reference", weights=w)
    r = np.random.default_rng(1)
    evicted = []
    for n in range(1, 41):
        xv = r.standard_normal((n, 32)).astype(np.float32)
        np.testing.assert_allclose(run(x=xv)["y"], ref(x=xv)["y"], rtol=1e-5, atol=1e-5)
        assert len(run._programs) <= 4
        if n == 1:
            evicted.append(run.last_program)
    assert run.n_reserve == 40
    first = evicted[0]
    with pytest.raises(RuntimeError, match="released"):
        first.const_buffer.size  # the evicted program's constants were freed, not kept by the runtime
    with pytest.raises(ValueError, match="belongs to no weight buffer"):
        run.runtime.get_tensor(first.consts["b"], np.empty(16, np.float32))
    xv = r.standard_normal((1, 32)).astype(np.float32)
    np.testing.assert_allclose(run(x=xv)["y"], ref(x=xv)["y"], rtol=1e-5, atol=1e-5)  # lowered again
    assert run.n_reserve == 41


def test_recently_used_programs_stay():
    g = _consts_graph()
    run = graphdsl.compile(g, BACKEND, weights={"w": np.ones((16, 32), np.float32)}, max_programs=2)
    a, b, c = (np.ones((n, 32), np.float32) for n in (1, 2, 3))
    run(x=a), run(x=b), run(x=a), run(x=c)  # a was used after b: b goes
    assert run.n_reserve == 3
    run(x=a)
    assert run.n_reserve == 3
    run(x=b)
    assert run.n_reserve == 4


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "8"])
def test_max_programs_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match="max_programs must be an integer >= 1"):
        graphdsl.compile(_consts_graph(), BACKEND, max_programs=bad)


@pytest.mark.children
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads RSS from /proc")
def test_host_memory_stays_bounded_over_many_shapes():
    """One program per shape, kept forever: 56 MB -> 1.5 GB after 2,500 shapes of a model graph."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import numpy as np, graphdsl
        from graphdsl import Graph, ops
        from target import BACKEND
        g = Graph("deep"); h = g.input("x", (4, 32)); w = g.weight("w", (32, 32))
        for i in range(150):
            h = ops.linear(h, w).tanh()
        g.output("y", h)
        run = graphdsl.compile(g, BACKEND, weights={"w": np.eye(32, dtype=np.float32)}, max_programs=8)
        rss = lambda: int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
        for n in range(1, 241):
            run(x=np.ones((n, 32), np.float32))
            if n == 40:
                early = rss()
        print("programs", len(run._programs), "grew_mb", round(rss() - early, 1))
    """)], capture_output=True, text=True, timeout=300, cwd=HERE,
                          env={**os.environ, "GGML_NO_BACKTRACE": "1", "PYTHONPATH": str(HERE)})
    assert proc.returncode == 0 and "grew_mb" in proc.stdout, proc.stderr[-2000:]
    assert int(proc.stdout.split("programs")[1].split()[0]) == 8
    assert float(proc.stdout.split("grew_mb")[1]) < 40, proc.stdout
