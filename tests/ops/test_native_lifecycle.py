"""The native side over a process's life (issue 28): forked children, many executors, Ctrl-C and
other signals inside oneDNN's products. Cases that could hang or crash run in a subprocess with
a timeout (a hung one is killed with everything it forked)."""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import graphdsl
from graphdsl.backends import onednn
from target import BACKEND
from paths import SUPPORT

HERE = SUPPORT  # the children import the test helpers (and layout_run.py lives there)

SIGINT_IGNORED = signal.getsignal(signal.SIGINT) == signal.SIG_IGN
needs_sigint = pytest.mark.skipif(SIGINT_IGNORED, reason="SIGINT is ignored in this process (nohup, a background "
                                  "job, a CI runner): a child would inherit that and never see Ctrl-C")
needs_onednn = pytest.mark.skipif(not onednn.load(), reason=f"oneDNN backend: {onednn.status()}")


def _child(code: str, timeout: float = 120, **env) -> subprocess.CompletedProcess:
    """Run code in a fresh interpreter; on a timeout, kill it and everything it forked."""
    env = {**os.environ, "GGML_NO_BACKTRACE": "1", "PYTHONPATH": str(HERE), **env}
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=HERE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"timed out after {timeout} s (hung?): {out[-1000:]} {err[-1500:]}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


# -- a forked child after a first run -------------------------------------------------------------------
@pytest.mark.children
@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
@pytest.mark.parametrize("backend", ["cpu", "ggml-cpu"])
def test_a_fork_pool_after_a_run_computes_the_same_results(backend):
    """GNU OpenMP's team and ggml's kept CPU threadpool do not survive fork: children of a process
    that had computed on "cpu" hung in their first product (3 of 3)."""
    proc = _child(f"""
        import multiprocessing as mp, os, numpy as np, graphdsl
        from graphdsl import Graph, ops
        g = Graph("mlp"); x = g.input("x", (64, 128))
        h = ops.linear(x, g.weight("w1", (128, 128))).gelu()
        g.output("y", ops.linear(h, g.weight("w2", (96, 128))))
        r = np.random.default_rng(0)
        w = {{n: r.standard_normal(v.shape).astype(np.float32) / 8 for n, v in g.weights.items()}}
        run = graphdsl.compile(g, {backend!r}, n_threads=2, weights=w)
        xs = [np.random.default_rng(i).standard_normal((64, 128)).astype(np.float32) for i in range(6)]
        parent = [run(x=v)["y"] for v in xs]
        def job(i):
            return os.getpid(), run(x=xs[i])["y"], run(x=xs[i][:40])["y"]  # a new shape, too
        with mp.get_context("fork").Pool(2) as pool:
            got = pool.map(job, range(6))
        assert all(pid != os.getpid() for pid, _, _ in got)
        worst = max(float(np.abs(y - p).max() / np.abs(p).max()) for (_, y, _), p in zip(got, parent))
        short = max(float(np.abs(s - run(x=v[:40])["y"]).max()) for (_, _, s), v in zip(got, xs))
        apart = min(float(np.abs(got[i][1] - got[i + 1][1]).max()) for i in range(5))  # negative control
        print("worst", worst, "short", short, "apart", apart, flush=True)
        run(x=xs[0])  # and the parent still runs
        print("ok")
    """, timeout=180)
    assert proc.returncode == 0 and "ok" in proc.stdout, (proc.stdout, proc.stderr[-2000:])
    worst, short, apart = (float(proc.stdout.split(k)[1].split()[0]) for k in ("worst", "short", "apart"))
    assert worst <= 1e-6 and short <= 1e-5 and apart > 1e-2, proc.stdout


# -- threads: one pool per compute running, not per executor ----------------------------------------------
@pytest.mark.children
def test_many_executors_do_not_keep_a_thread_each():
    """Each executor on "cpu" kept a ggml threadpool of its own: 300 executors, 303 threads."""
    proc = _child("""
        import os, threading, numpy as np, graphdsl
        from graphdsl import Graph, ops
        from target import BACKEND
        g = Graph("m"); x = g.input("x", (64, 64)); g.output("y", ops.linear(x, g.weight("w", (64, 64))).gelu())
        w = {"w": np.eye(64, dtype=np.float32)}
        xv = np.ones((64, 64), np.float32)
        threads = lambda: len(os.listdir("/proc/self/task"))
        graphdsl.compile(g, BACKEND, n_threads=2, weights=w)(x=xv)  # OpenMP's and ggml's first threads
        before = threads()
        kept = [graphdsl.compile(g, BACKEND, n_threads=2, weights=w) for _ in range(60)]
        for run in kept:
            run(x=xv)
        two = [threading.Thread(target=lambda k=k: [kept[k](x=xv) for _ in range(20)]) for k in range(2)]
        [t.start() for t in two]; [t.join() for t in two]
        print("grew", threads() - before)
    """)
    assert proc.returncode == 0 and "grew" in proc.stdout, proc.stderr[-2000:]
    grew = int(proc.stdout.split("grew")[1])
    assert grew <= 6, f"{grew} threads for 60 executors (two computing at once)"


# -- Ctrl-C between oneDNN's products ---------------------------------------------------------------------
@needs_onednn
def test_onednn_backend_exports_an_abort_callback():
    lib = ctypes.CDLL(onednn.library_path())
    lib.ggml_backend_init.restype = ctypes.c_void_p
    base = ctypes.CDLL(os.path.join(os.path.dirname(graphdsl._ggml.__file__), "..", "libggml", "lib", "libggml-base.so"))
    base.ggml_backend_reg_get_proc_address.restype = ctypes.c_void_p
    base.ggml_backend_reg_get_proc_address.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    reg = lib.ggml_backend_init()
    assert base.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_set_abort_callback")
    assert base.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_set_n_threads")  # positive control
    assert not base.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_no_such_proc")  # negative control


@pytest.mark.children
@needs_onednn
@needs_sigint
@pytest.mark.skipif(BACKEND != "cpu", reason="oneDNN pairs with ggml's CPU backend")
def test_ctrl_c_stops_a_chain_of_onednn_products_between_two_of_them():
    """Products back to back are one oneDNN split, which never looked at the flag: Ctrl-C waited
    for the whole chain (15-28 s against 0.6 s on ggml's CPU backend)."""
    code = textwrap.dedent("""
        import time, numpy as np, graphdsl
        from graphdsl import Graph, ops
        g = Graph("chain"); h = g.input("x", (1024, 1024)); w = g.weight("w", (1024, 1024))
        for i in range(160):
            h = ops.mul_mat(h, w)  # nothing for the CPU between them: one oneDNN split
        g.output("y", h)
        run = graphdsl.compile(g, "cpu", weights={"w": np.eye(1024, dtype=np.float32)})
        xv = np.ones((1024, 1024), np.float32)
        run(x=xv)
        t0 = time.perf_counter(); run(x=xv); full = time.perf_counter() - t0
        assert run.placement()["n_splits"] == 1, run.placement()["n_splits"]
        print("full", round(full, 3), flush=True)
        try:
            run(x=xv)
            print("finished", flush=True)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "GGML_NO_BACKTRACE": "1"}, cwd=HERE)
    try:
        line = proc.stdout.readline().strip()
        if not line.startswith("full"):
            proc.kill()
            raise AssertionError(f"child did not start: {line!r} {proc.communicate()[1][-1500:]}")
        full = float(line.split()[1])
        time.sleep(full / 10)  # the chain is under way
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        waited = time.monotonic() - sent
    finally:
        proc.kill()
    assert "interrupted" in out, (out, err[-1500:])
    # one product is 1/160 of the chain; stopping at the next one takes a few of them, not the rest
    assert waited < full / 3, f"stopped {waited:.2f} s after SIGINT; the whole chain takes {full:.2f} s"


# -- signals during oneDNN's products ---------------------------------------------------------------------
def _has_avx2() -> bool:
    try:
        return " avx2" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


@pytest.mark.children
@needs_onednn
@pytest.mark.skipif(BACKEND != "cpu", reason="oneDNN pairs with ggml's CPU backend")
@pytest.mark.skipif(not _has_avx2(), reason="runs oneDNN's AVX2 f32 GEMM (ONEDNN_MAX_CPU_ISA=AVX2): needs AVX2")
def test_signals_during_onednn_products_leave_the_heap_alone():
    """oneDNN's AVX2 f32 GEMM (what Zen 3 runs) moves its stack pointer into a malloc'd workspace;
    a signal handled on that thread wrote its frame over the heap: "corrupted size vs. prev_size"
    in 3 of 16 Ctrl-C runs on a 2-core EPYC, every run here with a signal flood."""
    code = """
        import os, signal, threading, time, numpy as np, graphdsl
        from graphdsl import Graph, ops
        g = Graph("chain"); h = g.input("x", (512, 512)); w = g.weight("w", (512, 512))
        for i in range(20):
            h = ops.scale(ops.linear(h, w), 1.0 / np.sqrt(512))
        g.output("y", h)
        r = np.random.default_rng(0)
        wv, xv = r.standard_normal((512, 512)).astype(np.float32), r.standard_normal((512, 512)).astype(np.float32)
        run = graphdsl.compile(g, "cpu", n_threads=2, weights={"w": wv})
        ref = xv.astype(np.float64)
        for i in range(20):
            ref = (ref @ wv.T.astype(np.float64)) / np.sqrt(512)
        seen = []
        signal.signal(signal.SIGUSR1, lambda *a: seen.append(1))
        stop = threading.Event()
        def flood():
            while not stop.is_set():
                os.kill(os.getpid(), signal.SIGUSR1)
                time.sleep(0.0002)
        t = threading.Thread(target=flood); t.start()
        worst = 0.0
        for i in range(25):
            y = run(x=xv)["y"]
            worst = max(worst, float(np.abs(y - ref).max() / np.abs(ref).max()))
        stop.set(); t.join()
        print("signals", len(seen), "worst", worst, flush=True)
    """
    proc = _child(code, timeout=300, ONEDNN_MAX_CPU_ISA="AVX2")
    assert proc.returncode == 0 and "worst" in proc.stdout, (proc.returncode, proc.stderr[-1500:])
    assert int(proc.stdout.split("signals")[1].split()[0]) > 10  # the flood reached the process
    assert float(proc.stdout.split("worst")[1]) < 1e-4, proc.stdout
