"""The `graphdsl` command: a thin layer of argument parsing and printing over the library.

    graphdsl devices                         ggml devices and what backend="auto" picks
    graphdsl info FILE.gguf                  metadata, tensors and the detected model
    graphdsl inspect [MODEL] [--draw g.svg] [--profile] [--lowered] [--diff] ...
    graphdsl embed --mmproj M.gguf [--text-model T.gguf] [--prompt "... <image> ..." | --tokens 1,<image>,2]
                   [--image a.png]... [--audio b.wav]... -o out.npy
    graphdsl preprocess image|audio|text INPUT ...
    graphdsl convert HF_DIR [HF_DIR2] -o OUT.gguf [--outtype f16]
    graphdsl bench [MODEL] [--repeat 20]
    graphdsl demo
    graphdsl rpc-server [--host 127.0.0.1] [--port 50052] [--threads T] [--device NAME] [--cache DIR]

MODEL is an mmproj GGUF (its vision or audio encoder, on the bundled demo image / speech clip)
or "demo" (the demo's mixed batch, the default). Errors print one line and exit with status 1;
--debug shows the traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

import numpy as np


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
    types = conv.convert(args.hf_dir, args.output, args.outtype)
    counts: dict[str, int] = {}
    for t in types.values():
        counts[t] = counts.get(t, 0) + 1
    print(f"wrote {args.output}: {len(types)} tensors ({', '.join(f'{n} {t}' for t, n in sorted(counts.items()))}) "
          f"in {time.perf_counter() - t0:.1f} s")
    return 0


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
    pre = _need("graphdsl.preprocess")
    if args.kind == "text":
        tok = _tokenizer(args)
        ids = tok.encode(" ".join(args.inputs))
        print(f"{len(ids)} tokens: {ids.tolist()}")
        arr = ids
    elif args.kind == "image":
        cfg = _image_config(args, pre)
        cb, close = _progress("images", len(args.inputs))
        try:
            pixels = pre.preprocess_images(args.inputs, cfg, progress=cb)
        finally:
            close()
        for src, p in zip(args.inputs, pixels):
            print(f"{src}: f32{list(p.shape)} min {p.min():.3f} max {p.max():.3f} mean {p.mean():.3f}")
        arr = pre.stack_images(pixels) if len(pixels) > 1 else pixels[0]
    else:
        cb, close = _progress("audio", len(args.inputs))
        try:
            res = pre.preprocess_audio(args.inputs, args.n_mels, progress=cb)
        finally:
            close()
        windows = []
        for src, (chunks, valid) in zip(args.inputs, res):
            print(f"{src}: {len(chunks)} window(s) of f32[{args.n_mels},{chunks[0].shape[1]}], valid frames {valid}")
            windows += chunks
        arr = np.stack(windows)
    if args.output:
        np.save(args.output, arr)
        print(f"wrote {args.output}: {arr.dtype}{list(arr.shape)}")
    return 0


def _image_config(args, pre):
    if args.mmproj:
        if args.mode is None:  # what the tower wants (CLIP: shortest edge + crop; SigLIP: square)
            return _need("graphdsl.models").from_gguf(args.mmproj).image_config()
        from .gguf_io import read_gguf
        return pre.ImageConfig.from_mmproj(read_gguf(args.mmproj).metadata, mode=args.mode)
    mode, size = args.mode or "clip", args.size or 224
    return pre.ImageConfig(mode=mode, size=size if mode != "siglip" else (size, size), crop_size=args.crop or size)


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
                                              image=args.image, audio=args.audio)


def _compile(g, weights, args):
    import graphdsl
    return graphdsl.compile(g, args.backend, n_threads=args.threads, precision=args.precision, weights=weights)


def cmd_inspect(args) -> int:
    from . import inspect
    g, feeds, weights, label = _load_graph(args)
    print(f"# {label}")
    if args.print:
        print(g)
    _show(g.summary(None if args.nodes else args.group_by))
    if args.draw:
        from .demo import draw_or_dot
        path, note = draw_or_dot(g, Path(args.draw))
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
            print(f"profile chart: {prof.chart(args.chart, by=args.chart_by)}")
    if args.capture:
        got = inspect.capture(run, feeds, args.capture)
        for k, v in got.items():
            print(f"%{k}: {v.dtype}{list(v.shape)} mean {v.mean():.4g} std {v.std():.4g} max|x| {np.abs(v).max():.4g}")
        if args.capture_out:
            np.savez(args.capture_out, **got)
            print(f"wrote {args.capture_out}: {len(got)} arrays")
    if args.diff:
        import graphdsl
        ref = graphdsl.compile(g, "reference", weights=weights)
        rep = inspect.diff(run, ref, feeds, rel_l2=args.rel_l2)
        _show(rep)
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
    flops = g.summary().flops or 0
    med = float(np.median(times))
    print(f"{label} on {run.backend} ({run.n_threads} threads, precision {args.precision}): "
          f"median {med * 1e3:.2f} ms, min {min(times) * 1e3:.2f} ms, mean {np.mean(times) * 1e3:.2f} ms "
          f"over {args.repeat} runs; {si(flops)} FLOPs -> {flops / med / 1e9:.2f} GFLOP/s")
    return 0


def cmd_embed(args) -> int:
    embed = _need("graphdsl.embed")
    from graphdsl.backends.ggml import resolve_devices
    t0 = time.perf_counter()
    out = embed.embed_files(args.mmproj, args.text_model, images=args.image or [], audios=args.audio or [],
                            prompt=args.prompt, tokens=args.tokens, backend=args.backend, tokenizer=args.tokenizer,
                            precision=args.precision, n_threads=args.threads)
    dt = time.perf_counter() - t0
    embd = np.ascontiguousarray(out.embd, dtype=np.float32)
    print(f"embd f32{list(embd.shape)} on {'+'.join(resolve_devices(args.backend))} in {dt * 1e3:.1f} ms "
          "(load, pre-process, compile and run)")
    print(f"  {'chunk':>5}  {'kind':<10} {'start':>6} {'n_tokens':>8}")
    for s in out.spans:
        print(f"  {s.index:>5}  {s.kind:<10} {s.start:>6} {s.n_tokens:>8}")
    np.save(args.output, embd)
    print(f"wrote {args.output}")
    return 0


def cmd_rpc_server(args) -> int:
    from graphdsl.backends.rpc import serve_rpc
    if not 0 < args.port < 65536:
        raise ValueError(f"--port {args.port} is not a TCP port (1..65535)")
    # blocks until the process ends (ggml prints the endpoint); a libggml without RPC raises ValueError
    serve_rpc(args.host, args.port, args.threads, args.device or "", args.cache)
    return 0


def cmd_demo(args) -> int:
    demo = _need("graphdsl.demo")
    demo.run_demo(args.backend, spec=args.spec, root=Path(args.cache) if args.cache else None,
                  draw=not args.no_draw, profile=args.profile, n_threads=args.threads)
    return 0


# -- the parser -------------------------------------------------------------------------------------
def _run_opts(p, backend: str = "cpu") -> None:
    p.add_argument("--backend", default=backend,
                   help=f'"cpu", "auto" (accelerators first), "cuda", "metal", "blas" or a device name (default: {backend})')
    p.add_argument("--threads", type=int, default=None, help="CPU threads for ggml (default: all cores)")
    p.add_argument("--precision", default="f32", choices=["f32", "fast"],
                   help="f32: exact f32 lowerings; fast: ggml's f16 fast paths (default: f32)")


def _model_opts(p) -> None:
    p.add_argument("model", nargs="?", default="demo",
                   help='an mmproj GGUF file, or "demo" for the demo\'s mixed batch (default)')
    p.add_argument("--modality", choices=["image", "audio"], help="which encoder of an mmproj file (default: the first)")
    p.add_argument("--image", help="image to run the vision encoder on (default: the bundled demo image)")
    p.add_argument("--audio", help="audio to run the audio encoder on (default: the bundled speech clip)")
    p.add_argument("--spec", default="small", choices=["small", "tiny"], help="size of the demo model (default: small)")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    ap = argparse.ArgumentParser(prog="graphdsl", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Run `graphdsl COMMAND --help` for the options of a command.")
    ap.add_argument("--version", action="version", version=f"graphdsl {__version__}")
    ap.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("devices", help="list the ggml devices and what backend='auto' picks",
                       description="List the devices ggml's backend registry reports (CPU, CUDA, Metal, BLAS ...).")
    p.set_defaults(fn=cmd_devices)

    p = sub.add_parser("info", help="describe a GGUF file", description="Header, metadata, tensors and the detected model of a GGUF file.")
    p.add_argument("file", help="a .gguf file")
    p.set_defaults(fn=cmd_info)

    p = sub.add_parser("inspect", help="summary, drawing, placement, profile, capture and diff of a model's graph",
                       description="Inspect a model's graph: the summary table always; the rest on request.")
    _model_opts(p)
    _run_opts(p)
    p.add_argument("--print", action="store_true", help="print the graph, one typed line per node")
    p.add_argument("--nodes", action="store_true", help="summary with one row per node (default: per block)")
    p.add_argument("--group-by", default="blocks", type=lambda s: int(s) if s.isdigit() else s,
                   help='summary groups: "blocks" (repeated blocks together) or N dotted name parts (default: blocks)')
    p.add_argument("--draw", metavar="PATH", help="draw the graph to PATH (.dot, .svg, .png, .pdf)")
    p.add_argument("--lowered", action="store_true", help="run once and report ggml nodes, placement, splits, buffers")
    p.add_argument("--profile", action="store_true", help="time every ggml node (scheduler eval callback)")
    p.add_argument("--repeat", type=int, default=3, help="profiled runs to average (default: 3)")
    p.add_argument("--chart", metavar="PNG", help="with --profile: write a bar chart")
    p.add_argument("--chart-by", default="op", help='bars per "op", "block", "ggml_op" or "node" (default: op)')
    p.add_argument("--capture", metavar="GLOB", action="append", help="print intermediates matching GLOB (repeatable)")
    p.add_argument("--capture-out", metavar="NPZ", help="with --capture: save the arrays to an .npz")
    p.add_argument("--diff", action="store_true", help="compare every node with the NumPy reference backend")
    p.add_argument("--rel-l2", type=float, default=1e-4, help="with --diff: bound on the relative L2 error (default: 1e-4)")
    p.set_defaults(fn=cmd_inspect)

    p = sub.add_parser("embed", help="embed a mixed batch (text, images, audio) into the decoder's input sequence",
                       description="Run a prompt with <image>/<audio> markers (or bare media) through an mmproj "
                                   "(+ text model) as one graph; print the spans and save the embeddings.")
    p.add_argument("--mmproj", required=True, help="mmproj GGUF (vision and/or audio encoder)")
    p.add_argument("--text-model", help="text GGUF with the token table; needed for --prompt / --tokens")
    p.add_argument("--tokenizer", help="tokenizer.json (default: the --text-model's own vocabulary)")
    p.add_argument("--image", action="append", help="image file, in marker order (repeatable)")
    p.add_argument("--audio", action="append", help="audio file, in marker order (repeatable)")
    seq = p.add_mutually_exclusive_group()
    seq.add_argument("--prompt", help='text with <image> / <audio> markers, e.g. "USER: <image> what is this?"')
    seq.add_argument("--tokens", help='token ids with markers, e.g. "1,2,<image>,3"')
    p.add_argument("-o", "--output", required=True, help="where to save the embeddings (float32 .npy)")
    _run_opts(p, "auto")
    p.set_defaults(fn=cmd_embed)

    p = sub.add_parser("preprocess", help="pre-process images, audio or text as the encoders want them",
                       description="CPU pre-processing: image -> f32 [3, H, W], audio -> Whisper log-mel windows "
                                   "f32 [n_mel, 3000], text -> token ids.")
    p.add_argument("kind", choices=["image", "audio", "text"])
    p.add_argument("inputs", nargs="+", help="files (image/audio) or the text")
    p.add_argument("-o", "--output", help="save the result (.npy; several inputs are stacked)")
    p.add_argument("--mmproj", help="image: take size/mean/std from this mmproj GGUF")
    p.add_argument("--mode", choices=["clip", "siglip", "pad"],
                   help="image: resize mode (default: the --mmproj tower's, else clip)")
    p.add_argument("--size", type=int, help="image: shortest edge (clip/pad) or side (siglip) (default: 224)")
    p.add_argument("--crop", type=int, help="image: centre crop (default: --size)")
    p.add_argument("--n-mels", type=int, default=80, help="audio: mel bins (default: 80)")
    p.add_argument("--tokenizer", help="text: tokenizer.json")
    p.add_argument("--text-model", help="text: a GGUF with an embedded tokenizer.huggingface.json")
    p.set_defaults(fn=cmd_preprocess)

    p = sub.add_parser("convert", help="convert HF checkpoint folder(s) to GGUF (llama.cpp layout)",
                       description="HF folder(s) (config.json + safetensors/bin) -> one GGUF file in llama.cpp's "
                                   "mmproj or text-model layout; a vision and an audio folder make one mmproj.")
    p.add_argument("hf_dir", nargs="+", help="HF model folder(s): one model, or a vision and an audio model")
    p.add_argument("-o", "--output", required=True, help="output .gguf")
    p.add_argument("--outtype", default="f32", choices=["f32", "f16", "bf16", "q8_0", "q4_0"],
                   help="type of the weight matrices (default: f32)")
    p.set_defaults(fn=cmd_convert)

    p = sub.add_parser("bench", help="time a model's graph (median of repeated runs)",
                       description="Run a model's graph repeatedly and report the median/min/mean time and GFLOP/s.")
    _model_opts(p)
    _run_opts(p)
    p.add_argument("--repeat", type=int, default=10, help="timed runs (default: 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs first (default: 2)")
    p.set_defaults(fn=cmd_bench)

    p = sub.add_parser("demo", help="build a small multimodal model and run one mixed batch (no download)",
                       description="Build (cached) a CLIP+LLaVA / Whisper+Voxtral / token-table model as GGUF, "
                                   "pre-process the bundled image and speech clip, run [text, image, text, audio, "
                                   "text] as one graph and print the summary, placement and timings.")
    _run_opts(p, "auto")
    p.add_argument("--spec", default="small", choices=["small", "tiny"], help="model size (default: small)")
    p.add_argument("--cache", help="where to keep the model files (default: $GRAPHDSL_CACHE or ~/.cache/graphdsl)")
    p.add_argument("--no-draw", action="store_true", help="skip the graph drawing")
    p.add_argument("--profile", action="store_true", help="also print a per-op / per-block profile")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("rpc-server", help="serve a local ggml device over ggml's RPC protocol (blocks)",
                       description="Serve a local device to other processes or hosts, which reach it with "
                                   'backend="rpc://HOST:PORT". Needs a libggml built with RPC '
                                   "(scripts/build_libggml.sh rpc). The protocol has no authentication: bind to "
                                   "127.0.0.1 unless the network is trusted.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=50052, help="TCP port (default: 50052)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of the served backend (default: all cores)")
    p.add_argument("--device", help="device to serve, a name from `graphdsl devices` (default: the CPU)")
    p.add_argument("--cache", metavar="DIR", help="keep tensors over 10 MiB in DIR by hash, so clients that "
                                                  "upload the same weights again send only the hash")
    p.set_defaults(fn=cmd_rpc_server)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if not getattr(args, "fn", None):
        ap.print_help()
        return 2
    try:
        return args.fn(args) or 0
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
