"""The local pool of worker processes, and how it stops: at once, and never behind the manifest.

- Ctrl-C (or any error) in the parent: the workers are killed at once (SIGTERM: a worker inside
  a ggml compute would only notice a Python-level stop when the compute returns), shards that
  were finished by then are recorded, and the temporary file of any shard a worker was writing
  is removed by the caller (`integrity.remove_strays`). The workers ignore SIGINT themselves: a
  terminal's Ctrl-C reaches the whole process group, and a worker that took it as an error of
  its shard would go on to the next one.
- The parent killed (`kill -9`, OOM): the workers die with it. On Linux the kernel sends them
  SIGKILL (prctl PR_SET_PDEATHSIG); everywhere a thread waits on multiprocessing's pipe from the
  parent, whose end closes when the parent dies, and ends the process.
"""
from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as mp
import os
import queue
import signal
import sys
import threading
from concurrent.futures import ProcessPoolExecutor, as_completed

from .shards import embed_shard

_FE = None  # a worker process's FileEmbedder
_TICKS = None  # a worker's queue of per-item ticks back to the parent's progress bar
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)
    parent = mp.parent_process()
    if parent is not None:
        def watch():
            parent.join()  # returns when the parent's end of the pipe closes: it has exited
            os._exit(1)
        threading.Thread(target=watch, name="graphdsl-parent-watch", daemon=True).start()


def _init_worker(cfg: dict, ticks, parent_pid: int) -> None:
    global _FE, _TICKS
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; see the module docstring
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked by the parent while spawning
    _die_with_parent(parent_pid)
    from .embedder import load_embedder
    _FE, _TICKS = load_embedder(cfg), ticks


def _run_shard(task) -> dict:
    index, items, out, on_error = task
    return embed_shard(_FE, index, items, out, tick=_TICKS.put, on_error=on_error)


@contextlib.contextmanager
def _sigint_blocked():
    """Children spawned in here start with SIGINT blocked, so a Ctrl-C while they import and load
    the models does not print their tracebacks; the parent still gets it through its other threads."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _kill_workers(pool: ProcessPoolExecutor) -> None:
    procs = list((getattr(pool, "_processes", None) or {}).values())  # Python < 3.14 has no terminate_workers()
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        with contextlib.suppress(Exception):
            p.terminate()
    for p in procs:
        p.join(5)
        if p.is_alive():
            p.kill()
            p.join(5)


def run_pool(pending, cfg: dict, workers: int, finished, tick) -> None:
    """Embed the `pending` shards on `workers` spawned processes; finished(entry) as each is written."""
    ctx = mp.get_context("spawn")  # no fork of a process holding ggml threads and mmaps
    if cfg["n_threads"] is None:
        cfg = {**cfg, "n_threads": max(1, (os.cpu_count() or 1) // workers)}
    ticks = ctx.Queue()
    stop = threading.Event()

    def relay():  # only this process reads: a worker killed while putting cannot block a reader's stop
        while not stop.is_set():
            try:
                tick(ticks.get(timeout=0.1))
            except queue.Empty:
                pass
    t = threading.Thread(target=relay, name="graphdsl-ticks", daemon=True)
    t.start()
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(cfg, ticks, os.getpid()))
    futs: list = []
    recorded = set()
    try:
        with _sigint_blocked():  # the workers are spawned by submit()
            for task in pending:
                futs.append(pool.submit(_run_shard, task))
        for f in as_completed(futs):  # listed in the manifest as soon as each is written
            finished(f.result())
            recorded.add(f)
        pool.shutdown()
    except BaseException:
        _kill_workers(pool)
        for f in futs:  # written before the stop: keep them (their files are whole)
            if f not in recorded and f.done() and not f.cancelled() and f.exception() is None:
                finished(f.result())
        raise
    finally:
        stop.set()
        t.join(timeout=2)
        ticks.cancel_join_thread()
        ticks.close()
