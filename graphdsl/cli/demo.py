"""`graphdsl demo`: runs `graphdsl.demo.run_demo` and prints its report; and `draw_or_dot`, the
drawing with a .dot fallback that `demo` and `inspect --draw` share."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from .common import bar, need, show


def cmd_demo(args) -> int:
    report_demo(args.backend, spec=args.spec, root=Path(args.cache) if args.cache else None,
                draw=not args.no_draw, profile=args.profile, n_threads=args.threads)
    return 0


def report_demo(backend: str = "auto", *, spec: str = "small", root: Path | None = None, draw: bool = True,
                profile: bool = False, n_threads: int | None = None, out=None):
    """Run the demo and print its report to `out` (stdout); returns (DemoResult, drawing path or None)."""
    demo = need("graphdsl.demo")
    from .. import inspect
    out = out or sys.stdout

    def say(*a):
        print(*a, file=out, flush=True)

    b = bar(7 if draw else 6, "graphdsl demo")

    def on_stage(name):
        if b is not None:
            b.set_description(name)
            b.update()

    try:
        res = demo.run_demo(backend, spec=spec, root=root, n_threads=n_threads, on_stage=on_stage)
        mmproj, text_path = res.files
        drawing = note = None
        if draw:
            t0 = time.perf_counter()
            drawing, note = draw_or_dot(res.graph, mmproj.parent / "demo-graph.svg")
            res.timings["draw graph"] = time.perf_counter() - t0
            on_stage("draw graph")
    finally:
        if b is not None:
            b.close()
    spans = res.spans
    say(f"graphdsl demo: {len(spans)} chunks -> one graph: " + " ".join(f"{s.kind}[{s.n_tokens}]" for s in spans))
    say(f"  files: {mmproj} + {text_path.name} ({'built now' if res.built else 'cached'})")
    say("")
    show(inspect.summary(res.graph, group_by="blocks"), out)
    say("")
    show(inspect.lowered(res.executor), out)
    if profile:
        say("")
        show(inspect.profile(res.executor, res.feeds, repeat=1), out)
    say("")
    say("stages:")
    for k, v in res.timings.items():
        say(f"  {k:<22} {v * 1e3:9.1f} ms")
    say("")
    say(f"output: embd {res.embd_dtype}{list(res.embd_shape)} on {res.executor.backend}; spans: "
        + ", ".join(f"{s.kind} rows {s.start}..{s.start + s.n_tokens - 1}" for s in spans))
    if drawing is not None:
        say(f"graph drawing: {drawing}" + (f" ({note})" if note else ""))
    return res, drawing


def draw_or_dot(graph, path: Path, *, force: bool = True, inputs=()) -> tuple[Path, str]:
    """Draw to `path` (SVG/PNG); without Graphviz write the .dot next to it and say how to install it.

    Written atomically (graphdsl.fileio); the .dot fallback obeys check_output(force, inputs)."""
    from .. import inspect
    from ..fileio import atomic_path, check_output
    from ..inspect import GraphvizNotFound
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            inspect.draw(graph, tmp)
        return path, ""
    except GraphvizNotFound:
        from ..inspect.drawing import INSTALL_HINT
        dot = check_output(path.with_suffix(".dot"), inputs, force=force, what="drawing")
        with atomic_path(dot) as tmp:
            inspect.draw(graph, tmp)
        return dot, "DOT only: " + INSTALL_HINT
