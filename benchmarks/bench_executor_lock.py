"""What the executor's lock costs (issue 12): calls of a one-op graph with the lock and with it
replaced by a no-op context, medians of 5 rounds of 20,000 calls, one thread.

    python benchmarks/bench_executor_lock.py
"""
from __future__ import annotations

import contextlib
import platform
import statistics
import threading
import time

import numpy as np

import graphdsl
from graphdsl import Graph


def main(n: int = 20_000, rounds: int = 5) -> None:
    g = Graph("one")
    g.output("y", g.input("x", (4, 8)) * 2.0)
    run = graphdsl.compile(g, "cpu", n_threads=1)
    x = np.ones((4, 8), np.float32)
    run(x=x)

    def per_call() -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            run(x=x)
        return (time.perf_counter() - t0) / n * 1e6

    times = {"lock": [], "no lock": []}
    for _ in range(rounds):
        run.lock = threading.RLock()
        times["lock"].append(per_call())
        run.lock = contextlib.nullcontext()
        times["no lock"].append(per_call())
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{platform.processor() or platform.machine()}: one-op call {med['lock']:.2f} us with the lock, "
          f"{med['no lock']:.2f} us without ({med['lock'] - med['no lock']:+.2f} us)")


if __name__ == "__main__":
    main()
