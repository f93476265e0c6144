"""Executor behaviour: reuse across runs, new shapes, devices, capture, placement, threads."""
from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time

import numpy as np
import pytest

import graphdsl
from graphdsl import Graph, ops


def _attn_graph(n=6, d=16, heads=2):
    g = Graph("attn")
    x = g.input("x", (n, d))
    with g.scope("blk.0"):
        q = ops.linear(x, g.weight("attn_q.weight", (d, d)), name="attn_q").reshape(-1, heads, d // heads)
        k = ops.linear(x, g.weight("attn_k.weight", (d, d)), name="attn_k").reshape(-1, heads, d // heads)
        v = ops.linear(x, g.weight("attn_v.weight", (d, d)), name="attn_v").reshape(-1, heads, d // heads)
        a = ops.flash_attn_ext(q.permute(1, 0, 2), k.permute(1, 0, 2), v.permute(1, 0, 2), scale=0.25, name="attn")
        out = a.reshape(-1, d) + x
    g.output("y", ops.norm(out, 1e-5))
    return g


def _weights(g, seed=0):
    r = np.random.default_rng(seed)
    return {n: r.standard_normal(w.shape).astype(np.float32) * 0.3 for n, w in g.weights.items()}


def test_same_shapes_reuse_the_reserved_program():
    g = _attn_graph()
    run = graphdsl.compile(g, "cpu", weights=_weights(g))
    x = np.random.default_rng(1).standard_normal((6, 16)).astype(np.float32)
    first = run(x=x)["y"]
    assert run.n_reserve == 1
    prog = run.last_program
    second = run(x=x)["y"]
    assert run.n_reserve == 1 and run.last_program is prog  # nothing rebuilt, nothing re-reserved
    np.testing.assert_array_equal(first, second)


def test_new_shapes_work_and_old_ones_stay_cached():
    g = _attn_graph()
    w = _weights(g)
    run, ref = graphdsl.compile(g, "cpu", weights=w), graphdsl.compile(g, "reference", weights=w)
    r = np.random.default_rng(2)
    for n in (6, 11, 1, 6):
        x = r.standard_normal((n, 16)).astype(np.float32)
        out = run(x=x)["y"]
        assert out.shape == (n, 16)
        np.testing.assert_allclose(out, ref(x=x)["y"], rtol=1e-5, atol=1e-5)
    assert run.n_reserve == 3


def test_weights_reload_in_place():
    g = _attn_graph()
    run = graphdsl.compile(g, "cpu", weights=_weights(g, 0))
    x = np.ones((6, 16), np.float32)
    a = run(x=x)["y"]
    run.load_weights(_weights(g, 1))
    b = run(x=x)["y"]
    ref = graphdsl.compile(g, "reference", weights=_weights(g, 1))(x=x)["y"]
    assert not np.allclose(a, b)
    np.testing.assert_allclose(b, ref, rtol=1e-5, atol=1e-5)


def test_capture_returns_named_intermediates():
    g = _attn_graph()
    w = _weights(g)
    x = np.random.default_rng(3).standard_normal((6, 16)).astype(np.float32)
    got = graphdsl.compile(g, "cpu", weights=w)(x=x, capture=["blk.0.attn*"])
    want = graphdsl.compile(g, "reference", weights=w)(x=x, capture=["blk.0.attn*"])
    assert {"blk.0.attn_q", "blk.0.attn_k", "blk.0.attn_v", "blk.0.attn"} <= set(got)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5)


def test_placement_reports_backends_and_buffers():
    g = _attn_graph()
    run = graphdsl.compile(g, "cpu", weights=_weights(g))
    run(x=np.ones((6, 16), np.float32))
    p = run.placement()
    # "cpu" is ["ONEDNN", "CPU"] where oneDNN's backend is built; it takes no product this small
    assert p["backends"] in (["CPU"], ["ONEDNN", "CPU"]) and p["n_splits"] >= 1
    assert set(p["nodes"].values()) <= {"CPU", "ONEDNN"} and p["nodes"]["blk.0.attn"] == "CPU"  # weights: either
    assert sum(p["compute_buffer_bytes"].values()) > 0 and sum(p["weight_bytes"].values()) == 3 * 16 * 16 * 4


def test_devices_lists_the_cpu():
    devs = graphdsl.devices()
    assert any(d["type"] == "cpu" for d in devs)
    assert all({"name", "description", "type", "memory_total"} <= set(d) for d in devs)


def test_two_executors_on_two_threads_agree():
    """Concurrent use of two executors is safe (whether the GIL is released is the next test)."""
    g = _attn_graph(n=64, d=64, heads=4)
    w = _weights(g)
    runs = [graphdsl.compile(g, "cpu", n_threads=1, weights=w) for _ in range(2)]
    x = np.random.default_rng(4).standard_normal((64, 64)).astype(np.float32)
    outs = [None, None]

    def work(i):
        for _ in range(5):
            outs[i] = runs[i](x=x)["y"]

    ts = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    np.testing.assert_array_equal(outs[0], outs[1])


def _longest_stall(fn) -> tuple[float, float]:
    """Run fn() while another Python thread stamps the clock in a loop; return (the longest gap
    between stamps during fn, fn's duration). A call that holds the GIL stalls the stamper for
    its whole length; one that releases it leaves only scheduling jitter."""
    stamps: list[float] = []
    stop = threading.Event()

    def stamp():
        while not stop.is_set():
            stamps.append(time.perf_counter())

    t = threading.Thread(target=stamp)
    t.start()
    while not stamps:
        time.sleep(0.001)
    t0 = time.perf_counter()
    fn()
    t1 = time.perf_counter()
    stop.set()
    t.join()
    inside = [s for s in stamps if t0 <= s <= t1]
    return float(np.diff([t0, *inside, t1]).max()), t1 - t0


def _matmul_chain(n_layer: int):
    g = Graph("chain")
    x = g.input("x", (1024, 2048))
    w = g.weight("w", (2048, 2048))
    for i in range(n_layer):
        x = ops.mul_mat(x, w, name=f"mm.{i}")
    g.output("y", x)
    r = np.random.default_rng(6)
    run = graphdsl.compile(g, "cpu", n_threads=1, weights={"w": r.standard_normal((2048, 2048), np.float32) / 45})
    xv = r.standard_normal((1024, 2048), np.float32)
    t0 = time.perf_counter()
    run(x=xv)  # reserves, and warms up outside the measurement
    return run, xv, time.perf_counter() - t0


def test_compute_releases_the_gil():
    """A Python thread keeps running while a long ggml compute runs on this one."""
    run, xv, took = _matmul_chain(1)
    if took < 0.3:  # a fast machine: lengthen the compute until a held GIL would stand out from jitter
        run, xv, _ = _matmul_chain(min(int(0.3 / took) + 1, 64))
    stall, took = _longest_stall(lambda: run(x=xv))
    print(f"compute {took * 1e3:.0f} ms, longest stall of the other thread {stall * 1e3:.1f} ms")
    assert stall < took / 3


@pytest.mark.children
def test_gil_probe_sees_a_call_that_holds_the_gil():
    """Negative control for the probe: usleep through ctypes.PyDLL keeps the GIL (as a compute
    without py::gil_scoped_release would); through ctypes.CDLL it releases it."""
    libc = ctypes.util.find_library("c")
    if libc is None:
        pytest.skip("no C library to call usleep from")
    held, took = _longest_stall(lambda: ctypes.PyDLL(libc).usleep(300_000))
    assert took >= 0.3 and held > 0.9 * took
    free, took = _longest_stall(lambda: ctypes.CDLL(libc).usleep(300_000))
    assert took >= 0.3 and free < took / 3


def test_graph_prints_one_typed_line_per_node():
    g = Graph("tiny")
    x = g.input("x", (2, 3))
    g.output("y", ops.linear(x, g.weight("w", (4, 3)), name="proj").gelu_erf(name="act"))
    assert str(g) == (
        "graph tiny(\n"
        "    %x : f32[2,3],\n"
        "):\n"
        "    %w : f32[4,3] = weight\n"
        "    %proj : f32[2,4] = mul_mat(%x, %w)\n"
        "    %act : f32[2,4] = gelu_erf(%proj)\n"
        "    return {y=%act}"
    )


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_tensor_operators(backend):
    g = Graph()
    a, b = g.input("a", (3, 4)), g.input("b", (4, 5))
    g.output("y", ((a @ b) * 2.0 - 1.0).T / g.input("c", (5, 1)))
    r = np.random.default_rng(5)
    av, bv, cv = (r.standard_normal(s).astype(np.float32) for s in [(3, 4), (4, 5), (5, 1)])
    out = graphdsl.compile(g, backend)(a=av, b=bv, c=cv)["y"]
    np.testing.assert_allclose(out, ((av @ bv) * 2 - 1).T / cv, rtol=1e-5)


def test_weights_in_a_memory_map_are_used_in_place(tmp_path):
    g = Graph("mapped")
    x = g.input("x", (3, 64))
    y = ops.mul_mat(x, g.weight("a", (16, 64))) + g.weight("b", (16,))
    g.output("y", y)
    g.output("z", ops.mul_mat(x, g.weight("q", (8, 64), "q8_0")))
    r = np.random.default_rng(6)
    a, b = r.standard_normal((16, 64)).astype(np.float32), r.standard_normal(16).astype(np.float32)
    from graphdsl.backends.weights import storage
    qblocks = storage(g.weights["q"], r.standard_normal((8, 64)).astype(np.float32))
    path = tmp_path / "w.bin"
    layout = {"a": (0, a), "b": (4096, b), "q": (4224, qblocks)}  # 32-byte aligned offsets
    with open(path, "wb") as f:
        for off, arr in layout.values():
            f.seek(off)
            f.write(arr.tobytes())
    mm = np.memmap(path, mode="r")
    mapped = {k: mm[off:off + arr.nbytes].view(arr.dtype).reshape(arr.shape) for k, (off, arr) in layout.items()}
    run = graphdsl.compile(g, "cpu", weights=mapped)
    assert set(run._mapped) == {"a", "b", "q"} and run._wbuffer is None  # nothing copied
    xv = r.standard_normal((3, 64)).astype(np.float32)
    ref = graphdsl.compile(g, "reference", weights={"a": a, "b": b, "q": qblocks})(x=xv)
    out = run(x=xv)
    np.testing.assert_allclose(out["y"], ref["y"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["z"], ref["z"], rtol=0, atol=1e-2 * np.abs(ref["z"]).max())  # q8_0 dot
    assert "CPU (mmap, in place)" in run.placement()["weight_bytes"]
    with pytest.raises(ValueError, match="used in place"):
        run.load_weights({"a": a, "b": b, "q": qblocks})
