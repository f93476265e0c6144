"""Writing GGUF files: the per-tensor type policy and quantization (ggml's own quantizer).

Type policy (llama.cpp's convert_hf_to_gguf.py, MmprojModel + ModelBase.prepare_tensors):
- 1-D tensors (norms, biases, class embedding) and anything not named `*.weight`: f32, never quantized.
- position and token-type tables (`*position_embd*`, `token_types`): f32.
- convolution kernels (`v.patch_embd.weight`, `a.conv1d.N.weight`, rank >= 3): f16 when
  outtype is f16, else f32 (llama.cpp keeps the patch embedding f32 for bf16/q8_0 files).
- Gemma 3's `mm.input_projection.weight`: HF's (d_vision, d_text) layout, as llama.cpp reads it,
  is multiplied through a transpose, which ggml cannot do to blocks (llama.cpp issue #13025):
  f16 when outtype is quantized. (graphdsl.models.siglip also reads a (d_text, d_vision) matrix,
  quantized too, which this converter does not write: its files stay loadable by llama.cpp.)
- other 2-D weights: the outtype; a quantized outtype falls back to f16 when a row is not a
  whole number of blocks (32 for q8_0/q4_0).
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType

from .. import dtypes as dt
from ..fileio import atomic_path

OUTTYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")
# Every file says graphdsl wrote it: readers decide what the tensors alone cannot from it
# (gguf_io.mmproj: a square FFN's up/down naming, which legacy llama.cpp converters swapped).
KEY_WRITER = "graphdsl.writer"
FILE_TYPE = {"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16, "bf16": LlamaFileType.MOSTLY_BF16,
             "q8_0": LlamaFileType.MOSTLY_Q8_0, "q4_0": LlamaFileType.MOSTLY_Q4_0}
def tensor_type(name: str, shape: tuple[int, ...], outtype: str) -> str:
    """The graphdsl dtype name a tensor is stored as for a given outtype (``dtypes.storage_type``,
    the policy the model blocks declare their weights with too)."""
    if outtype not in OUTTYPES:
        raise ValueError(f"unknown outtype {outtype!r}; choose one of {', '.join(OUTTYPES)}")
    if "input_projection" in name and dt.dtype(outtype).is_quantized and len(shape) == 2:
        return "f16"  # HF's layout of Gemma 3's projection is multiplied through a transpose (see above)
    return dt.storage_type(name, shape, outtype)


def encode(arr: np.ndarray, dtype: str) -> np.ndarray:
    """f32 values -> the array GGUFWriter stores: f32/f16, bf16 bits (uint16) or uint8 block rows."""
    d = dt.dtype(dtype)
    x = np.ascontiguousarray(arr, dtype=np.float32)
    if d.is_quantized:
        from graphdsl import _ggml

        rows = x.reshape(-1, x.shape[-1]) if x.ndim else x.reshape(1, 1)
        out = np.empty((rows.shape[0], d.row_bytes(rows.shape[1])), np.uint8)
        _ggml.quantize(d.ggml_type, rows, out)
        return out.reshape(*x.shape[:-1], out.shape[-1])
    if d is dt.bf16:
        return dt.f32_to_bf16(x)
    return x.astype(d.numpy)


def write_gguf(path: str, arch: str, kv: list[tuple[str, object]], tensors: dict[str, tuple[np.ndarray, str]],
               *, file_type: int | None = None, progress=None) -> None:
    """Write a GGUF file. kv: (key, value) pairs, typed the way GGUFWriter types Python values
    (int -> u32 unless given as np.int32/np.uint64 etc., float -> f32, np.float64 -> f64, list -> array);
    tensors: name -> (f32 values, graphdsl dtype name). progress: called as
    ``progress("encode", done, total)`` after each tensor; with it, GGUFWriter's own byte bar
    (tqdm, on stderr) shows the final write.

    The file appears at `path` only once it is complete (graphdsl.fileio.atomic_path)."""
    with atomic_path(path) as tmp:  # a failed write keeps the old file; readers that mmap it keep theirs
        w = GGUFWriter(tmp, arch=arch)
        try:
            if file_type is not None:
                w.add_file_type(int(file_type))
            if KEY_WRITER not in dict(kv):
                from .. import __version__
                w.add_string(KEY_WRITER, f"graphdsl {__version__}")
            for key, value in kv:
                _add(w, key, value)
            for i, (name, (values, dtype)) in enumerate(tensors.items()):
                data = encode(values, dtype)
                if progress is not None:
                    progress("encode", i + 1, len(tensors))
                qtype = GGMLQuantizationType(dt.dtype(dtype).ggml_type)
                w.add_tensor(name, data, raw_dtype=qtype if qtype not in (GGMLQuantizationType.F32,
                                                                          GGMLQuantizationType.F16) else None)
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file(progress=progress is not None)
        finally:
            w.close()


def _add(w: GGUFWriter, key: str, value) -> None:
    if isinstance(value, bool):
        w.add_bool(key, value)
    elif isinstance(value, (int, np.integer)) and not isinstance(value, np.int32):
        w.add_uint32(key, int(value)) if 0 <= value < 2**32 else w.add_int64(key, int(value))
    elif isinstance(value, np.int32):
        w.add_int32(key, int(value))
    elif isinstance(value, np.float64):  # asked for f64 (models.settings: 1/255 must read back exactly)
        w.add_float64(key, float(value))
    elif isinstance(value, (float, np.floating)):
        w.add_float32(key, float(value))
    elif isinstance(value, str):
        w.add_string(key, value)
    elif isinstance(value, (list, tuple, np.ndarray)):
        w.add_array(key, list(value.tolist() if isinstance(value, np.ndarray) else value))
    else:
        raise ValueError(f"cannot write metadata {key!r} of type {type(value).__name__}")

