"""Tensor layouts of other writers that the names and shapes alone do not settle (mmproj files).

- swapped FFN: legacy converters named HF's fc1 `ffn_down` and fc2 `ffn_up`. clip.cpp swaps them
  back when ffn_down's input width is n_embd (is_ffn_swapped); a square FFN (n_ff == n_embd)
  fits both namings, and there the file's writer decides (clip.cpp swaps it always).
- column biases: llama.cpp's Whisper-family converters store the conv stem's biases as (n, 1).
- batch axes: llama.cpp's InternVL converter keeps HF's leading 1s on the class token (1, 1, d)
  and the position table (1, n + 1, d).
"""
from __future__ import annotations

import numpy as np
from gguf import Keys

from .reader import GGUFFile, GGUFTensor, metadata_value

# Projectors whose legacy files may carry ffn_up/ffn_down swapped (clip.cpp is_ffn_swapped).
FFN_SWAP_PROJECTORS = ("mlp", "ldp", "ldpv2", "qwen2vl_merger", "qwen2.5vl_merger", "adapter", "gemma3",
                       "idefics3", "resampler")


def column_biases(tensors: dict, quirks: list[str]) -> None:
    """llama.cpp's Whisper-family converters store the conv stem's biases as (n, 1) columns, which
    ggml broadcasts over time; the graph declares (n,): the same bytes, so the view is reshaped."""
    cols = [n for n, t in tensors.items() if n.startswith("a.conv1d.") and n.endswith(".bias")
            and len(t.shape) == 2 and t.shape[1] == 1 and t.array.ndim == 2]
    for n in cols:
        t = tensors[n]
        tensors[n] = GGUFTensor(t.array.reshape(t.shape[0]), t.dtype, (t.shape[0],))
    if cols:
        quirks.append(f"{', '.join(cols)} stored as (n, 1) columns (llama.cpp's converter): read as (n,)")


TABLES = ("v.class_embd", "v.position_embd.weight")


def batch_axes(tensors: dict, quirks: list[str]) -> None:
    """The vision tables stored with HF's leading batch axes of 1 (llama.cpp's InternVL converter:
    cls_token (1, 1, d), position_embeddings (1, n + 1, d)), which ggml ignores: the same bytes,
    so the view drops them."""
    found = []
    for n in TABLES:
        t = tensors.get(n)
        if t is None or len(t.shape) < 2 or t.shape[0] != 1 or t.array.ndim != len(t.shape):
            continue
        keep = 1 if n == "v.class_embd" else 2
        shape = t.shape[-keep:]
        if int(np.prod(t.shape[:-keep])) != 1:
            continue
        tensors[n] = GGUFTensor(t.array.reshape(shape), t.dtype, shape)
        found.append(f"{n} {list(t.shape)}")
    if found:
        quirks.append(f"{', '.join(found)} stored with leading axes of 1 (llama.cpp's converter): dropped")


def ffn_naming(f: GGUFFile) -> str:
    """Who named a square FFN: "hf" (fc1 is ffn_up) or "legacy" (fc1 is ffn_down). graphdsl marks
    its files (`graphdsl.*` keys) and never wrote legacy names; llama.cpp's convert_hf_to_gguf.py
    writes general.type "mmproj" and uses HF's naming since the rename; the legacy scripts
    (tools/mtmd/legacy-models/*.py, still shipped: mlp.fc1 -> ffn_down) write neither. (A pre-rename convert_hf_to_gguf file with a square
    FFN is misread; real towers have n_ff > n_embd, where the shapes decide.)"""
    ours = any(k.startswith("graphdsl.") for k in f.metadata)
    return "hf" if ours or metadata_value(f, Keys.General.TYPE, str, "") == "mmproj" else "legacy"


def fix_ffn_swap(f, tensors, prefix, n_embd, n_layer, proj, quirks) -> None:
    """Old converters named HF's fc1 `ffn_down` and fc2 `ffn_up`; clip.cpp swaps them back when
    ffn_down's input width (ne[0]) is n_embd, for the projector types that had such files; when
    both are square that says nothing, and the file's writer decides (`ffn_naming`)."""
    if proj not in FFN_SWAP_PROJECTORS:
        return
    swapped, square = 0, 0
    for i in range(n_layer):
        up, down = f"{prefix}.blk.{i}.ffn_up", f"{prefix}.blk.{i}.ffn_down"
        w, u = tensors.get(down + ".weight"), tensors.get(up + ".weight")
        if u is None or w is None or w.shape[-1] != n_embd:
            continue
        if u.shape == w.shape:  # (n_embd, n_embd) both: fits either naming
            square += 1
            if ffn_naming(f) == "hf":
                continue
        for s in ("weight", "bias"):
            a, b = tensors.pop(f"{up}.{s}", None), tensors.pop(f"{down}.{s}", None)
            if a is not None:
                tensors[f"{down}.{s}"] = a
            if b is not None:
                tensors[f"{up}.{s}"] = b
        swapped += 1
    if swapped:
        quirks.append(f"ffn_up/ffn_down swapped in {swapped} blocks (legacy naming): swapped back")
    if square > swapped:  # where we part from clip.cpp, which swaps these too
        quirks.append(f"square FFN (n_ff == n_embd) in {square - swapped} blocks kept as named: the file's writer "
                      f"uses HF's naming (graphdsl.* keys or general.type 'mmproj'); llama.cpp would swap them")


def ffn_width(tensors: dict, prefix: str, n_ff: int, proj: str, quirks: list[str]) -> int:
    """Qwen2-VL's FFN width, from its tensors: HF's vision config has mlp_ratio and no
    intermediate_size, so llama.cpp's converter writes feed_forward_length = hidden_size (the
    merger's output, the LM's width) and its legacy surgery script wrote 0; clip.cpp never reads it."""
    up = tensors.get(f"{prefix}.blk.0.ffn_up.weight")
    if proj != "qwen2vl_merger" or up is None or len(up.shape) != 2 or up.shape[0] == n_ff:
        return n_ff
    quirks.append(f"feed_forward_length {n_ff} is not the FFN's width for qwen2vl_merger (llama.cpp's converter "
                  f"writes the merger's output there): {up.shape[0]}, from {prefix}.blk.0.ffn_up.weight")
    return up.shape[0]
