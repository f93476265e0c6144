"""`graphdsl inspect`, `view` and `bench`: one model's graph (the demo's mixed batch, an mmproj's
encoder, a text GGUF's token table) summarised, drawn, profiled, compared, served as a page or timed."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..fileio import atomic_open, atomic_path
from . import parser
from .common import bar, need, show


def load_graph(args):
    """(graph, feeds, weights, label) for MODEL: "demo" or an mmproj GGUF (one encoder)."""
    return need("graphdsl.demo").model_graph(args.model, modality=args.modality, spec=args.spec,
                                             image=args.image, audio=args.audio, check_finite=args.check_finite)


def _compile(g, weights, args):
    import graphdsl
    return graphdsl.compile(g, args.backend, n_threads=args.threads, precision=args.precision, weights=weights)


def cmd_inspect(args) -> int:
    from .. import inspect
    g, feeds, weights, label = load_graph(args)
    print(f"# {label}")
    if args.print:
        print(g)
    show(inspect.summary(g, None if args.nodes else args.group_by))
    if args.draw:
        from .demo import draw_or_dot
        ins = next(i for opt, _, i in parser.outputs(args) if opt == "--draw")  # for the .dot fallback
        path, note = draw_or_dot(g, Path(args.draw), force=args.force, inputs=ins)
        print(f"graph drawing: {path}" + (f" ({note})" if note else ""))
    if not (args.lowered or args.profile or args.capture or args.diff):
        return 0
    run = _compile(g, weights, args)
    run(feeds)
    if args.lowered:
        show(inspect.lowered(run))
    if args.profile:
        prof = inspect.profile(run, feeds, repeat=args.repeat)
        show(prof)
        if args.chart:
            with atomic_path(args.chart) as tmp:
                prof.chart(tmp, by=args.chart_by)
            print(f"profile chart: {args.chart}")
    if args.capture:
        got = inspect.capture(run, feeds, args.capture)
        for k, v in got.items():
            print(f"%{k}: {v.dtype}{list(v.shape)} mean {v.mean():.4g} std {v.std():.4g} max|x| {np.abs(v).max():.4g}")
        if args.capture_out:
            with atomic_open(args.capture_out) as fh:
                np.savez(fh, **got)
            print(f"wrote {args.capture_out}: {len(got)} arrays")
    if args.diff:
        import graphdsl
        ref = graphdsl.compile(g, "reference", weights=weights)
        show(inspect.diff(run, ref, feeds, rel_l2=args.rel_l2))
    return 0


def _view_graph(args):
    """(graph, inputs, weights, label): an mmproj's encoder or the demo (as inspect), or a text GGUF's table."""
    if args.model != "demo":
        from ..gguf_io import read_gguf
        if read_gguf(args.model).architecture != "clip":  # a text model: its token table on a few ids
            from ..models.common import graph_of
            tm = need("graphdsl.models.text").from_gguf(args.model, check_finite=args.check_finite)
            ids = np.arange(min(8, tm.block.cfg.n_vocab), dtype=np.int32)
            g = graph_of(tm.block, ids.shape, Path(args.model).stem)
            return g, {"ids": ids}, {k: tm.weights[k] for k in g.weights}, f"{Path(args.model).name} (text)"
    return load_graph(args)


def cmd_view(args) -> int:
    import graphdsl

    from ..inspect.view import view
    g, feeds, weights, label = _view_graph(args)
    run = _compile(g, weights, args)
    run(feeds)  # a run first, so each node shows its backend
    rep = None
    if args.diff:
        from .. import inspect
        rep = inspect.diff(run, graphdsl.compile(g, "reference", weights=weights), feeds, rel_l2=args.rel_l2)
    v = view(run, feeds, profile=args.profile or None, diff=rep, path=args.output, serve_page=not args.output,
             port=args.port, title=label, repeat=args.repeat)
    if args.output:
        print(f"wrote {args.output}: {label}, {sum(n.op != 'weight' for n in g.live_nodes())} nodes (open it in a browser)")
        return 0
    v.serve_forever(f"{label}: serving {v.url} (the page is also at {v.path}); Ctrl-C stops")
    return 0


def cmd_bench(args) -> int:
    from .. import inspect
    from ..inspect.table import si
    g, feeds, weights, label = load_graph(args)
    run = _compile(g, weights, args)
    for _ in range(args.warmup):
        run(feeds)
    times = []
    b = bar(args.repeat, "bench")
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        run(feeds)
        times.append(time.perf_counter() - t0)
        if b:
            b.update()
    if b:
        b.close()
    flops = inspect.summary(g).flops or 0
    med = float(np.median(times))
    print(f"{label} on {run.backend} ({run.n_threads} threads, precision {args.precision}): "
          f"median {med * 1e3:.2f} ms, min {min(times) * 1e3:.2f} ms, mean {np.mean(times) * 1e3:.2f} ms "
          f"over {args.repeat} runs; {si(flops)} FLOPs -> {flops / med / 1e9:.2f} GFLOP/s")
    return 0
