"""Checkpoints -> GGUF, and the `graphdsl convert` / `graphdsl info` commands.

    >>> from graphdsl.convert import convert
    >>> convert("hf/clip-vit-base-patch32", "clip.gguf", outtype="q8_0")   # doctest: +SKIP

Supported HF folders (config.json + safetensors or pytorch_model.bin): CLIP vision (CLIPModel,
CLIPVisionModel), LLaVA (vision tower + mlp projector), SigLIP vision, Whisper encoders (with a
projector where the checkpoint has one) and BERT-style text models. Tensor names and layouts
come from `graphdsl.models.<arch>.hf_to_gguf`, metadata and types from `hf.py` / `writer.py`.
"""
from __future__ import annotations

import argparse
import os
import sys

from .writer import FILE_TYPE, OUTTYPES, tensor_type, write_gguf

__all__ = ["OUTTYPES", "convert", "convert_main", "info_main", "tensor_type"]


def convert(hf_dir: str | os.PathLike | list, out_path: str | os.PathLike, outtype: str = "f32") -> dict[str, str]:
    """Convert an HF model folder to one GGUF file; returns tensor name -> stored dtype.

    hf_dir may also be a list of folders: a vision and an audio model combined into one mmproj
    (clip.vision.projector_type + clip.audio.projector_type), as the files of omni models.
    outtype: "f32", "f16", "bf16", "q8_0" or "q4_0" for the 2-D weight matrices; norms, biases,
    position tables and 1-D tensors stay f32, conv kernels f16 (outtype f16) or f32, and matrices
    whose rows are not whole quantization blocks fall back to f16 (see writer.tensor_type).
    """
    from .hf import combine, prepare

    if outtype not in OUTTYPES:
        raise ValueError(f"unknown outtype {outtype!r}; choose one of {', '.join(OUTTYPES)}")
    dirs = [os.fspath(hf_dir)] if isinstance(hf_dir, (str, os.PathLike)) else [os.fspath(d) for d in hf_dir]
    if not dirs:
        raise ValueError("no HF folder to convert")
    parts = [prepare(d) for d in dirs]
    arch, kv, tensors = parts[0] if len(parts) == 1 else combine(parts, dirs)
    typed = {name: (arr, tensor_type(name, arr.shape, outtype)) for name, arr in tensors.items()}
    write_gguf(os.fspath(out_path), arch, kv, typed, file_type=FILE_TYPE[outtype])
    return {name: t for name, (_, t) in typed.items()}


def convert_main(argv: list[str] | None = None) -> int:
    """`graphdsl convert HF_DIR [HF_DIR2] -o OUT.gguf [--outtype f32|f16|bf16|q8_0|q4_0]`."""
    p = argparse.ArgumentParser(prog="graphdsl convert", description="HF checkpoint folder -> GGUF (llama.cpp layout); "
                                "a vision and an audio folder together make one mmproj")
    p.add_argument("hf_dir", nargs="+")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--outtype", default="f32", choices=OUTTYPES)
    args = p.parse_args(argv)
    try:
        types = convert(args.hf_dir if len(args.hf_dir) > 1 else args.hf_dir[0], args.output, args.outtype)
    except ValueError as e:
        print(f"graphdsl convert: error: {e}", file=sys.stderr)
        return 1
    counts: dict[str, int] = {}
    for t in types.values():
        counts[t] = counts.get(t, 0) + 1
    print(f"wrote {args.output}: {len(types)} tensors ({', '.join(f'{n} {t}' for t, n in sorted(counts.items()))})")
    return 0


def info_main(argv: list[str] | None = None) -> int:
    """`graphdsl info FILE.gguf`: metadata, tensors (name, shape, type, bytes) and the detected model."""
    from .info import describe

    p = argparse.ArgumentParser(prog="graphdsl info", description="describe a GGUF file")
    p.add_argument("file")
    args = p.parse_args(argv)
    try:
        print(describe(args.file))
    except (ValueError, OSError) as e:
        print(f"graphdsl info: error: {e}", file=sys.stderr)
        return 1
    return 0
