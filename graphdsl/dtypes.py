"""Element types of graphdsl tensors, with their ggml and NumPy counterparts.

Activations and inputs are f32, f16, bf16 or i32. Weights may also be ggml block-quantized
types; those never pass through NumPy as floats on the ggml path: they are handed to ggml as
raw blocks (uint8 rows) and only the reference interpreter dequantizes them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType


@dataclass(frozen=True)
class DType:
    name: str
    ggml_type: int
    block_size: int  # elements per block (1 for plain types)
    type_size: int  # bytes per block
    numpy: np.dtype | None  # None: stored as raw uint8 blocks

    @property
    def is_quantized(self) -> bool:
        return self.numpy is None

    @property
    def is_float(self) -> bool:
        return self.name in ("f32", "f16", "bf16") or self.is_quantized

    def row_bytes(self, n: int) -> int:
        return n // self.block_size * self.type_size

    def __repr__(self) -> str:
        return self.name


def _make(name: str, qtype: GGMLQuantizationType, numpy) -> DType:
    block, size = GGML_QUANT_SIZES[qtype]
    return DType(name, int(qtype), block, size, None if numpy is None else np.dtype(numpy))


# bf16 has no NumPy dtype: it is carried as its uint16 bit pattern.
_ALL = [
    _make("f32", GGMLQuantizationType.F32, np.float32),
    _make("f16", GGMLQuantizationType.F16, np.float16),
    _make("bf16", GGMLQuantizationType.BF16, np.uint16),
    _make("i32", GGMLQuantizationType.I32, np.int32),
    *(_make(q.lower(), GGMLQuantizationType[q], None)
      for q in ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K")),
]
DTYPES: dict[str, DType] = {d.name: d for d in _ALL}
f32, f16, bf16, i32 = (DTYPES[n] for n in ("f32", "f16", "bf16", "i32"))
ACTIVATION_DTYPES = (f32, f16, bf16, i32)


def dtype(x: str | DType) -> DType:
    """Look up a dtype by name ("f32", "q8_0", ...) or pass a DType through."""
    if isinstance(x, DType):
        return x
    try:
        return DTYPES[str(x).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {x!r}; known: {', '.join(DTYPES)}") from None


def from_numpy(arr: np.ndarray) -> DType:
    kind = {np.dtype(np.float32): f32, np.dtype(np.float16): f16, np.dtype(np.int32): i32}
    try:
        return kind[arr.dtype]
    except KeyError:
        raise ValueError(f"no graphdsl dtype for NumPy {arr.dtype}; use float32, float16 or int32") from None


def to_numpy(value) -> np.ndarray:
    """A torch tensor or array-like -> NumPy in its own dtype (bf16, which NumPy lacks, as f32);
    torch is never imported: a tensor is recognised by its ``detach``."""
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach"):
        t = value.detach().cpu()
        return (t.float() if str(t.dtype) == "torch.bfloat16" else t).numpy()
    return np.asarray(value)


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """Round to nearest even, as ggml's GGML_FP32_TO_BF16 does (NaN kept quiet)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = ((u + (0x7FFF + ((u >> 16) & 1))) >> 16).astype(np.uint16)
    return np.where(np.isnan(x), np.uint16(0x7FC0), rounded)


def as_i32(arr: np.ndarray, what: str) -> np.ndarray:
    """Integers as int32, range-checked in the caller's dtype first: a cast would wrap
    2**32 + 3 to 3 and read a valid but wrong row."""
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{what}: expected integers, got {arr.dtype}")
    if arr.dtype.itemsize > 4 or arr.dtype == np.uint32:
        info = np.iinfo(np.int32)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise ValueError(f"{what}: values [{arr.min()}, {arr.max()}] do not fit int32")
    return np.ascontiguousarray(arr, dtype=np.int32)


_F32_TABLES = ("position_embd", "token_types")
_WEIGHT = re.compile(r"\.weight(\.\d+)?$")  # v.patch_embd.weight, and its second kernel v.patch_embd.weight.1


def storage_type(name: str, shape: tuple[int, ...], wtype: str) -> str:
    """The one storage policy: the type a weight named ``name`` of ``shape`` is kept in when a
    model (or a file, ``convert.writer``) asks for ``wtype``; llama.cpp's convert_hf_to_gguf.py
    policy (MmprojModel + ModelBase.prepare_tensors):

    - 1-D tensors (norms, biases, class embedding) and anything not a ``.weight``: f32.
    - position and token-type tables: f32.
    - convolution kernels (rank >= 3): f16 when wtype is f16, else f32.
    - 2-D weights whose rows are not whole blocks: f16 for a quantized wtype.
    - other 2-D weights: wtype.

    (The converter adds one rule of its own: ``convert.writer.tensor_type``.)
    """
    d = dtype(wtype)
    if len(shape) <= 1 or not _WEIGHT.search(name) or any(t in name for t in _F32_TABLES):
        return "f32"
    if len(shape) >= 3:
        return "f16" if d is f16 else "f32"
    if d.is_quantized and shape[-1] % d.block_size:
        return "f16"
    return d.name
