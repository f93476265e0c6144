"""The `graphdsl` command's argument parser and the checks that run before any work starts.

Every numeric option is checked by its argparse type, so a bad value is a usage error (status 2)
naming the option, never a traceback from deep inside a run. Every file a command writes is
checked by `graphdsl.fileio.check_output` against the command's inputs and `--force` first.
"""
from __future__ import annotations

import argparse
import math
import os

from ..fileio import check_output
from ..options import RunOptions


# -- option types ---------------------------------------------------------------------------------
def int_range(lo: int, hi: int | None = None, name: str = "integer"):
    """An argparse type: an int in [lo, hi] (hi None: no upper bound)."""
    def parse(s: str) -> int:
        try:
            v = int(s, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None
        if v < lo or (hi is not None and v > hi):
            bound = f"{lo}..{hi}" if hi is not None else f">= {lo}"
            raise argparse.ArgumentTypeError(f"{v} is not a {name} ({bound})")
        return v
    parse.__name__ = name
    return parse


positive_int = int_range(1, name="positive integer")
count = int_range(0, name="count")
port = int_range(1, 65535, name="TCP port")


def positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"{s} is not a positive finite number")
    return v


def finite_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"{s} is not a finite number")
    return v


def group_by(s: str):
    if s == "blocks":
        return s
    try:
        return positive_int(s)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f'{s!r}: use "blocks" or a positive number of name parts') from None


# -- outputs: what each command writes and what it reads -------------------------------------------
def outputs(args) -> list[tuple[str, str, list]]:
    """(option, path, inputs) for every file the parsed command will write."""
    cmd = args.command
    if cmd == "convert":
        from ..convert import input_files
        return [("-o", args.output, input_files(args.hf_dir))]
    if cmd == "embed":
        ins = [args.mmproj, args.text_model, args.tokenizer, *(args.image or []), *(args.audio or [])]
        return [(opt, path, ins) for opt, path in (("-o", args.output), ("--spans", spans_path(args)),
                                                   ("--cross-output", args.cross_output),
                                                   ("--positions", args.positions),
                                                   ("--per-layer", per_layer_path(args))) if path]
    if cmd == "preprocess" and args.output:
        media = args.inputs if args.kind != "text" else []  # text inputs are words, not files
        return [("-o", args.output, [*media, args.mmproj, args.tokenizer, args.text_model])]
    if cmd == "view" and args.output:
        ins = [args.image, args.audio, None if args.model == "demo" else args.model]
        return [("-o", args.output, ins)]
    if cmd == "inspect":
        from ..demo import DATA, VERSION, cache_dir
        ins = [args.image or DATA / "demo_image.png", args.audio or DATA / "speech_16k.wav"]
        if args.model == "demo":
            ins.append(cache_dir() / f"demo-{args.spec}-v{VERSION}")
        else:
            ins.append(args.model)
        return [(opt, path, ins) for opt, path in (("--draw", args.draw), ("--chart", args.chart),
                                                    ("--capture-out", args.capture_out)) if path]
    return []


def spans_path(args) -> str:
    """Where `embed` writes its spans: --spans, else the output's name with .spans.json for its suffix."""
    if args.spans:
        return args.spans
    root, ext = os.path.splitext(args.output)
    return (root if ext else args.output) + ".spans.json"


def per_layer_path(args) -> str:
    """Where `embed` writes per-layer features (Qwen3-VL's deepstack) when the batch has them:
    --per-layer, else the output's name with .per_layer.npy for its suffix."""
    if args.per_layer:
        return args.per_layer
    root, ext = os.path.splitext(args.output)
    return (root if ext else args.output) + ".per_layer.npy"


def check_args(args) -> None:
    """Option combinations and outputs, before any work; raises ValueError (a usage error)."""
    if args.command == "embed-dataset":
        if not (args.mmproj or args.text_model):
            raise ValueError("embed-dataset needs --mmproj, --text-model or both")
        if args.ray and args.workers:
            raise ValueError("give --workers or --ray, not both")
        src, out = os.path.realpath(args.source), os.path.realpath(args.output)
        if os.path.exists(out) and not os.path.isdir(out):
            raise ValueError(f"-o {args.output} is a file; the output is a folder")
        if out == src or (os.path.isdir(src) and os.path.commonpath([out, src]) == src):
            raise ValueError(f"-o {args.output} is inside the input {args.source}; choose a folder outside it")
    if args.command == "embed" and not (args.mmproj or args.text_model):
        raise ValueError("embed needs --mmproj (images, audio), --text-model (--prompt, --tokens) or both")
    if args.command == "inspect":
        if args.capture_out and not args.capture:
            raise ValueError("--capture-out needs --capture GLOB")
        if args.chart and not args.profile:
            raise ValueError("--chart needs --profile")
    if args.command == "preprocess" and args.kind != "text":
        from .preprocess import check_audio_args, check_image_args
        (check_image_args if args.kind == "image" else check_audio_args)(args)
    if args.command == "rpc-server":
        from graphdsl.backends.rpc import check_host
        check_host(args.host, args.allow_remote)
    seen: dict[str, str] = {}
    for opt, path, ins in outputs(args):
        real = os.path.realpath(path)
        if real in seen:
            raise ValueError(f"{seen[real]} and {opt} name the same file {path}")
        seen[real] = opt
        check_output(path, ins, force=getattr(args, "force", False), what=opt)


def _force(p) -> None:
    p.add_argument("-f", "--force", action="store_true", help="replace an existing output file (never an input)")


def _run_opts(p) -> None:
    backend = RunOptions().backend  # the one default every entry point shares
    p.add_argument("--backend", default=backend,
                   help=f'"cpu", "auto" (accelerators first), "cuda", "metal", "blas" or a device name (default: {backend})')
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads for ggml (default: all cores)")
    p.add_argument("--precision", default="f32", choices=["f32", "fast"],
                   help="f32: exact f32 lowerings; fast: ggml's f16 fast paths (default: f32)")


def _limit_opts(p, audio=True, image=False) -> None:
    """Caps on what one input may cost (issue 12): raise them for inputs you trust."""
    if audio:
        p.add_argument("--max-seconds", type=positive_float, default=None,
                       help="audio: refuse clips longer than this (default: 3 h)")
    if image:
        p.add_argument("--max-out-pixels", type=positive_int, default=None,
                       help="image: refuse target sizes above this many pixels (default: 4096 x 4096)")


def _finite_opt(p) -> None:
    p.add_argument("--no-check-finite", dest="check_finite", action="store_false",
                   help="load GGUF weights that hold NaN or inf (refused by default)")


def _embed_opts(p) -> None:
    """What `embed` and `embed-dataset` share: how to run, the input caps, the weights check."""
    _run_opts(p)
    _limit_opts(p)
    _finite_opt(p)


def _model_opts(p) -> None:
    _finite_opt(p)
    p.add_argument("model", nargs="?", default="demo",
                   help='an mmproj GGUF file, or "demo" for the demo\'s mixed batch (default)')
    p.add_argument("--modality", choices=["image", "audio"], help="which encoder of an mmproj file (default: the first)")
    p.add_argument("--image", help="image to run the vision encoder on (default: the bundled demo image)")
    p.add_argument("--audio", help="audio to run the audio encoder on (default: the bundled speech clip)")
    p.add_argument("--spec", default="small", choices=["small", "tiny"], help="size of the demo model (default: small)")


OUTPUT_NOTE = ("Output files are written exactly where named (no suffix is added), completely or not at all; "
               "an existing one is replaced only with --force, an input never.")


def build_parser(description: str) -> argparse.ArgumentParser:
    from .. import __version__
    ap = argparse.ArgumentParser(prog="graphdsl", description=description,
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Run `graphdsl COMMAND --help` for the options of a command.")
    ap.add_argument("--version", action="version", version=f"graphdsl {__version__}")
    ap.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    def command(name, **kw):
        p = sub.add_parser(name, **kw)
        p.set_defaults(parser=p)
        return p

    command("devices", help="list the ggml devices and what backend='auto' picks",
            description="List the devices ggml's backend registry reports (CPU, CUDA, Metal, BLAS ...).")

    p = command("info", help="describe a GGUF file", description="Header, metadata, tensors and the detected model of a GGUF file.")
    p.add_argument("file", help="a .gguf file")

    p = command("inspect", help="summary, drawing, placement, profile, capture and diff of a model's graph",
                description="Inspect a model's graph: the summary table always; the rest on request. " + OUTPUT_NOTE)
    _model_opts(p)
    _run_opts(p)
    p.add_argument("--print", action="store_true", help="print the graph, one typed line per node")
    p.add_argument("--nodes", action="store_true", help="summary with one row per node (default: per block)")
    p.add_argument("--group-by", default="blocks", type=group_by,
                   help='summary groups: "blocks" (repeated blocks together) or N dotted name parts (default: blocks)')
    p.add_argument("--draw", metavar="PATH", help="draw the graph to PATH (.dot, .svg, .png, .pdf)")
    p.add_argument("--lowered", action="store_true", help="run once and report ggml nodes, placement, splits, buffers")
    p.add_argument("--profile", action="store_true", help="time every ggml node (scheduler eval callback)")
    p.add_argument("--repeat", type=positive_int, default=3, help="profiled runs to average (default: 3)")
    p.add_argument("--chart", metavar="PNG", help="with --profile: write a bar chart (PNG)")
    p.add_argument("--chart-by", default="op", choices=["op", "block", "ggml_op", "node"],
                   help="bars per op, block, ggml op or node (default: op)")
    p.add_argument("--capture", metavar="GLOB", action="append", help="print intermediates matching GLOB (repeatable)")
    p.add_argument("--capture-out", metavar="NPZ", help="with --capture: save the arrays to this file (.npz format)")
    p.add_argument("--diff", action="store_true", help="compare every node with the NumPy reference backend")
    p.add_argument("--rel-l2", type=positive_float, default=1e-4,
                   help="with --diff: bound on the relative L2 error (default: 1e-4)")
    _force(p)

    p = command("view", help="an interactive page of a model's graph, with time and error overlays",
                description="Write a self-contained HTML page of a model's graph (an mmproj's encoder, a text "
                            "GGUF's token table, or the demo) and serve it on 127.0.0.1: a tree from the node names "
                            "(repeated blocks collapsible), op, shape, dtype, FLOPs, bytes, weights and backend per "
                            "node; --profile adds times, --diff errors against the NumPy reference. " + OUTPUT_NOTE)
    _model_opts(p)
    _run_opts(p)
    p.add_argument("--profile", action="store_true", help="time every node (overlay: time)")
    p.add_argument("--repeat", type=positive_int, default=3, help="profiled runs to average (default: 3)")
    p.add_argument("--diff", action="store_true", help="compare every node with the NumPy reference (overlay: error)")
    p.add_argument("--rel-l2", type=positive_float, default=1e-4, help="with --diff: the bound (default: 1e-4)")
    p.add_argument("-o", "--output", metavar="HTML", help="write the page here and exit (default: serve it)")
    p.add_argument("--port", type=int_range(0, 65535, name="TCP port (0: any free one)"), default=0,
                   help="port on 127.0.0.1 to serve on (default: a free one)")
    _force(p)

    p = command("embed", help="embed a mixed batch (text, images, audio) into the decoder's input sequence",
                description="Run a prompt with <image>/<audio> markers (or bare media) through an mmproj "
                            "(+ text model) as one graph; print the spans and save the embeddings. " + OUTPUT_NOTE)
    p.add_argument("--mmproj", help="mmproj GGUF (vision and/or audio encoder); not needed for text alone")
    p.add_argument("--text-model", help="text GGUF with the token table; needed for --prompt / --tokens")
    p.add_argument("--tokenizer", help="tokenizer.json (default: the --text-model's own vocabulary)")
    p.add_argument("--image", action="append", help="image file, in marker order (repeatable)")
    p.add_argument("--audio", action="append", help="audio file, in marker order (repeatable)")
    p.add_argument("--positions", help="also save every row's M-RoPE (t, h, w) ids, int32 [3, n_tokens] "
                                       "(.npy; Qwen-VL mmproj files)")
    p.add_argument("--per-layer", metavar="NPY", help="where to save per-layer features (Qwen3-VL's deepstack), "
                   "f32 [n_layers, n_tokens, n_embd], zero on rows of other chunks, when the batch has them "
                   "(default: the output's name with .per_layer.npy as its suffix)")
    seq = p.add_mutually_exclusive_group()
    seq.add_argument("--prompt", help='text with <image> / <audio> markers, e.g. "USER: <image> what is this?"')
    seq.add_argument("--tokens", help='token ids with markers, e.g. "1,2,<image>,3"')
    p.add_argument("-o", "--output", required=True, help="where to save the embeddings (float32, .npy format)")
    p.add_argument("--spans", metavar="JSON", help="where to save the spans, the rows each chunk occupies "
                                                   "(default: the output's name with .spans.json as its suffix)")
    p.add_argument("--cross-output", help="where to save cross-attention memories (mllama images: .npz with "
                                          "memory.N, index, n_valid, start, end); needed when there are any")
    _force(p)
    _embed_opts(p)

    p = command("embed-dataset", help="embed a folder or manifest into sharded Parquet (resumable; workers or Ray)",
                description="Embed every item of a folder (one item per image / audio file) or a CSV / JSONL / "
                            "Parquet manifest of (id, prompt | tokens, images, audios) into OUT/part-NNNNN.parquet "
                            "(id, n_tokens, spans, embeddings) and OUT/_manifest.json. Shards are written "
                            "atomically; a rerun skips the finished ones. Needs pyarrow (graphdsl[dataset]); "
                            "--ray needs graphdsl[ray].")
    p.add_argument("source", help="a folder of images / audio, or a .csv / .jsonl / .parquet manifest")
    p.add_argument("--mmproj", help="mmproj GGUF (vision and/or audio encoder)")
    p.add_argument("--text-model", help="text GGUF with the token table (for prompts / tokens)")
    p.add_argument("--tokenizer", help="tokenizer.json (default: the --text-model's own vocabulary)")
    p.add_argument("-o", "--output", required=True, help="output folder (created)")
    p.add_argument("--shard-size", type=positive_int, default=256, help="items per Parquet file (default: 256)")
    p.add_argument("--workers", type=count, default=0,
                   help="worker processes, each with its own compiled model (default: 0, in this process)")
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help='run on Ray Data: a local Ray, or a cluster ("auto", "HOST:6379")')
    p.add_argument("--ray-actors", type=positive_int, default=2, help="with --ray: embedder actors (default: 2)")
    p.add_argument("-f", "--force", action="store_true", help="start over when OUT holds another run's shards")
    p.add_argument("--on-error", choices=("stop", "skip"), default="stop",
                   help="an item that fails: stop the run (default), or skip it, list it with its error in "
                        "OUT/_failed.jsonl and go on (a resume does not retry it; --force does)")
    _embed_opts(p)

    p = command("preprocess", help="pre-process images, audio or text as the encoders want them",
                description="CPU pre-processing: image -> f32 [3, H, W] (or an arch's tiles, masks ...), audio -> "
                            "Whisper log-mel windows f32 [n_mel, 3000], text -> token ids. Images: --mode clip, siglip "
                            "or pad is a plain resize as HF's CLIPImageProcessor, SiglipImageProcessor or "
                            "LlavaImageProcessor (do_pad) with its default mean/std; --mode ARCH is exactly what "
                            "`graphdsl embed` feeds that arch, at its HF image processor's defaults (llava_next: "
                            "llava-hf's 336, which its default pinpoints divide; --size: the tower's image_size; "
                            "minicpmv is refused: its slices need the text model's marker ids); --mmproj FILE is exactly what `embed --mmproj FILE` feeds. "
                            "-o NAME.npz writes pixel_values.I and the arch's other fields (FIELD.I: grid, patch_mask, "
                            "aspect_ratio_id ...) for each image I; any other name one .npy array (one image's pixels, "
                            "or all stacked), refused where it cannot hold them. " + OUTPUT_NOTE)
    p.add_argument("kind", choices=["image", "audio", "text"])
    p.add_argument("inputs", nargs="+", help="files (image/audio) or the text")
    p.add_argument("-o", "--output", help="save the result (.npy, or .npz by its name; see above)")
    _force(p)
    p.add_argument("--mmproj", help="image: the arch and its settings from this mmproj GGUF, as embed takes them")
    from ..models import registry  # importing graphdsl.models registers every model file
    from .preprocess import audio_modes
    p.add_argument("--mode", choices=sorted([*registry.image_modes(), *audio_modes()]),
                   help="image: a resize mode (clip: shortest edge + centre crop, siglip: square, pad) or a "
                        "registered architecture at its HF processor's defaults (default: the --mmproj file's "
                        "arch, else clip)")
    p.add_argument("--size", type=positive_int, help="image: shortest edge (clip/pad) or side (siglip) (default: "
                                                     "224); with --mode ARCH the tower's image_size")
    p.add_argument("--crop", type=positive_int, help="image, clip/pad: centre crop (default: --size)")
    p.add_argument("--mean", type=finite_float, nargs=3, metavar="M", help="image: per-channel mean (default: the mode's)")
    p.add_argument("--std", type=positive_float, nargs=3, metavar="S", help="image: per-channel std (default: the mode's)")
    p.add_argument("--n-mels", type=positive_int, help="audio: mel bins (default: 80; with --mmproj the file's)")
    p.add_argument("--tokenizer", help="text: tokenizer.json")
    p.add_argument("--text-model", help="text: a GGUF with an embedded tokenizer.huggingface.json")
    _limit_opts(p, audio=True, image=True)

    p = command("convert", help="convert HF checkpoint folder(s) to GGUF (llama.cpp layout)",
                description="HF folder(s) (config.json + safetensors/bin) -> one GGUF file in llama.cpp's "
                            "mmproj or text-model layout; a vision and an audio folder make one mmproj. " + OUTPUT_NOTE)
    p.add_argument("hf_dir", nargs="+", help="HF model folder(s): one model, or a vision and an audio model")
    p.add_argument("-o", "--output", required=True, help="output .gguf (never a file of the checkpoint)")
    _force(p)
    p.add_argument("--outtype", default="f32", choices=["f32", "f16", "bf16", "q8_0", "q4_0"],
                   help="type of the weight matrices (default: f32)")

    p = command("bench", help="time a model's graph (median of repeated runs)",
                description="Run a model's graph repeatedly and report the median/min/mean time and GFLOP/s.")
    _model_opts(p)
    _run_opts(p)
    p.add_argument("--repeat", type=positive_int, default=10, help="timed runs (default: 10)")
    p.add_argument("--warmup", type=count, default=2, help="untimed runs first (default: 2)")

    p = command("demo", help="build a small multimodal model and run one mixed batch (no download)",
                description="Build (cached) a CLIP+LLaVA / Whisper+Voxtral / token-table model as GGUF, "
                            "pre-process the bundled image and speech clip, run [text, image, text, audio, "
                            "text] as one graph and print the summary, placement and timings.")
    _run_opts(p)
    p.add_argument("--spec", default="small", choices=["small", "tiny"], help="model size (default: small)")
    p.add_argument("--cache", help="where to keep the model files (default: $GRAPHDSL_CACHE or ~/.cache/graphdsl)")
    p.add_argument("--no-draw", action="store_true", help="skip the graph drawing")
    p.add_argument("--profile", action="store_true", help="also print a per-op / per-block profile")

    p = command("rpc-server", help="serve a local ggml device over ggml's RPC protocol (blocks)",
                description="Serve a local device to other processes or hosts, which reach it with "
                            'backend="rpc://HOST:PORT". Needs a libggml built with RPC '
                            "(scripts/build_libggml.sh rpc). The protocol has no authentication: anyone who "
                            "reaches the port can use the device and its memory, so only loopback addresses "
                            "(127.0.0.0/8, ::1, localhost) are served unless --allow-remote is given.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=port, default=50052, help="TCP port (default: 50052)")
    p.add_argument("--allow-remote", action="store_true",
                   help="serve a non-loopback address (e.g. 0.0.0.0): only on a network you trust")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads of the served backend (default: all cores)")
    p.add_argument("--device", help="device to serve, a name from `graphdsl devices` (default: the CPU)")
    p.add_argument("--cache", metavar="DIR", help="keep tensors over 10 MiB in DIR by hash, so clients that "
                                                  "upload the same weights again send only the hash")
    return ap
