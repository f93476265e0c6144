"""Run sweep cases by hand and keep their files:

    .venv/bin/python tests/support/sweep_run.py ARCH INDEX [INDEX ...]     # the cases a failure printed
    .venv/bin/python tests/support/sweep_run.py ARCH --first N             # cases 0 .. N-1
    .venv/bin/python tests/support/sweep_run.py --all --first N            # every arch (prints a summary)

Each case's HF folder, media, GGUF and outputs stay in --work (default build/sweep/).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import paths  # noqa: E402

paths.on_path()

import sweep  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("arch", nargs="?")
    ap.add_argument("indices", nargs="*", type=int)
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--all", action="store_true")
    ap.add_argument("--work", type=Path, default=sweep.core.ROOT / "build" / "sweep")
    a = ap.parse_args(argv)
    archs = list(sweep.ENTRIES) if a.all else [a.arch]
    bad = 0
    for arch in archs:
        entry = sweep.ENTRIES[arch]
        why = entry.skip()
        if why:
            print(f"{arch}: skipped: {why}")
            continue
        t = time.perf_counter()
        idx = a.indices or list(range(a.first))
        res = sweep.run_arch(entry, idx, a.work)
        for r in res:
            bad += not r.ok()
            print(("ok   " if r.ok() else "MISS ") + r.report())
        print(f"{arch}: {sum(r.ok() for r in res)}/{len(res)} ok in {time.perf_counter() - t:.1f} s", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
