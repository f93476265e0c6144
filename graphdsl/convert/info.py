"""`graphdsl info FILE.gguf`: header, metadata, tensors (name, shape, type, bytes) and the model."""
from __future__ import annotations

import numpy as np

from ..gguf_io import MMPROJ_ARCH, GGUFFile, load_mmproj, load_text, nonfinite, read_gguf


def _value(v, t: str) -> str:
    if isinstance(v, (list, np.ndarray)):
        head = ", ".join(repr(x) if isinstance(x, str) else f"{x:g}" if isinstance(x, float) else str(x)
                         for x in list(v[:6]))
        return f"[{head}{', ...' if len(v) > 6 else ''}] ({len(v)})"
    if isinstance(v, str) and len(v) > 80:
        return repr(v[:77] + "...")
    return repr(v)


def detect(path: str, f: GGUFFile) -> str:
    """One line saying what the file is, or why graphdsl cannot use it."""
    try:
        if f.architecture == MMPROJ_ARCH:
            cfg, tensors = load_mmproj(path)
            parts = []
            if cfg.vision:
                v = cfg.vision
                parts.append(f"vision {v.image_size}px/{v.patch_size} {v.n_layer}x{v.n_embd} "
                             f"projector {v.projector_type!r}, feature_layer {list(v.feature_layer)}, act {v.act}")
            if cfg.audio:
                a = cfg.audio
                parts.append(f"audio n_mel {a.n_mel} {a.n_layer}x{a.n_embd} projector {a.projector_type!r}")
            quirks = "".join(f"\n  quirk: {q}" for q in cfg.quirks)
            return "mmproj: " + "; ".join(parts) + _blocks(cfg, tensors) + quirks + _finite(f)
        info, emb = load_text(path)
        return (f"text model {info.architecture!r}: {info.n_vocab} tokens ({info.tokenizer_model}), "
                f"token_embd {emb.shape} {emb.dtype}" + _tokenizer(info) + _finite(f))
    except ValueError as e:
        return f"not usable by graphdsl: {e}"


def _finite(f: GGUFFile) -> str:
    bad = nonfinite(f.tensors)
    if not bad:
        return "\n  weights: no NaN or inf"
    return (f"\n  weights: {len(bad)} tensors hold NaN or inf: {', '.join(bad[:8])}{' ...' if len(bad) > 8 else ''} "
            "(from_gguf refuses them; check_finite=False loads them)")


def _tokenizer(info) -> str:
    """Whether the file's own tokenizer loads (the embedded tokenizer.json, else one rebuilt from
    tokenizer.ggml.*): the weights may be fine while the tokenizer is not, so it gets its own line."""
    from ..models.text import tokenizer_of
    try:
        tok = tokenizer_of(info)
    except ValueError as e:
        return f"\n  tokenizer: not usable: {e}"
    src = "embedded tokenizer.huggingface.json" if info.hf_json else f"rebuilt from tokenizer.ggml.* ({info.tokenizer_model})"
    return f"\n  tokenizer: {src}, {tok.vocab_size} tokens"


def _blocks(cfg, tensors) -> str:
    """Which registered architectures ``models.from_gguf`` builds for the file, or why it cannot
    (a projector no arch serves, or tensors that do not fit the block the metadata describes)."""
    from ..models import arch_for
    from ..models.common import select_weights
    try:
        archs = [arch_for(cfg, sec) for sec in ("vision", "audio") if getattr(cfg, sec) is not None]
        for a in archs:
            select_weights(a.block(a.config_from_gguf(cfg)), tensors, cfg.path)
    except ValueError as e:
        return f"\n  graphdsl.models: {str(e).split(': ', 1)[-1]}"
    return "\n  graphdsl.models: " + " + ".join(f"{a.name}.{a.block.__name__}" for a in archs)


def describe(path: str) -> str:
    """A readable report of a GGUF file (raises ValueError if it is not a valid GGUF file)."""
    f = read_gguf(path)
    lines = [(f"{path}: GGUF v{f.version}, {f.file_size} bytes, alignment {f.alignment}, "
              f"data at {f.data_offset}"), "", f"metadata ({len(f.metadata)}):"]
    width = max((len(k) for k in f.metadata), default=0)
    lines += [f"  {k:<{width}}  {f.value_types[k]:<9} {_value(v, f.value_types[k])}" for k, v in f.metadata.items()]
    lines += ["", f"tensors ({len(f.tensors)}, {sum(t.nbytes for t in f.tensors.values())} bytes):"]
    width = max((len(k) for k in f.tensors), default=0)
    for name, t in f.tensors.items():
        lines.append(f"  {name:<{width}}  {list(t.shape)!s:<22} {t.dtype:<6} {t.nbytes:>12}")
    misaligned = [n for n, t in f.tensors.items() if not t.aligned(32)]
    lines += ["", f"32-byte aligned views: {len(f.tensors) - len(misaligned)}/{len(f.tensors)}",
              "model: " + detect(path, f)]
    return "\n".join(lines)
