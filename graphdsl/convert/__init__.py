"""Checkpoints -> GGUF (the `graphdsl convert` and `graphdsl info` commands are graphdsl.cli.gguf).

    >>> from graphdsl.convert import convert
    >>> convert("hf/clip-vit-base-patch32", "clip.gguf", outtype="q8_0")   # doctest: +SKIP

Supported HF folders (config.json + safetensors or pytorch_model.bin): CLIP vision (CLIPModel,
CLIPVisionModel), LLaVA (vision tower + mlp projector), SigLIP vision, Whisper encoders (with a
projector where the checkpoint has one) and BERT-style text models. Tensor names and layouts
come from `graphdsl.models.<arch>.hf_to_gguf`, metadata and types from `hf.py` / `writer.py`.
"""
from __future__ import annotations

import os

from ..fileio import check_output
from .writer import FILE_TYPE, OUTTYPES, tensor_type, write_gguf

__all__ = ["OUTTYPES", "convert", "input_files", "tensor_type"]


def input_files(hf_dirs) -> list[str]:
    """The files converting `hf_dirs` may read: every file in those folders but GGUF files (which
    the converter never reads, so converting into the model's own folder can replace them)."""
    out = []
    for d in hf_dirs:
        if os.path.isdir(d):
            out += [e.path for e in os.scandir(d) if not e.name.lower().endswith(".gguf")]
    return out


def convert(hf_dir: str | os.PathLike | list, out_path: str | os.PathLike, outtype: str = "f32", *,
            progress=None) -> dict[str, str]:
    """Convert an HF model folder to one GGUF file; returns tensor name -> stored dtype.

    hf_dir may also be a list of folders: a vision and an audio model combined into one mmproj
    (clip.vision.projector_type + clip.audio.projector_type), as the files of omni models.
    outtype: "f32", "f16", "bf16", "q8_0" or "q4_0" for the 2-D weight matrices; norms, biases,
    position tables and 1-D tensors stay f32, conv kernels f16 (outtype f16) or f32, and matrices
    whose rows are not whole quantization blocks fall back to f16 (see writer.tensor_type).

    out_path is never one of the checkpoint's files (ValueError); an existing GGUF there is
    replaced only once the new one is complete (graphdsl.fileio), so a failed conversion keeps it.
    progress: called as ``progress(stage, done, total)``: "read" per folder, "encode" per tensor
    (see writer.write_gguf).
    """
    from .hf import combine, prepare_all

    if outtype not in OUTTYPES:
        raise ValueError(f"unknown outtype {outtype!r}; choose one of {', '.join(OUTTYPES)}")
    dirs = [os.fspath(hf_dir)] if isinstance(hf_dir, (str, os.PathLike)) else [os.fspath(d) for d in hf_dir]
    if not dirs:
        raise ValueError("no HF folder to convert")
    check_output(out_path, input_files(dirs), force=True)
    parts, names = [], []
    for i, d in enumerate(dirs):
        for part in prepare_all(d):  # a folder may hold several encoders (Phi-4-multimodal)
            parts.append(part)
            names.append(d)
        if progress is not None:
            progress("read", i + 1, len(dirs))
    arch, kv, tensors = parts[0] if len(parts) == 1 else combine(parts, names)
    typed = {name: (arr, tensor_type(name, arr.shape, outtype)) for name, arr in tensors.items()}
    write_gguf(os.fspath(out_path), arch, kv, typed, file_type=FILE_TYPE[outtype], progress=progress)
    return {name: t for name, (_, t) in typed.items()}
