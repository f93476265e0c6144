"""`graphdsl embed` (one mixed batch -> embeddings, spans, positions, cross memories) and
`graphdsl embed-dataset` (a folder or manifest -> sharded Parquet)."""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from ..fileio import atomic_open
from . import parser
from .common import need, save, seconds, stages


def cmd_embed(args) -> int:
    embed = need("graphdsl.embed")
    from graphdsl.backends.ggml import resolve_devices
    t0 = time.perf_counter()
    cb, close = stages("embed")
    try:
        out = embed.embed_files(args.mmproj, args.text_model, images=args.image or [], audios=args.audio or [],
                                prompt=args.prompt, tokens=args.tokens, backend=args.backend,
                                tokenizer=args.tokenizer, precision=args.precision, n_threads=args.threads,
                                check_finite=args.check_finite, progress=cb, **seconds(args))
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
    save(args.output, embd)
    print(f"wrote {args.output}: {embd.dtype}{list(embd.shape)}")
    spans = parser.spans_path(args)
    with atomic_open(spans, "w", encoding="utf-8") as fh:  # where a decoder places each chunk's rows
        layers = {} if out.per_layer is None else {"per_layer": os.path.basename(parser.per_layer_path(args))}
        json.dump({"embeddings": os.path.basename(args.output), "shape": list(embd.shape), "dtype": "float32",
                   **layers, "spans": [dataclasses.asdict(s) for s in out.spans]}, fh, indent=1)
        fh.write("\n")
    print(f"wrote {spans}: {len(out.spans)} spans")
    if out.per_layer is not None:  # the decoder adds them into its first layers' outputs at these rows
        layers = np.ascontiguousarray(out.per_layer, dtype=np.float32)
        save(parser.per_layer_path(args), layers)
        print(f"wrote {parser.per_layer_path(args)}: per-layer features {layers.dtype}{list(layers.shape)}")
    if args.positions:
        save(args.positions, out.positions)
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
    ds = need("graphdsl.dataset")
    from ..dataset.run import main_progress
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
                                   check_finite=args.check_finite, **seconds(args))
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
