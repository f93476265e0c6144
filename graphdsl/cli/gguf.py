"""`graphdsl info` and `graphdsl convert`: a GGUF file described, HF checkpoints written as one."""
from __future__ import annotations

import sys
import time

from .common import need, stages


def cmd_info(args) -> int:
    print(need("graphdsl.convert.info").describe(args.file))
    return 0


def cmd_convert(args) -> int:
    conv = need("graphdsl.convert")
    print(f"converting {' + '.join(args.hf_dir)} -> {args.output} ({args.outtype}) ...", file=sys.stderr)
    t0 = time.perf_counter()
    cb, close = stages("convert")
    try:  # a bar per stage on a terminal: reading the checkpoint, encoding tensors (then gguf's write bar)
        types = conv.convert(args.hf_dir, args.output, args.outtype, progress=cb if sys.stderr.isatty() else None)
    finally:
        close()
    counts: dict[str, int] = {}
    for t in types.values():
        counts[t] = counts.get(t, 0) + 1
    print(f"wrote {args.output}: {len(types)} tensors ({', '.join(f'{n} {t}' for t, n in sorted(counts.items()))}) "
          f"in {time.perf_counter() - t0:.1f} s")
    return 0
