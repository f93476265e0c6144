"""GGUF files in llama.cpp's conventions: a validating, memory-mapped reader.

    >>> f = read_gguf("mmproj.gguf")                     # doctest: +SKIP
    >>> cfg, tensors = load_mmproj("mmproj.gguf")         # doctest: +SKIP
    >>> arr, dtype, shape = tensors["v.blk.0.attn_q.weight"]  # doctest: +SKIP

Why not `gguf.GGUFReader` directly: it trusts every count in the file. A corrupt array length
makes it loop up to 2**64 times (a hang), other corruptions surface as IndexError or
UnicodeDecodeError, and some corrupt files load without complaint (300 mutated files: 1 hang,
48 IndexError, 19 UnicodeDecodeError, 48 silent loads). This module parses the same layout
(GGUF v2/v3, little-endian) with every count checked against the bytes that remain *before* it
is used, so a bad file is one `ValueError("<path>: <problem>")` raised before anything reaches
ggml. Names, enums and block sizes come from the gguf package; tests check that what we read
equals what GGUFReader reads on valid files.

Tensors are read-only NumPy views into one `np.memmap` of the file, in NumPy axis order (GGUF
stores ggml's `ne` order, innermost first: we reverse it). f32/f16/i32 views have their dtype,
bf16 views are uint16 bit patterns, block-quantized views are uint8 of shape
`(*shape[:-1], row_bytes)` (GGUFReader's `data.shape`), which `graphdsl.backends.weights`
accepts as raw blocks. A view starts at `data_offset + offset`, both multiples of
`general.alignment` (32 by default), from a page-aligned mapping: so with the default alignment
every view is 32-byte aligned, as zero-copy CPU buffers need (`GGUFTensor.aligned()`).

On top of the reader: `load_mmproj` (llama.cpp's multimodal projector files: configs, the
loader quirks llama.cpp applies, tensor presence and shape checks) and `load_text` (a text
model's token embedding and vocabulary).

llama.cpp loader quirks copied here (reference: tools/mtmd/clip.cpp, clip_model_loader::
load_hparams / load_tensors, and models/llava.cpp); each applied one is listed in
`MmprojConfig.quirks`:
- no projector type: clip.projector_type, then clip.vision/audio.projector_type; a vision file
  with neither is "mlp" (LLaVA). "qwen2.5o" means qwen2.5vl_merger for vision, qwen2a for audio.
- swapped FFN: legacy converters named HF's fc1 `ffn_down` and fc2 `ffn_up`; for the projector
  types that had such files, when ffn_down's input width is n_embd the two are swapped back.
- LLaVA's projector is `mm.0` / `mm.2` (HF linear_1 / linear_2; index 1 was the GELU).
- legacy LLaVA block count: without clip.vision.feature_layer, a file with an mlp/ldp/ldpv2
  projector wrote block_count = num_hidden_layers - 1 (and dropped that block) to mean "the
  penultimate layer". clip.cpp subtracts once more (il_last = n_layer - 1, llama.cpp issue
  #25817); we follow HF: feature_layer = (block_count,), the output of every stored block.
- defaults hard-coded per projector: activation gelu_quick unless clip.use_gelu / use_silu
  (both set is an error); ultravox/qwen2a/voxtral/glma force erf-GELU and Whisper's 16 kHz,
  n_fft 400, hop 160, 30 s windows; stack_factor required for ultravox/voxtral/glma; n_merge 4
  for gemma3, 2 for the qwen-VL mergers and glm4v, 1 for pixtral; image_mean/std required.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from gguf import (
    GGML_QUANT_SIZES,
    GGUF_DEFAULT_ALIGNMENT,
    GGUF_MAGIC,
    MODEL_ARCH,
    MODEL_ARCH_NAMES,
    MODEL_TENSOR,
    TENSOR_NAMES,
    GGMLQuantizationType,
    GGUFValueType,
    Keys,
    VisionProjectorType,
)

from . import dtypes as dt

__all__ = ["AudioConfig", "GGUFError", "GGUFFile", "GGUFTensor", "MmprojConfig", "TextInfo", "VisionConfig",
           "load_mmproj", "load_text", "read_gguf", "weights_of"]

MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NAME = 63  # GGML_MAX_NAME (64) minus the terminating NUL
_VT = GGUFValueType
# value type -> (struct format, NumPy dtype, short name)
_SCALAR = {_VT.UINT8: ("<B", "<u1", "u8"), _VT.INT8: ("<b", "<i1", "i8"), _VT.UINT16: ("<H", "<u2", "u16"),
           _VT.INT16: ("<h", "<i2", "i16"), _VT.UINT32: ("<I", "<u4", "u32"), _VT.INT32: ("<i", "<i4", "i32"),
           _VT.FLOAT32: ("<f", "<f4", "f32"), _VT.BOOL: ("<B", "<u1", "bool"), _VT.UINT64: ("<Q", "<u8", "u64"),
           _VT.INT64: ("<q", "<i8", "i64"), _VT.FLOAT64: ("<d", "<f8", "f64")}
_PLAIN = {GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16,
          GGMLQuantizationType.BF16: np.uint16, GGMLQuantizationType.F64: np.float64,
          GGMLQuantizationType.I8: np.int8, GGMLQuantizationType.I16: np.int16,
          GGMLQuantizationType.I32: np.int32, GGMLQuantizationType.I64: np.int64}
_BY_GGML = {d.ggml_type: d.name for d in dt.DTYPES.values()}


class GGUFError(ValueError):
    """A file that is not a GGUF file graphdsl can use; the message starts with the path."""


class GGUFTensor(NamedTuple):
    """One tensor of a GGUF file. Unpacks as `(array, dtype, shape)`."""

    array: np.ndarray  # read-only view: plain dtype, uint16 for bf16, uint8 block rows if quantized
    dtype: str  # graphdsl dtype name ("f32", "q8_0", ...), else the ggml type name ("q2_k", "f64")
    shape: tuple[int, ...]  # logical shape, NumPy order

    @property
    def nbytes(self) -> int:
        return self.array.nbytes

    @property
    def supported(self) -> bool:
        """Whether graphdsl can bind it as a weight (a graphdsl dtype)."""
        return self.dtype in dt.DTYPES

    def aligned(self, n: int = 32) -> bool:
        """Whether the view's address is a multiple of n bytes (zero-copy CPU buffers need 32)."""
        return self.array.ctypes.data % n == 0


@dataclass
class GGUFFile:
    path: str
    version: int
    alignment: int
    data_offset: int  # absolute offset of the tensor data section
    metadata: dict[str, Any]  # key -> int / float / bool / str / list[str] / np.ndarray
    value_types: dict[str, str]  # key -> "u32", "str", "arr[f32]", ...
    tensors: dict[str, GGUFTensor]
    offsets: dict[str, int] = field(default_factory=dict)  # tensor name -> absolute file offset
    file_size: int = 0

    @property
    def architecture(self) -> str | None:
        return self.metadata.get(Keys.General.ARCHITECTURE)

    def error(self, problem: str) -> GGUFError:
        return GGUFError(f"{self.path}: {problem}")

    def __getitem__(self, name: str) -> GGUFTensor:
        try:
            return self.tensors[name]
        except KeyError:
            raise self.error(f"missing tensor {name!r}") from None


def weights_of(tensors: dict[str, GGUFTensor]) -> dict[str, np.ndarray]:
    """name -> array, the mapping `executor.load_weights` takes (quantized blocks stay blocks)."""
    return {name: t.array for name, t in tensors.items()}


# -- parsing ------------------------------------------------------------------------------------
class _Cursor:
    """Reads little-endian GGUF values from a buffer; never reads or allocates past its end."""

    def __init__(self, buf: np.ndarray, path: str):
        self.buf, self.path, self.pos, self.size = buf, path, 0, int(buf.size)

    def fail(self, problem: str) -> GGUFError:
        return GGUFError(f"{self.path}: {problem}")

    def need(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            raise self.fail(f"truncated: {what} at byte {self.pos} needs {n} bytes, "
                            f"{self.size - self.pos} remain (file size {self.size})")

    def scalar(self, fmt: str, what: str):
        n = struct.calcsize(fmt)
        self.need(n, what)
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return v

    def u32(self, what: str) -> int:
        return self.scalar("<I", what)

    def u64(self, what: str) -> int:
        return self.scalar("<Q", what)

    def raw_string(self, what: str) -> bytes:
        n = self.u64(f"length of {what}")
        self.need(n, what)
        s = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return s

    def name(self, what: str) -> str:
        try:
            return self.raw_string(what).decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} at byte {self.pos} is not UTF-8") from None

    def value(self, vt: int, key: str, in_array: bool = False):
        """One metadata value and its short type name; arrays of arrays are refused."""
        if vt == _VT.STRING:
            return self.raw_string(f"string value of {key!r}").decode("utf-8", "surrogateescape"), "str"
        if vt in _SCALAR:
            fmt, _, short = _SCALAR[_VT(vt)]
            v = self.scalar(fmt, f"value of {key!r}")
            return (bool(v) if vt == _VT.BOOL else v), short
        if vt == _VT.ARRAY and not in_array:
            et = self.u32(f"element type of {key!r}")
            n = self.u64(f"length of {key!r}")
            if et == _VT.STRING:
                self.need(8 * n, f"{n} strings of {key!r}")  # each needs at least its length
                return [self.value(et, key, True)[0] for _ in range(n)], "arr[str]"
            if et not in _SCALAR:
                raise self.fail(f"array {key!r} has element type {et}, which a GGUF array cannot hold")
            _, np_type, short = _SCALAR[_VT(et)]
            dtype = np.dtype(np_type)
            self.need(n * dtype.itemsize, f"{n} elements of {key!r}")
            arr = np.frombuffer(self.buf, dtype, n, self.pos).copy()
            self.pos += n * dtype.itemsize
            return (arr.astype(bool) if et == _VT.BOOL else arr), f"arr[{short}]"
        raise self.fail(f"metadata {key!r} has unknown value type {vt}")


def read_gguf(path: str | os.PathLike) -> GGUFFile:
    """Parse and validate a GGUF file; tensors are views into a read-only memory map.

    Raises GGUFError (a ValueError) naming the file for: too short or truncated, wrong magic,
    unknown version, big-endian files, counts larger than the file could hold, bad value types,
    duplicate keys or tensors, bad alignment, >4 dims, unknown tensor types, rows that are not
    whole blocks, misaligned tensor offsets and tensor data past the end of the file.
    """
    path = os.fspath(path)
    size = os.path.getsize(path)
    if size < 24:
        raise GGUFError(f"{path}: {size} bytes is too short for a GGUF header (24 bytes)")
    buf = np.memmap(path, dtype=np.uint8, mode="r")
    c = _Cursor(buf, path)
    magic = c.u32("magic")
    if magic != GGUF_MAGIC:
        raise c.fail(f"wrong magic {bytes(buf[:4])!r}, expected b'GGUF': not a GGUF file")
    version = c.u32("version")
    if version & 0xFFFF == 0 and version:
        raise c.fail("big-endian GGUF files are not supported")
    if version not in (2, 3):
        raise c.fail(f"unknown GGUF version {version} (graphdsl reads versions 2 and 3)")
    n_tensors, n_kv = c.u64("tensor count"), c.u64("metadata count")
    rest = size - c.pos
    if n_kv > rest // 13 or n_tensors > rest // 32:  # smallest possible entries: 13 and 32 bytes
        raise c.fail(f"header claims {n_kv} metadata entries and {n_tensors} tensors, "
                     f"more than {rest} bytes can hold")
    metadata, types = {}, {}
    for i in range(n_kv):
        key = c.name(f"key of metadata entry {i}")
        if key in metadata:
            raise c.fail(f"duplicate metadata key {key!r}")
        metadata[key], types[key] = c.value(c.u32(f"type of {key!r}"), key)
    alignment = metadata.get(Keys.General.ALIGNMENT, GGUF_DEFAULT_ALIGNMENT)
    if types.get(Keys.General.ALIGNMENT, "u32") != "u32" or alignment <= 0 or alignment & (alignment - 1):
        raise c.fail(f"general.alignment must be a u32 power of two, got {alignment!r}")
    infos = [_tensor_info(c, i, alignment) for i in range(n_tensors)]
    data_offset = -(-c.pos // alignment) * alignment
    tensors, offsets = {}, {}
    for name, shape, qtype, nbytes, offset in infos:
        if name in tensors:
            raise c.fail(f"duplicate tensor {name!r}")
        start = data_offset + offset
        if start + nbytes > size:
            raise c.fail(f"tensor {name!r} data [{start}, {start + nbytes}) runs past the end of the "
                         f"file ({size} bytes): truncated?")
        tensors[name] = _view(buf, start, nbytes, shape, qtype)
        offsets[name] = start
    return GGUFFile(path, version, alignment, data_offset, metadata, types, tensors, offsets, size)


def _tensor_info(c: _Cursor, i: int, alignment: int):
    name = c.name(f"name of tensor {i}")
    if len(name.encode()) > MAX_NAME:
        raise c.fail(f"tensor name {name[:80]!r} is longer than ggml's {MAX_NAME} bytes")
    n_dims = c.u32(f"n_dims of {name!r}")
    if not 1 <= n_dims <= MAX_DIMS:
        raise c.fail(f"tensor {name!r} has {n_dims} dims; ggml allows 1 to {MAX_DIMS}")
    ne = [c.u64(f"dim {d} of {name!r}") for d in range(n_dims)]
    raw_type = c.u32(f"type of {name!r}")
    offset = c.u64(f"offset of {name!r}")
    try:
        qtype = GGMLQuantizationType(raw_type)
        block, type_size = GGML_QUANT_SIZES[qtype]
    except (ValueError, KeyError):
        raise c.fail(f"tensor {name!r} has unknown ggml type {raw_type}") from None
    if ne[0] % block:
        raise c.fail(f"tensor {name!r} ({qtype.name}): rows of {ne[0]} are not whole blocks of {block}")
    if offset % alignment:
        raise c.fail(f"tensor {name!r} offset {offset} is not a multiple of the alignment {alignment}")
    n_rows = 1
    for d in ne[1:]:
        n_rows *= d
    nbytes = n_rows * (ne[0] // block) * type_size
    if nbytes > c.size:
        raise c.fail(f"tensor {name!r} shape {tuple(reversed(ne))} ({qtype.name}) needs {nbytes} bytes, "
                     f"more than the whole file ({c.size} bytes)")
    return name, tuple(int(d) for d in reversed(ne)), qtype, nbytes, offset


def _view(buf: np.memmap, start: int, nbytes: int, shape: tuple[int, ...], qtype) -> GGUFTensor:
    raw = buf[start:start + nbytes]
    name = _BY_GGML.get(int(qtype), qtype.name.lower())
    if qtype in _PLAIN:
        return GGUFTensor(raw.view(_PLAIN[qtype]).reshape(shape), name, shape)
    block, type_size = GGML_QUANT_SIZES[qtype]
    return GGUFTensor(raw.reshape(*shape[:-1], shape[-1] // block * type_size), name, shape)


# -- mmproj files (llama.cpp tools/mtmd/clip.cpp: clip_model_loader) -----------------------------------
# Keys llama.cpp reads that the gguf package has no constant for (tools/mtmd/clip-impl.h).
KEY_FEATURE_LAYER = "clip.vision.feature_layer"
# graphdsl's own keys (llama.cpp ignores them): what llama.cpp's flags cannot say, so that a
# file converted from HF reproduces HF exactly. Absent, llama.cpp's meaning applies.
KEY_ACT = "graphdsl.{modality}.act"  # exact activation: "gelu_erf", "gelu" (tanh), "gelu_quick", "silu"
KEY_MM_ACT = "graphdsl.vision.projector_act"  # LLaVA mlp projector (llama.cpp: ggml_gelu, tanh form)
KEY_SELECT = "graphdsl.vision.select"  # "default": drop the class token (LLaVA), "full": keep it
MMPROJ_ARCH = MODEL_ARCH_NAMES[MODEL_ARCH.MMPROJ]  # "clip"

# Projector names llama.cpp knows (clip-impl.h PROJECTOR_TYPE_NAMES): the gguf package's
# VisionProjectorType plus the older ones it does not list. "none" is graphdsl's own: an encoder
# file without a projector (a plain CLIP/SigLIP/Whisper encoder), which llama.cpp cannot run.
PROJECTOR_TYPES = frozenset({v for k, v in vars(VisionProjectorType).items() if not k.startswith("_")}
                            | {"mlp", "ldp", "ldpv2", "resampler", "adapter", "yasa2", "parakeet", "none"})
LLAVA_PROJECTORS = ("mlp", "ldp", "ldpv2")  # hparams.has_llava_projector
# Projectors whose legacy files may carry ffn_up/ffn_down swapped (clip.cpp is_ffn_swapped).
FFN_SWAP_PROJECTORS = ("mlp", "ldp", "ldpv2", "qwen2vl_merger", "qwen2.5vl_merger", "adapter", "gemma3",
                       "idefics3", "resampler")
WHISPER_PROJECTORS = ("ultravox", "qwen2a", "voxtral", "glma")  # FFN_GELU_ERF, whisper preprocessing


@dataclass
class VisionConfig:
    projector_type: str
    image_size: int
    patch_size: int
    n_embd: int
    n_ff: int
    n_head: int
    n_layer: int  # blocks stored in the file (clip.vision.block_count)
    eps: float
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    # Hidden-state indices in HF's convention (0: the embeddings entering block 0, k: the output
    # of block k-1), all <= n_layer; empty: the output of the last block (+ post_ln if present).
    feature_layer: tuple[int, ...] = ()
    projection_dim: int = 0
    act: str = "gelu_quick"  # "gelu" (tanh form, as ggml_gelu), "silu", "gelu_quick" or "gelu_erf"
    projector_act: str = "gelu"  # activation inside the mlp projector
    select: str = "full"  # "default": the class token is dropped before the projector (LLaVA)
    n_merge: int = 0  # patch-merge factor llama.cpp hard-codes for some projectors (0: none)

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


@dataclass
class AudioConfig:
    projector_type: str
    n_mel: int
    n_embd: int
    n_ff: int
    n_head: int
    n_layer: int
    eps: float
    projection_dim: int = 0
    stack_factor: int = 0  # frames stacked before the projector (ultravox, voxtral, glma)
    act: str = "gelu_erf"
    # Pre-processing llama.cpp hard-codes for Whisper-style encoders (not in the file).
    sample_rate: int = 16000
    n_fft: int = 400
    hop_length: int = 160
    chunk_seconds: int = 30


@dataclass
class MmprojConfig:
    vision: VisionConfig | None
    audio: AudioConfig | None
    name: str = ""
    quirks: list[str] = field(default_factory=list)  # llama.cpp loader quirks applied to this file
    path: str = ""
    # every tensor of the file (quirk-corrected names): logical shape (NumPy order) and stored type,
    # so that a model config can be derived from the config alone (graphdsl.models.*.config_from_gguf)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict, repr=False)
    dtypes: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def projector_type(self) -> str:
        return (self.vision or self.audio).projector_type

    def error(self, problem: str) -> GGUFError:
        return GGUFError(f"{self.path or self.name or 'mmproj'}: {problem}")


def load_mmproj(path: str | os.PathLike) -> tuple[MmprojConfig, dict[str, GGUFTensor]]:
    """Read an mmproj file: its config, and tensors by (quirk-corrected) name.

    Checks, before anything reaches ggml: architecture "clip", at least one encoder, a known
    projector type, the hyperparameters each encoder needs, every tensor graphdsl's encoders use
    present with the shape the metadata implies, and every tensor of a type graphdsl can run.
    """
    path = os.fspath(path)
    f = read_gguf(path)
    if f.architecture != MMPROJ_ARCH:
        raise f.error(f"general.architecture is {f.architecture!r}, an mmproj file has {MMPROJ_ARCH!r}")
    quirks: list[str] = []
    tensors = dict(f.tensors)
    has_v = _get(f, Keys.Clip.HAS_VISION_ENCODER, bool, False)
    has_a = _get(f, Keys.Clip.HAS_AUDIO_ENCODER, bool, False)
    if not has_v and not has_a:
        raise f.error("neither clip.has_vision_encoder nor clip.has_audio_encoder is true")
    bad = [f"{n} ({t.dtype})" for n, t in tensors.items() if not t.supported]
    if bad:
        raise f.error(f"tensor types graphdsl cannot run: {', '.join(bad)}; "
                      f"supported: {', '.join(dt.DTYPES)}")
    vision = _vision_config(f, tensors, quirks) if has_v else None
    audio = _audio_config(f, tensors, quirks) if has_a else None
    cfg = MmprojConfig(vision, audio, _get(f, Keys.General.NAME, str, ""), quirks, path,
                       {n: t.shape for n, t in tensors.items()}, {n: t.dtype for n, t in tensors.items()})
    return cfg, tensors


_REQUIRED = object()


_KINDS = {bool: lambda t: t == "bool", str: lambda t: t == "str", int: lambda t: t[0] in "ui",
          float: lambda t: t[0] in "uif", "ints": lambda t: t[:5] in ("arr[u", "arr[i"),
          "floats": lambda t: t[:4] == "arr[" and t[4] in "uif", "strs": lambda t: t == "arr[str]"}


def _get(f: GGUFFile, key: str, kind, default=_REQUIRED):
    """A metadata value of the given kind: bool, str, int (any integer type, >= 0), float (any
    number, finite), or an array of "ints", "floats" (finite) or "strs" as a list."""
    if key not in f.metadata:
        if default is _REQUIRED:
            raise f.error(f"missing metadata key {key!r}")
        return default
    v, t = f.metadata[key], f.value_types[key]
    if not _KINDS[kind](t):
        raise f.error(f"metadata {key!r} is {t}, expected {getattr(kind, '__name__', kind)}")
    if kind is int and v < 0:
        raise f.error(f"metadata {key!r} must be >= 0, got {v}")
    if kind is float and not np.isfinite(v):
        raise f.error(f"metadata {key!r} must be finite, got {v}")
    if kind == "floats" and not np.all(np.isfinite(v)):
        raise f.error(f"metadata {key!r} must be finite, got {list(v)}")
    return kind(v) if isinstance(kind, type) else list(v.tolist() if isinstance(v, np.ndarray) else v)


def _projector(f: GGUFFile, modality_key: str, modality: str, quirks: list[str]) -> str:
    proj = _get(f, Keys.Clip.PROJECTOR_TYPE, str, "") or _get(f, modality_key, str, "")
    if not proj and modality == "vision":
        proj = "mlp"
        quirks.append("no projector_type: llama.cpp assumes 'mlp' (LLaVA) for vision")
    if proj == "qwen2.5o":  # legacy omni files name one projector for both encoders
        proj = "qwen2.5vl_merger" if modality == "vision" else "qwen2a"
        quirks.append(f"projector_type 'qwen2.5o' read as {proj!r} for {modality}")
    if proj not in PROJECTOR_TYPES:
        raise f.error(f"unknown {modality} projector type {proj!r}; known: {', '.join(sorted(PROJECTOR_TYPES))}")
    return proj


def _act(f: GGUFFile, proj: str, modality: str) -> str:
    exact = _get(f, KEY_ACT.format(modality=modality), str, "")
    if exact:
        if exact not in ("gelu_erf", "gelu", "gelu_quick", "silu", "relu"):
            raise f.error(f"{KEY_ACT.format(modality=modality)} {exact!r} is not an activation graphdsl knows")
        return exact
    gelu = _get(f, Keys.ClipVision.USE_GELU, bool, False)
    silu = _get(f, Keys.ClipVision.USE_SILU, bool, False)
    if gelu and silu:
        raise f.error("both clip.use_gelu and clip.use_silu are true")
    if proj in WHISPER_PROJECTORS:
        return "gelu_erf"  # clip.cpp forces FFN_GELU_ERF for these, whatever the flags say
    return "gelu" if gelu else "silu" if silu else "gelu_quick"


def _encoder_dims(f: GGUFFile, ns: type) -> dict:
    dims = dict(n_embd=_get(f, ns.EMBEDDING_LENGTH, int), n_ff=_get(f, ns.FEED_FORWARD_LENGTH, int),
                n_head=_get(f, ns.Attention.HEAD_COUNT, int), n_layer=_get(f, ns.BLOCK_COUNT, int),
                eps=_get(f, ns.Attention.LAYERNORM_EPS, float), projection_dim=_get(f, ns.PROJECTION_DIM, int, 0))
    if dims["n_embd"] == 0 or dims["n_head"] == 0 or dims["n_embd"] % dims["n_head"]:
        raise f.error(f"embedding_length {dims['n_embd']} must be a positive multiple of head_count {dims['n_head']}")
    if not dims["eps"] > 0:
        raise f.error(f"layer_norm_epsilon must be > 0, got {dims['eps']}")
    return dims


def _vision_config(f: GGUFFile, tensors: dict, quirks: list[str]) -> VisionConfig:
    V = Keys.ClipVision
    proj = _projector(f, V.PROJECTOR_TYPE, "vision", quirks)
    dims = _encoder_dims(f, V)
    image_size, patch = _get(f, V.IMAGE_SIZE, int), _get(f, V.PATCH_SIZE, int)
    if patch == 0 or image_size < patch:
        raise f.error(f"clip.vision.patch_size {patch} must be in 1..image_size ({image_size})")
    mean, std = (_get(f, k, "floats") for k in (V.IMAGE_MEAN, V.IMAGE_STD))
    if len(mean) != 3 or len(std) != 3 or not all(s > 0 for s in std):
        raise f.error(f"image_mean/image_std need 3 finite values (std > 0), got {mean} / {std}")
    feature_layer = tuple(int(x) for x in _get(f, KEY_FEATURE_LAYER, "ints", []))
    n_layer = dims["n_layer"]
    if feature_layer and not all(0 <= x <= n_layer for x in feature_layer):
        raise f.error(f"{KEY_FEATURE_LAYER} {list(feature_layer)} must lie in 0..block_count ({n_layer})")
    if not feature_layer and proj in LLAVA_PROJECTORS:
        # Legacy LLaVA files say "penultimate layer" by writing block_count = num_hidden_layers - 1
        # and dropping the last block's tensors, with no feature_layer. clip.cpp then subtracts
        # again (il_last = n_layer - 1, llama.cpp issue #25817); we follow HF and run all stored blocks.
        feature_layer = (n_layer,)
        quirks.append(f"no {KEY_FEATURE_LAYER}: legacy LLaVA file, block_count {n_layer} is already one short "
                      f"of the tower; features = output of all {n_layer} stored blocks (HF's -2)")
    n_merge = {"gemma3": 4, "qwen2vl_merger": 2, "qwen2.5vl_merger": 2, "qwen3vl_merger": 2, "glm4v": 2,
               "pixtral": 1, "lightonocr": 1}.get(proj, 0)
    n_merge = _get(f, V.SPATIAL_MERGE_SIZE, int, _get(f, V.Projector.SCALE_FACTOR, int, n_merge))
    select = _get(f, KEY_SELECT, str, "default" if proj in LLAVA_PROJECTORS else "full")
    if select not in ("default", "full"):
        raise f.error(f"{KEY_SELECT} must be 'default' or 'full', got {select!r}")
    cfg = VisionConfig(proj, image_size, patch, image_mean=tuple(map(float, mean)), image_std=tuple(map(float, std)),
                       feature_layer=feature_layer, act=_act(f, proj, "vision"),
                       projector_act=_get(f, KEY_MM_ACT, str, "gelu"), select=select, n_merge=n_merge, **dims)
    _fix_ffn_swap(f, tensors, "v", cfg.n_embd, cfg.n_layer, proj, quirks)
    _check_vision(f, tensors, cfg)
    return cfg


def _audio_config(f: GGUFFile, tensors: dict, quirks: list[str]) -> AudioConfig:
    A = Keys.ClipAudio
    proj = _projector(f, A.PROJECTOR_TYPE, "audio", quirks)
    dims = _encoder_dims(f, A)
    need_stack = proj in ("ultravox", "voxtral", "glma")
    stack = _get(f, A.Projector.STACK_FACTOR, int, _REQUIRED if need_stack else 0)
    cfg = AudioConfig(proj, _get(f, A.NUM_MEL_BINS, int), stack_factor=stack, act=_act(f, proj, "audio"), **dims)
    if cfg.n_mel == 0:
        raise f.error("clip.audio.num_mel_bins must be > 0")
    _fix_ffn_swap(f, tensors, "a", cfg.n_embd, cfg.n_layer, proj, quirks)
    _check_audio(f, tensors, cfg)
    return cfg


def _fix_ffn_swap(f, tensors, prefix, n_embd, n_layer, proj, quirks) -> None:
    """Old converters named HF's fc1 `ffn_down` and fc2 `ffn_up`; clip.cpp swaps them back when
    ffn_down's input width (ne[0]) is n_embd, for the projector types that had such files."""
    if proj not in FFN_SWAP_PROJECTORS:
        return
    swapped = 0
    for i in range(n_layer):
        up, down = f"{prefix}.blk.{i}.ffn_up", f"{prefix}.blk.{i}.ffn_down"
        w = tensors.get(down + ".weight")
        if up + ".weight" in tensors and w is not None and w.shape[-1] == n_embd:
            for s in ("weight", "bias"):
                a, b = tensors.pop(f"{up}.{s}", None), tensors.pop(f"{down}.{s}", None)
                if a is not None:
                    tensors[f"{down}.{s}"] = a
                if b is not None:
                    tensors[f"{up}.{s}"] = b
            swapped += 1
    if swapped:
        quirks.append(f"ffn_up/ffn_down swapped in {swapped} blocks (legacy naming): swapped back")


# -- tensor checks: what graphdsl's encoders read, with the shapes the metadata implies ------------------
CHECKED_VISION = ("mlp", "none", "gemma3", "idefics3")  # ViT towers the standard checks fit
CHECKED_AUDIO = ("ultravox", "qwen2a", "voxtral", "none")  # Whisper encoders


def tensor_name(t: MODEL_TENSOR, suffix: str | None = "weight", bid: int | None = None) -> str:
    """The file name of a tensor from the gguf package's table: (V_ENC_ATTN_Q, "bias", 3) -> v.blk.3.attn_q.bias."""
    name = TENSOR_NAMES[t].format(bid=bid)
    return f"{name}.{suffix}" if suffix else name


_tn = tensor_name


class _Checks:
    """Collects missing and mis-shaped tensors, then raises one error listing them all."""

    def __init__(self, f: GGUFFile, tensors: dict[str, GGUFTensor]):
        self.f, self.tensors, self.missing, self.bad = f, tensors, [], []

    def __call__(self, name: str, shape: tuple | None, required: bool = True) -> GGUFTensor | None:
        t = self.tensors.get(name)
        if t is None:
            if required:
                self.missing.append(name)
            return None
        if shape is not None and (t.shape != shape and not (len(shape) == 1 and int(np.prod(t.shape)) == shape[0])):
            self.bad.append(f"{name} {t.shape} != {shape}")
        return t

    def raise_if_any(self, what: str) -> None:
        parts = ([f"missing {len(self.missing)}: {', '.join(self.missing[:12])}"
                  + (" ..." if len(self.missing) > 12 else "")] if self.missing else [])
        parts += [f"shape disagrees with the metadata: {'; '.join(self.bad[:12])}"] if self.bad else []
        if parts:
            raise self.f.error(f"{what}: " + " | ".join(parts))


_BLOCK = {"v": (MODEL_TENSOR.V_ENC_INPUT_NORM, MODEL_TENSOR.V_ENC_ATTN_Q, MODEL_TENSOR.V_ENC_ATTN_K,
                MODEL_TENSOR.V_ENC_ATTN_V, MODEL_TENSOR.V_ENC_ATTN_O, MODEL_TENSOR.V_ENC_POST_ATTN_NORM,
                MODEL_TENSOR.V_ENC_FFN_UP, MODEL_TENSOR.V_ENC_FFN_DOWN),
          "a": (MODEL_TENSOR.A_ENC_INPUT_NORM, MODEL_TENSOR.A_ENC_ATTN_Q, MODEL_TENSOR.A_ENC_ATTN_K,
                MODEL_TENSOR.A_ENC_ATTN_V, MODEL_TENSOR.A_ENC_OUTPUT, MODEL_TENSOR.A_ENC_OUTPUT_NORM,
                MODEL_TENSOR.A_ENC_FFN_UP, MODEL_TENSOR.A_ENC_FFN_DOWN)}


def _check_blocks(check: _Checks, prefix: str, n: int, ff: int, n_layer: int, pre: MODEL_TENSOR,
                  post: MODEL_TENSOR) -> None:
    ln1, q, k, v, o, ln2, up, down = _BLOCK[prefix]
    for i in range(n_layer):
        for t, w, b in ((ln1, (n,), (n,)), (q, (n, n), (n,)), (k, (n, n), (n,)), (v, (n, n), (n,)),
                        (o, (n, n), (n,)), (ln2, (n,), (n,)), (up, (ff, n), (ff,)), (down, (n, ff), (n,))):
            check(_tn(t, "weight", i), w)
            check(_tn(t, "bias", i), b, required=False)
    for t in (pre, post):
        check(_tn(t, "weight"), (n,), required=False)
        check(_tn(t, "bias"), (n,), required=False)


def _check_vision(f: GGUFFile, tensors: dict, cfg: VisionConfig) -> None:
    if cfg.projector_type not in CHECKED_VISION:
        return
    check, n, p = _Checks(f, tensors), cfg.n_embd, cfg.patch_size
    check(_tn(MODEL_TENSOR.V_ENC_EMBD_PATCH), (n, 3, p, p))
    check(_tn(MODEL_TENSOR.V_ENC_EMBD_PATCH, "bias"), (n,), required=False)
    cls = check(_tn(MODEL_TENSOR.V_ENC_EMBD_CLS, None), (n,), required=False)
    check(_tn(MODEL_TENSOR.V_ENC_EMBD_POS), (cfg.n_patches + (cls is not None), n))
    _check_blocks(check, "v", n, cfg.n_ff, cfg.n_layer, MODEL_TENSOR.V_PRE_NORM, MODEL_TENSOR.V_POST_NORM)
    if cfg.projector_type == "mlp":
        width = n * max(1, len(cfg.feature_layer))  # several feature layers are concatenated
        mm0 = check(_tn(MODEL_TENSOR.V_MMPROJ, "weight", 0), None)
        if mm0 is not None:
            if len(mm0.shape) != 2 or mm0.shape[1] != width:
                check.bad.append(f"mm.0.weight {mm0.shape} != (*, {width})")
            check(_tn(MODEL_TENSOR.V_MMPROJ, "bias", 0), mm0.shape[:1])
            mm2 = check(_tn(MODEL_TENSOR.V_MMPROJ, "weight", 2), None, required=False)
            if mm2 is not None:
                if len(mm2.shape) != 2 or mm2.shape[1] != mm0.shape[0]:
                    check.bad.append(f"mm.2.weight {mm2.shape} != (*, {mm0.shape[0]})")
                check(_tn(MODEL_TENSOR.V_MMPROJ, "bias", 2), mm2.shape[:1])
    elif cfg.projector_type == "gemma3":
        check(_tn(MODEL_TENSOR.V_MM_INP_PROJ), None)
        check(_tn(MODEL_TENSOR.V_MM_SOFT_EMB_NORM), None)
    elif cfg.projector_type == "idefics3":
        check(_tn(MODEL_TENSOR.V_MMPROJ_FC), None)
    check.raise_if_any(f"vision encoder ({cfg.projector_type})")


def _check_audio(f: GGUFFile, tensors: dict, cfg: AudioConfig) -> None:
    if cfg.projector_type not in CHECKED_AUDIO:
        return
    check, n = _Checks(f, tensors), cfg.n_embd
    check(_tn(MODEL_TENSOR.A_ENC_CONV1D, "weight", 1), (n, cfg.n_mel, 3))
    check(_tn(MODEL_TENSOR.A_ENC_CONV1D, "bias", 1), (n,))
    check(_tn(MODEL_TENSOR.A_ENC_CONV1D, "weight", 2), (n, n, 3))
    check(_tn(MODEL_TENSOR.A_ENC_CONV1D, "bias", 2), (n,))
    pos = check(_tn(MODEL_TENSOR.A_ENC_EMBD_POS), None)
    if pos is not None and (len(pos.shape) != 2 or pos.shape[1] != n):
        check.bad.append(f"a.position_embd.weight {pos.shape} != (n_ctx, {n})")
    _check_blocks(check, "a", n, cfg.n_ff, cfg.n_layer, MODEL_TENSOR.A_PRE_NORM, MODEL_TENSOR.A_POST_NORM)
    first = {"ultravox": _tn(MODEL_TENSOR.A_MMPROJ, "weight", 1), "voxtral": _tn(MODEL_TENSOR.A_MMPROJ, "weight", 1),
             "qwen2a": _tn(MODEL_TENSOR.A_MMPROJ_FC)}.get(cfg.projector_type)
    if first is not None:
        w = check(first, None)
        width = n * max(1, cfg.stack_factor)
        if w is not None and (len(w.shape) != 2 or w.shape[1] != width):
            check.bad.append(f"{first} {w.shape} != (*, {width})")
    check.raise_if_any(f"audio encoder ({cfg.projector_type})")


# -- text models: token embeddings and the tokenizer.ggml.* vocabulary ---------------------------------
@dataclass
class TextInfo:
    architecture: str
    n_embd: int
    n_vocab: int
    tokenizer_model: str  # tokenizer.ggml.model: "llama", "gpt2", "bert", ...
    tokens: list[str]
    token_type: np.ndarray | None = None
    scores: np.ndarray | None = None
    merges: list[str] | None = None
    special: dict[str, int] = field(default_factory=dict)  # "bos", "eos", "unk", "sep", "pad", "mask"
    pre: str = ""  # tokenizer.ggml.pre
    hparams: dict[str, Any] = field(default_factory=dict)  # "{arch}.*" keys without the prefix
    hf_json: str = ""  # tokenizer.huggingface.json, when the file embeds one
    add_bos: bool | None = None  # tokenizer.ggml.add_bos_token / add_eos_token (None: not said)
    add_eos: bool | None = None


def load_text(path: str | os.PathLike | GGUFFile) -> tuple[TextInfo, GGUFTensor]:
    """A text model's vocabulary and `token_embd.weight` (any ggml type graphdsl runs, quantized too).

    Checks that the table has one row per token and `{arch}.embedding_length` columns. `path` may
    be a file already read with `read_gguf` (its other tensors are then at hand, not re-parsed).
    """
    f = path if isinstance(path, GGUFFile) else read_gguf(path)
    arch = f.architecture
    if not arch or arch == MMPROJ_ARCH:
        raise f.error(f"general.architecture is {arch!r}: not a text model")
    T = Keys.Tokenizer
    tokens = _get(f, T.LIST, "strs")
    if not tokens:
        raise f.error(f"{T.LIST} is empty")
    emb = f[_tn(MODEL_TENSOR.TOKEN_EMBD)]
    n_embd = _get(f, Keys.LLM.EMBEDDING_LENGTH.format(arch=arch), int, emb.shape[-1])
    if len(emb.shape) != 2 or emb.shape != (len(tokens), n_embd):
        raise f.error(f"token_embd.weight {emb.shape} disagrees with the metadata: "
                      f"({len(tokens)} tokens, embedding_length {n_embd})")
    if not emb.supported:
        raise f.error(f"token_embd.weight has type {emb.dtype}, which graphdsl cannot run")
    opt = {T.TOKEN_TYPE: _get(f, T.TOKEN_TYPE, "ints", None), T.SCORES: _get(f, T.SCORES, "floats", None),
           T.MERGES: _get(f, T.MERGES, "strs", None)}
    for key in (T.TOKEN_TYPE, T.SCORES):
        if opt[key] is not None:
            if len(opt[key]) != len(tokens):
                raise f.error(f"{key} has {len(opt[key])} entries for {len(tokens)} tokens")
            opt[key] = np.asarray(opt[key], np.int32 if key == T.TOKEN_TYPE else np.float32)
    special = {}
    for name, key in (("bos", T.BOS_ID), ("eos", T.EOS_ID), ("unk", T.UNK_ID), ("sep", T.SEP_ID),
                      ("pad", T.PAD_ID), ("mask", T.MASK_ID)):
        if key in f.metadata:
            v = _get(f, key, int)
            if v < len(tokens):  # llama.cpp too ignores an out-of-range id (with a warning)
                special[name] = v
    info = TextInfo(arch, n_embd, len(tokens), _get(f, T.MODEL, str, ""), tokens, opt[T.TOKEN_TYPE],
                    opt[T.SCORES], opt[T.MERGES], special, _get(f, T.PRE, str, ""),
                    {k[len(arch) + 1:]: v for k, v in f.metadata.items() if k.startswith(arch + ".")},
                    _get(f, T.HF_JSON, str, ""), _get(f, T.ADD_BOS, bool, None), _get(f, T.ADD_EOS, bool, None))
    return info, emb
