"""The `graphdsl` command: a thin layer of argument parsing and printing over the library.

    graphdsl devices                         ggml devices and what backend="auto" picks
    graphdsl info FILE.gguf                  metadata, tensors and the detected model
    graphdsl inspect [MODEL] [--draw g.svg] [--profile] [--lowered] [--diff] ...
    graphdsl view [MODEL | TEXT.gguf] [--profile] [--diff] [-o page.html | --port 8000]
    graphdsl embed [--mmproj M.gguf] [--text-model T.gguf] [--prompt "... <image> ..." | --tokens 1,<image>,2]
                   [--image a.png]... [--audio b.wav]... -o out.npy [--spans out.spans.json] [-f]
    graphdsl embed-dataset FOLDER|MANIFEST [--mmproj M.gguf] [--text-model T.gguf] -o OUT/ [--workers N | --ray [ADDR]]
    graphdsl preprocess image|audio|text INPUT ... [-o out.npy|out.npz [-f]]
                   [--mode clip|siglip|pad|ARCH] [--mmproj M.gguf]   (graphdsl.cli.preprocess)
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

One module per command group: parser (options and the checks before any work), common (bars,
saving, missing parts), devices, gguf (info, convert), model (inspect, view, bench), embed
(embed, embed-dataset), preprocess, demo.
"""
from __future__ import annotations

import sys

from . import parser
from .common import Unavailable
from .demo import cmd_demo
from .devices import cmd_devices, cmd_rpc_server
from .embed import cmd_embed, cmd_embed_dataset
from .gguf import cmd_convert, cmd_info
from .model import cmd_bench, cmd_inspect, cmd_view
from .preprocess import cmd_preprocess

__all__ = ["main", "build_parser", "COMMANDS", "Unavailable"]

COMMANDS = {"devices": cmd_devices, "info": cmd_info, "inspect": cmd_inspect, "view": cmd_view, "embed": cmd_embed,
            "embed-dataset": cmd_embed_dataset, "preprocess": cmd_preprocess, "convert": cmd_convert,
            "bench": cmd_bench, "demo": cmd_demo, "rpc-server": cmd_rpc_server}


def build_parser():
    return parser.build_parser(__doc__.split("\n\n")[0])


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if not args.command:
        ap.print_help()
        return 2
    try:  # refusals (an output over an input, an existing output without --force) are usage errors
        parser.check_args(args)
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
