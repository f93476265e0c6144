"""embed-dataset throughput: items/s on a folder of 64 images, serially, with 1 and 2 worker
processes, and on Ray Data with 2 actors (when Ray is installed: `pip install 'graphdsl[ray]'`).

Run:  python benchmarks/bench_dataset.py [--images 64] [--spec small] [--repeat 1]
Model: the demo's mmproj (spec "small": CLIP ViT-Ti/16 at 224 + LLaVA projector), built once in
a temporary cache. Images: random 320x240 PNGs (decoded and resized as part of the work). Each
row is end to end, as a user sees it: workers start, load the models, compile, embed and write
the Parquet shards (shards of 16 images). The ggml threads split the cores: one worker gets them
all, two get half each. Prints a markdown table with the machine and the date.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--spec", default="small", choices=["small", "tiny"])
    ap.add_argument("--repeat", type=int, default=1, help="runs per row (median)")
    ap.add_argument("--shard-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None,
                    help="ggml threads of every worker (default: the cores split between the workers)")
    args = ap.parse_args()

    from graphdsl import demo
    from graphdsl.dataset import embed_dataset, read_output

    root = Path(tempfile.mkdtemp(prefix="graphdsl-bench-ds-"))
    try:
        mmproj, _, _ = demo.build_files(args.spec, root / "cache")
        imgs = root / "imgs"
        imgs.mkdir()
        rng = np.random.default_rng(0)
        for i in range(args.images):
            Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(imgs / f"{i:04d}.png")
        cores = os.cpu_count() or 1
        rows = [("serial (in process)", dict(workers=0, n_threads=cores)),
                ("1 worker process", dict(workers=1, n_threads=cores)),
                ("2 worker processes", dict(workers=2, n_threads=max(1, cores // 2)))]
        try:
            import ray  # noqa: F401
            rows.append(("Ray Data, 2 actors (local)", dict(ray=True, ray_actors=2, n_threads=max(1, cores // 2))))
        except ImportError:
            print("(Ray not installed: no Ray row)")
        if args.threads:  # e.g. 1 on a busy machine, where ggml's spinning threads wait on each other
            rows = [(label, {**kw, "n_threads": args.threads}) for label, kw in rows]
        results, tables = [], []
        for label, kw in rows:
            times = []
            for r in range(args.repeat):
                out = root / f"out-{len(results)}-{r}"
                t0 = time.perf_counter()
                embed_dataset(imgs, out, mmproj=mmproj, shard_size=args.shard_size, **kw)
                times.append(time.perf_counter() - t0)
                tables.append(read_output(out))
            med = statistics.median(times)
            results.append((label, kw.get("n_threads"), med, args.images / med))
        same = all(t.equals(tables[0]) for t in tables[1:])
        print(f"\nembed-dataset, {args.images} images 320x240 -> demo '{args.spec}' mmproj, shards of "
              f"{args.shard_size}; {platform.processor() or platform.machine()}, {cores} cores, "
              f"{datetime.date.today()}; all outputs identical: {same}\n")
        print("| path | ggml threads each | wall (s) | items/s |")
        print("|---|---|---|---|")
        for label, th, med, rate in results:
            print(f"| {label} | {th} | {med:.2f} | {rate:.1f} |")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
