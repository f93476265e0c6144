"""The `graphdsl` command: a thin layer of argument parsing and printing over the library.

    graphdsl devices                         ggml devices and what backend="auto" picks
    graphdsl info FILE.gguf                  metadata, tensors and the detected model
    graphdsl inspect [MODEL] [--draw g.svg] [--profile] [--lowered] [--diff] ...
    graphdsl view [MODEL | TEXT.gguf] [--profile] [--diff] [-o page.html | --port 8000]
    graphdsl embed [--mmproj M.gguf] [--text-model T.gguf] [--prompt "... <image> ..." | --tokens 1,<image>,2]
                   [--image a.png]... [--audio b.wav]... -o out.npy [--spans out.spans.json] [-f]
    graphdsl embed-dataset FOLDER|MANIFEST [--mmproj M.gguf] [--text-model T.gguf] -o OUT/ [--workers N | --ray [ADDR]]
    graphdsl preprocess image|audio|text INPUT ... [-o out.npy|out.npz [-f]]
                   [--mode clip|siglip|pad|ARCH] [--mmproj M.gguf]   (images: graphdsl.cli_preprocess)
    graphdsl convert HF_DIR [HF_DIR2] -o OUT.gguf [-f] [--outtype f16]
    graphdsl bench [MODEL] [--repeat 20]
    graphdsl demo
    graphdsl rpc-server [--host 127.0.0.1 | --host 0.0.0.0 --allow-remote] [--port 50052] [--threads T] ...

MODEL is an mmproj GGUF (its vision or audio encoder, on the bundled demo image / speech clip)
or "demo" (the demo's mixed batch, the default). Errors print one line and exit with status 1;
--debug shows the traceback. Usage errors (a bad option value, an output that is an input or
exists without --force) exit with status 2 before any work. Output files are written exactly
where named (`-o x` writes x, no ".npy" is added), through a temporary file, so a failed write
leaves the previous file whole (graphdsl.fileio).
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from . import cli_parser
from .fileio import atomic_open, atomic_path


class Unavailable(Exception):
    """A part of graphdsl that this command needs is not installed/written yet."""


def _need(module: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and (e.name == module or module.startswith(e.name + ".")):
            raise Unavailable(f"not available yet: {module} is missing from this graphdsl") from None
        raise


def _bar(total: int, desc: str):
    """A tqdm progress bar on a terminal (stderr), else None."""
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, file=sys.stderr, leave=False)


def _show(obj) -> None:
    from .inspect.table import show
    show(obj)


# -- devices, info, convert ---------------------------------------------------------------------
def cmd_devices(args) -> int:
    import graphdsl
    from graphdsl.backends.ggml import resolve_devices

    from .inspect.table import Table, nbytes
    t = Table(["name", "type", "backend", "memory free / total", "description"], title="ggml devices")
    for d in graphdsl.devices():
        mem = f"{nbytes(d.get('memory_free', 0))} / {nbytes(d.get('memory_total', 0))}"
        t.add(d["name"], d["type"], d.get("backend", ""), mem, d.get("description", ""))
    for d in graphdsl.devices():
        if d.get("features"):  # the build: a portable wheel (AVX2) or one made for this machine
            t.notes.append(f"{d['name']} features: " + " ".join(k if v in ("1", "") else f"{k}={v}"
                                                               for k, v in d["features"].items()))
    t.notes.append(f'backend="auto" runs on: {" -> ".join(resolve_devices("auto"))} (accelerators first, CPU last)')
    _show(t)
    return 0


def cmd_info(args) -> int:
    print(_need("graphdsl.convert.info").describe(args.file))
    return 0


def cmd_convert(args) -> int:
    conv = _need("graphdsl.convert")
    print(f"converting {' + '.join(args.hf_dir)} -> {args.output} ({args.outtype}) ...", file=sys.stderr)
    t0 = time.perf_counter()
    cb, close = _stages("convert")
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


def _save(path: str, arr: np.ndarray) -> None:
    # a file object, so np.save writes exactly `path` (given a name it would append ".npy")
    with atomic_open(path) as fh:
        np.save(fh, arr)


# -- preprocess ------------------------------------------------------------------------------------
def _progress(desc: str, total: int):
    bar = _bar(total, desc)
    if bar is None:
        return None, lambda: None

    def cb(done, _total):
        bar.n = done
        bar.refresh()
    return cb, bar.close


def cmd_preprocess(args) -> int:
    _need("graphdsl.preprocess")
    if args.kind == "text":
        tok = _tokenizer(args)
        ids = tok.encode(" ".join(args.inputs))
        print(f"{len(ids)} tokens: {ids.tolist()}")
        arr = ids
    else:  # the frames / features embed feeds, or a plain resize / Whisper log-mel (graphdsl.cli_preprocess)
        from . import cli_preprocess as cp
        image = args.kind == "image"
        cb, close = _progress("images" if image else "audio", len(args.inputs))
        try:
            per = ([cp.item_arrays(it) for it in cp.image_items(args, progress=cb)] if image
                   else cp.audio_items(args, progress=cb))
        finally:
            close()
        main = "pixel_values" if image else "input_features"
        for src, arrays in zip(args.inputs, per):
            if "n_valid" in arrays:  # Whisper's windows
                x = arrays[main]
                print(f"{src}: {len(x)} window(s) of f32{list(x.shape[1:])}, valid frames {arrays['n_valid'].tolist()}")
            else:
                print(cp.describe(src, arrays, main))
        if args.output:  # Whisper windows of several clips are joined (n_valid says where each one is)
            windows = not image and all(a[main].ndim == 3 for a in per)
            print(f"wrote {args.output}: " + cp.save_items(args.output, per, main, concat=windows, dropped=("n_valid",)))
        return 0
    if args.output:
        _save(args.output, arr)
        print(f"wrote {args.output}: {arr.dtype}{list(arr.shape)}")
    return 0


def _seconds(args) -> dict:
    return {} if args.max_seconds is None else {"max_seconds": args.max_seconds}


def _tokenizer(args):
    pre = _need("graphdsl.preprocess")
    if getattr(args, "tokenizer", None):
        return pre.TextTokenizer.from_file(args.tokenizer)
    model = getattr(args, "text_model", None)
    if model:  # the file's embedded tokenizer.json, else its vocabulary (BERT WordPiece)
        from .gguf_io import load_text
        return _need("graphdsl.models.text").tokenizer_of(load_text(model)[0])
    raise ValueError("text needs --tokenizer tokenizer.json (or --text-model FILE.gguf with an embedded tokenizer)")


# -- models for inspect / bench / embed ------------------------------------------------------------
def _load_graph(args):
    """(graph, feeds, weights, label) for MODEL: "demo" or an mmproj GGUF (one encoder)."""
    return _need("graphdsl.demo").model_graph(args.model, modality=args.modality, spec=args.spec,
                                              image=args.image, audio=args.audio, check_finite=args.check_finite)


def _compile(g, weights, args):
    import graphdsl
    return graphdsl.compile(g, args.backend, n_threads=args.threads, precision=args.precision, weights=weights)


def cmd_inspect(args) -> int:
    from . import inspect
    g, feeds, weights, label = _load_graph(args)
    print(f"# {label}")
    if args.print:
        print(g)
    _show(inspect.summary(g, None if args.nodes else args.group_by))
    if args.draw:
        from .demo import draw_or_dot
        ins = next(i for opt, _, i in cli_parser.outputs(args) if opt == "--draw")  # for the .dot fallback
        path, note = draw_or_dot(g, Path(args.draw), force=args.force, inputs=ins)
        print(f"graph drawing: {path}" + (f" ({note})" if note else ""))
    if not (args.lowered or args.profile or args.capture or args.diff):
        return 0
    run = _compile(g, weights, args)
    run(feeds)
    if args.lowered:
        _show(inspect.lowered(run))
    if args.profile:
        prof = inspect.profile(run, feeds, repeat=args.repeat)
        _show(prof)
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
        rep = inspect.diff(run, ref, feeds, rel_l2=args.rel_l2)
        _show(rep)
    return 0


def _view_graph(args):
    """(graph, inputs, weights, label): an mmproj's encoder or the demo (as inspect), or a text GGUF's table."""
    if args.model != "demo":
        from .gguf_io import read_gguf
        if read_gguf(args.model).architecture != "clip":  # a text model: its token table on a few ids
            from .models.common import graph_of
            tm = _need("graphdsl.models.text").from_gguf(args.model, check_finite=args.check_finite)
            ids = np.arange(min(8, tm.block.cfg.n_vocab), dtype=np.int32)
            g = graph_of(tm.block, ids.shape, Path(args.model).stem)
            return g, {"ids": ids}, {k: tm.weights[k] for k in g.weights}, f"{Path(args.model).name} (text)"
    return _load_graph(args)


def cmd_view(args) -> int:
    import graphdsl

    from .inspect.view import view
    g, feeds, weights, label = _view_graph(args)
    run = _compile(g, weights, args)
    run(feeds)  # a run first, so each node shows its backend
    rep = None
    if args.diff:
        from . import inspect
        rep = inspect.diff(run, graphdsl.compile(g, "reference", weights=weights), feeds, rel_l2=args.rel_l2)
    v = view(run, feeds, profile=args.profile or None, diff=rep, path=args.output, serve_page=not args.output,
             port=args.port, title=label, repeat=args.repeat)
    if args.output:
        print(f"wrote {args.output}: {label}, {sum(n.op != 'weight' for n in g.live_nodes())} nodes (open it in a browser)")
        return 0
    v.serve_forever(f"{label}: serving {v.url} (the page is also at {v.path}); Ctrl-C stops")
    return 0


def cmd_bench(args) -> int:
    from .inspect.table import si
    g, feeds, weights, label = _load_graph(args)
    run = _compile(g, weights, args)
    for _ in range(args.warmup):
        run(feeds)
    times = []
    bar = _bar(args.repeat, "bench")
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        run(feeds)
        times.append(time.perf_counter() - t0)
        if bar:
            bar.update()
    if bar:
        bar.close()
    from . import inspect
    flops = inspect.summary(g).flops or 0
    med = float(np.median(times))
    print(f"{label} on {run.backend} ({run.n_threads} threads, precision {args.precision}): "
          f"median {med * 1e3:.2f} ms, min {min(times) * 1e3:.2f} ms, mean {np.mean(times) * 1e3:.2f} ms "
          f"over {args.repeat} runs; {si(flops)} FLOPs -> {flops / med / 1e9:.2f} GFLOP/s")
    return 0


def _stages(desc: str):
    """(progress(stage, done, total), close) drawing a tqdm bar on a terminal; no-ops when piped."""
    bar = [None]

    def cb(stage, done, total):
        if bar[0] is None:
            bar[0] = _bar(total, desc) or False
        b = bar[0]
        if b:
            if b.total != total:  # a new stage with its own count (convert: folders, then tensors)
                b.reset(total=total)
            b.set_description(f"{desc}: {stage}", refresh=False)
            b.n = done
            b.refresh()

    return cb, lambda: bar[0] and bar[0].close()


def cmd_embed(args) -> int:
    embed = _need("graphdsl.embed")
    from graphdsl.backends.ggml import resolve_devices
    t0 = time.perf_counter()
    cb, close = _stages("embed")
    try:
        out = embed.embed_files(args.mmproj, args.text_model, images=args.image or [], audios=args.audio or [],
                                prompt=args.prompt, tokens=args.tokens, backend=args.backend,
                                tokenizer=args.tokenizer, precision=args.precision, n_threads=args.threads,
                                check_finite=args.check_finite, progress=cb, **_seconds(args))
    finally:
        close()
    dt = time.perf_counter() - t0
    embd = np.ascontiguousarray(out.embd, dtype=np.float32)
    print(f"embd f32{list(embd.shape)} on {'+'.join(resolve_devices(args.backend))} in {dt * 1e3:.1f} ms "
          "(load, pre-process, compile and run)")
    for note in out.notes:
        print(f"  {note}")
    print(f"  {'chunk':>5}  {'kind':<10} {'start':>6} {'n_tokens':>8}")
    for s in out.spans:
        print(f"  {s.index:>5}  {s.kind:<10} {s.start:>6} {s.n_tokens:>8}")
    if out.cross and not args.cross_output:
        raise ValueError(f"the batch gives {len(out.cross)} cross-attention memories: pass --cross-output FILE.npz")
    if args.positions and out.positions is None:
        raise ValueError(f"--positions: {args.mmproj} has no encoder for an M-RoPE decoder (Qwen-VL)")
    _save(args.output, embd)
    print(f"wrote {args.output}: {embd.dtype}{list(embd.shape)}")
    spans = cli_parser.spans_path(args)
    with atomic_open(spans, "w", encoding="utf-8") as fh:  # where a decoder places each chunk's rows
        json.dump({"embeddings": os.path.basename(args.output), "shape": list(embd.shape), "dtype": "float32",
                   "spans": [dataclasses.asdict(s) for s in out.spans]}, fh, indent=1)
        fh.write("\n")
    print(f"wrote {spans}: {len(out.spans)} spans")
    if args.positions:
        _save(args.positions, out.positions)
        print(f"wrote {args.positions}: {out.positions.dtype}{list(out.positions.shape)}")
    if out.cross:
        for m in out.cross:
            print(f"  cross {m.index}: {m.kind} f32{list(m.embd.shape)}, {m.n_valid} valid rows, "
                  f"attended by rows {m.start}..{m.end}")
        fields = {f: np.array([getattr(m, f) for m in out.cross]) for f in ("index", "n_valid", "start", "end")}
        with atomic_open(args.cross_output) as fh:
            np.savez(fh, **{f"memory.{j}": m.embd for j, m in enumerate(out.cross)}, **fields)
        print(f"wrote {args.cross_output}: {len(out.cross)} memories")
    return 0


def cmd_embed_dataset(args) -> int:
    ds = _need("graphdsl.dataset")
    from .dataset.run import main_progress
    progress, on_start, close = main_progress()
    started = {}

    def start(done, total):
        started.update(done=done, total=total)
        on_start(done, total)
    t0 = time.perf_counter()
    try:
        with ds.warnings_as_lines():
            res = ds.embed_dataset(args.source, args.output, mmproj=args.mmproj, text_model=args.text_model,
                                   tokenizer=args.tokenizer, shard_size=args.shard_size, workers=args.workers,
                                   ray=(args.ray if args.ray != "local" else True) if args.ray else False,
                                   ray_actors=args.ray_actors, restart=args.force, on_error=args.on_error,
                                   progress=progress, on_start=start,
                                   backend=args.backend, precision=args.precision, n_threads=args.threads,
                                   check_finite=args.check_finite, **_seconds(args))
    except KeyboardInterrupt:
        close()
        print(f"graphdsl embed-dataset: interrupted; {ds.progress_note(args.output)}", file=sys.stderr)
        return 130
    finally:
        close()
    dt = time.perf_counter() - t0
    new = res["n_items"] - started.get("done", 0)
    rate = f", {new / dt:.2f} items/s" if new and dt > 0 else ""
    print(f"{args.output}: {res['n_items']} items in {res['n_shards']} shard(s) of width {res['n_embd']}; "
          f"{res['skipped_shards']} shard(s) were already done, {new} item(s) embedded now in {dt:.1f} s{rate}")
    if res["n_failed"]:
        print(f"graphdsl embed-dataset: {res['n_failed']} item(s) failed and were skipped: "
              f"{Path(args.output) / ds.shards.FAILED}", file=sys.stderr)
    return 0


def cmd_rpc_server(args) -> int:
    from graphdsl.backends.rpc import serve_rpc
    # blocks until the process ends (ggml prints the endpoint); a libggml without RPC raises ValueError,
    # a non-loopback host without --allow-remote too (before anything listens); with it, a warning
    serve_rpc(args.host, args.port, args.threads, args.device or "", args.cache, allow_remote=args.allow_remote)
    return 0


def cmd_demo(args) -> int:
    demo = _need("graphdsl.demo")
    demo.run_demo(args.backend, spec=args.spec, root=Path(args.cache) if args.cache else None,
                  draw=not args.no_draw, profile=args.profile, n_threads=args.threads)
    return 0


COMMANDS = {"devices": cmd_devices, "info": cmd_info, "inspect": cmd_inspect, "view": cmd_view, "embed": cmd_embed,
            "embed-dataset": cmd_embed_dataset, "preprocess": cmd_preprocess, "convert": cmd_convert, "bench": cmd_bench, "demo": cmd_demo,
            "rpc-server": cmd_rpc_server}


def build_parser() -> argparse.ArgumentParser:
    return cli_parser.build_parser(__doc__.split("\n\n")[0])


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if not args.command:
        ap.print_help()
        return 2
    try:  # refusals (an output over an input, an existing output without --force) are usage errors
        cli_parser.check_args(args)
    except (ValueError, OSError) as e:
        if args.debug:
            raise
        args.parser.error(str(e))  # exits 2
    try:
        return COMMANDS[args.command](args) or 0
    except KeyboardInterrupt:
        print("graphdsl: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # one clear line; the traceback only with --debug
        if args.debug:
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        kind = "" if isinstance(e, (ValueError, OSError, Unavailable)) else f"{type(e).__name__}: "
        print(f"graphdsl {args.command}: error: {kind}{msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
