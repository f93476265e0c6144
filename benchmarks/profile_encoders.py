"""Where the time goes: `inspect.profile` by op for CLIP B/16 and Whisper-base (the benchmark's
real-size models, random weights) with a chosen weight type, on backend "cpu" (oneDNN + ggml).

    python benchmarks/profile_encoders.py [--wtype bf16] [--threads 2]
"""
import argparse
import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import run as bench  # noqa: E402 - the benchmark's model builders

import graphdsl  # noqa: E402
from graphdsl import inspect  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wtype", default="bf16", choices=["f32", "f16", "bf16"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backend", default="cpu")
    args = ap.parse_args()
    for make in (bench.clip_b16, bench.whisper_base):
        gcfg, build, weights, inputs, _ = make()
        g = build(dataclasses.replace(gcfg, wtype=args.wtype))
        exe = graphdsl.compile(g, args.backend, weights={k: weights[k] for k in g.weights}, n_threads=args.threads)
        p = inspect.profile(exe, inputs, repeat=3)
        print(p.headline())
        print(p.table(by="op", top=10))
        print()


if __name__ == "__main__":
    main()
