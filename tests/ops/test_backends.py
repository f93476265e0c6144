"""Multi-backend schedules: BLAS + CPU (a real two-backend split on a CPU-only machine), RPC and
CUDA. Each test skips cleanly when the installed libggml lacks the backend; build one with
scripts/build_libggml.sh (see the README)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import graphdsl
from graphdsl import Graph, _ggml, ops
from graphdsl.backends.rpc import spawn_rpc_server
from target import assert_close


def _mlp(n=64, d=96):
    g = Graph("mlp")
    x = g.input("x", (n, d))
    with g.scope("ffn"):
        h = ops.linear(x, g.weight("up.weight", (4 * d, d)), g.weight("up.bias", (4 * d,)), name="up")
        y = ops.linear(h.gelu_erf(name="act"), g.weight("down.weight", (d, 4 * d)), name="down")
    g.output("y", ops.norm(y + x, 1e-5))
    r = np.random.default_rng(0)
    w = {k: (r.standard_normal(v.shape) * 0.1).astype(np.float32) for k, v in g.weights.items()}
    return g, w, r.standard_normal((n, d)).astype(np.float32)


def _device_types():
    return {d["backend"].lower() for d in graphdsl.devices()}


@pytest.mark.skipif("blas" not in _device_types(), reason="libggml built without BLAS (scripts/build_libggml.sh blas)")
def test_blas_plus_cpu_splits_and_matches_reference():
    g, w, x = _mlp()
    run = graphdsl.compile(g, "blas", weights=w)
    out = run(x=x)["y"]
    ref = graphdsl.compile(g, "reference", weights=w)(x=x)["y"]
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)
    p = run.placement()
    assert p["backends"] == ["BLAS", "CPU"]
    assert p["nodes"]["ffn.up"] == "BLAS" and p["nodes"]["ffn.act"] == "CPU"
    assert "unsupported by BLAS" in p["fallbacks"]["ffn.act"]
    assert p["n_splits"] >= 2
    with pytest.raises(ValueError, match="strict placement"):
        graphdsl.compile(g, "blas", weights=w, strict=True)(x=x)


# The RPC tests stop their servers only after releasing the executors that use them, and not in a
# `finally`: ggml's client aborts the process when a server under a live executor is gone. A failing
# test leaves its server running until pytest exits (spawn_rpc_server ties it to this process).
@pytest.mark.skipif(not _ggml.has_backend("RPC"), reason="libggml built without RPC (scripts/build_libggml.sh rpc)")
def test_rpc_server_on_loopback_matches_reference():
    server, endpoint = spawn_rpc_server()  # `graphdsl rpc-server` in a child process
    g, w, x = _mlp(n=8, d=32)
    run = graphdsl.compile(g, f"rpc://{endpoint}", weights=w)
    ref = graphdsl.compile(g, "reference", weights=w)
    for _ in range(2):  # the second run re-uses the allocated graph (the server recomputes it)
        np.testing.assert_allclose(run(x=x)["y"], ref(x=x)["y"], rtol=1e-4, atol=1e-4)
    x2 = x[::-1].copy()  # new input values reach the server on every run
    np.testing.assert_allclose(run(x=x2)["y"], ref(x=x2)["y"], rtol=1e-4, atol=1e-4)
    p = run.placement()
    assert p["backends"][0].startswith("RPC0[") and p["weight_bytes"] == {p["backends"][0]: sum(
        v.nbytes for v in w.values())}
    assert p["nodes"]["ffn.up"] == p["backends"][0]
    del run  # frees the server-side buffers while the server is still there
    server.kill()
    server.wait(timeout=10)


@pytest.mark.skipif(not _ggml.has_backend("RPC"), reason="libggml built without RPC (scripts/build_libggml.sh rpc)")
def test_rpc_client_exits_cleanly_after_its_server_is_gone(tmp_path):
    """ggml's RPC client aborts when a free cannot reach the server; at exit graphdsl forgets RPC
    buffers instead of freeing them, so a script whose server stopped first still exits with 0."""
    script = tmp_path / "client.py"
    script.write_text(f"""
import sys
sys.path[:0] = [{str(Path(__file__).parent)!r}, {str(Path(__file__).parents[1] / 'support')!r}]
import graphdsl
from graphdsl.backends.rpc import spawn_rpc_server
from test_backends import _mlp
server, endpoint = spawn_rpc_server()
g, w, x = _mlp(n=8, d=32)
run = graphdsl.compile(g, "rpc://" + endpoint, weights=w)
run(x=x)
other = graphdsl.compile(g, "rpc://" + endpoint, weights=w)
other(x=x)
runtime = other.runtime  # outlives its executor
del other
server.kill()
server.wait()
print("done")
""")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 0 and "done" in proc.stdout, proc.stderr[-2000:]


@pytest.mark.skipif(not _ggml.has_backend("RPC"), reason="libggml built without RPC (scripts/build_libggml.sh rpc)")
def test_rpc_server_cache_serves_a_second_upload_by_hash(tmp_path):
    """Tensors over 10 MiB go by hash first (RPC_CMD_SET_TENSOR_HASH); a server with --cache keeps
    them, so the second client's upload is a hit and must still give the right weights."""
    server, endpoint = spawn_rpc_server(cache=tmp_path)
    g = Graph("big")
    x = g.input("x", (4, 1024))
    g.output("y", ops.linear(x, g.weight("w", (2816, 1024))))  # 11 MiB of f32
    r = np.random.default_rng(1)
    w = {"w": r.standard_normal((2816, 1024)).astype(np.float32)}
    xv = r.standard_normal((4, 1024)).astype(np.float32)
    ref = graphdsl.compile(g, "reference", weights=w)(x=xv)["y"]
    for _ in range(2):
        run = graphdsl.compile(g, f"rpc://{endpoint}", weights=w)
        np.testing.assert_allclose(run(x=xv)["y"], ref, rtol=1e-4, atol=1e-3)
        assert len(list(tmp_path.rglob("*"))) >= 1  # the server stored the tensor under its hash
        del run
    server.kill()
    server.wait(timeout=10)


@pytest.mark.skipif(not _ggml.has_backend("RPC"), reason="libggml built without RPC (scripts/build_libggml.sh rpc)")
def test_two_rpc_servers_in_one_process_are_distinct_devices():
    """Each server's devices carry its endpoint in their names, each executor uses its own server,
    and "auto" stays local even after servers were registered in this process."""
    (s1, e1), (s2, e2) = spawn_rpc_server(), spawn_rpc_server()
    g, w, x = _mlp(n=8, d=32)
    ref = graphdsl.compile(g, "reference", weights=w)(x=x)["y"]
    runs = [graphdsl.compile(g, f"rpc://{e}", weights=w) for e in (e1, e2)]
    for run, e in zip(runs, (e1, e2)):
        np.testing.assert_allclose(run(x=x)["y"], ref, rtol=1e-4, atol=1e-4)
        assert run.placement()["nodes"]["ffn.up"] == f"RPC0[{e}]"
    rpc = {d["name"] for d in graphdsl.devices() if d["backend"] == "RPC"}
    assert all(sum(n.endswith(f"[{e}]") for n in rpc) == 1 for e in (e1, e2)), rpc
    assert not any(n.startswith("RPC") for n in graphdsl.compile(g, "auto").device_names)
    del runs, run
    for s in (s1, s2):
        s.kill()
        s.wait(timeout=10)


@pytest.mark.parametrize("endpoint", ["rpc://", "rpc://127.0.0.1", "rpc://127.0.0.1:http", "rpc://:50052",
                                      "rpc://127.0.0.1:70000"])
def test_malformed_rpc_endpoints_are_rejected_before_ggml(endpoint):
    with pytest.raises(ValueError, match="expected rpc://HOST:PORT"):
        graphdsl.compile(_mlp(n=8, d=32)[0], endpoint)


@pytest.mark.skipif(_ggml.has_backend("RPC"), reason="this libggml has RPC")
def test_rpc_without_an_rpc_build_is_a_clear_error():
    with pytest.raises(ValueError, match="build_libggml.sh rpc"):
        spawn_rpc_server()
    with pytest.raises(ValueError, match="build_libggml.sh rpc"):
        graphdsl.compile(_mlp(n=8, d=32)[0], "rpc://127.0.0.1:1")


@pytest.mark.cuda
@pytest.mark.skipif("cuda" not in _device_types(), reason="no CUDA device (needs a CUDA build of libggml-python)")
def test_cuda_matches_reference():
    g, w, x = _mlp()
    run = graphdsl.compile(g, "cuda", weights=w)
    assert_close(run(x=x)["y"], graphdsl.compile(g, "reference", weights=w)(x=x)["y"], rtol=1e-4, atol=1e-4)
    assert run.placement()["nodes"]["ffn.up"].startswith("CUDA")


def test_devices_say_what_the_cpu_backend_was_built_with():
    """graphdsl devices reports the CPU backend's features (SIMD levels, LLAMAFILE), so a user can
    see whether they run the portable wheel or a build for their machine."""
    cpu = next(d for d in graphdsl.devices() if d["type"] == "cpu")
    assert isinstance(cpu["features"], dict) and cpu["features"], cpu
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in cpu["features"].items())
