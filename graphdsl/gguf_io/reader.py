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
    GGMLQuantizationType,
    GGUFValueType,
    Keys,
)

from .. import dtypes as dt


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


class MissingTensor(GGUFError, KeyError):
    """A tensor a model needs that its file lacks. A ValueError naming the file (what the CLI
    prints as one line), and still a KeyError for code that probes a table with try/except."""

    __str__ = ValueError.__str__  # KeyError's would print the message as a quoted repr


class TensorTable(dict):
    """name -> value over a file's tensors (GGUFTensor, shape or type). Looking up a name it
    lacks raises MissingTensor naming the file, the tensor, the projector that needs it and what
    the file holds, where a plain dict's bare ``KeyError: 'mm.model.fc.weight'`` names nothing;
    ``get`` and ``in`` behave as a dict's. Plain-data attributes, so it pickles (workers, Ray).

    ``owners``: (name prefixes, who needs them) pairs, first match wins, e.g.
    ``((("a.", "mm.a."), "audio projector 'voxtral'"), ((), "vision projector 'gemma3'"))``.
    """

    def __init__(self, items=(), path: str = "", owners: tuple = ()):
        super().__init__(items)
        self.path, self.owners = path, tuple(owners)

    def __missing__(self, name):
        raise MissingTensor(f"{self.path or 'GGUF file'}: tensor {name!r} is missing ({self.needed_by(name)}"
                            f"the file has {self.summary()})")

    @staticmethod
    def owners_of(vision, audio) -> tuple:
        """The owners of an mmproj file's tensors: its audio projector's a.* / mm.a.*, its vision one's the rest."""
        a, v = (f"projector {s.projector_type!r}" if s else "" for s in (audio, vision))
        return (((), a or v),) if not (a and v) else ((("a.", "mm.a."), f"audio {a}"), ((), f"vision {v}"))

    def needed_by(self, name: str) -> str:
        who = next((w for prefixes, w in self.owners if not prefixes or str(name).startswith(tuple(prefixes))), "")
        return f"{who} needs it; " if who else ""

    def summary(self) -> str:
        """'38 tensors: a.* (35), mm.* (3)': how many, by the part of the name before the first dot."""
        groups: dict[str, int] = {}
        for n in self:
            head = n.split(".", 1)[0] + (".*" if "." in n else "")
            groups[head] = groups.get(head, 0) + 1
        parts = [f"{h} ({c})" for h, c in sorted(groups.items())]
        return f"{len(self)} tensors" + (f": {', '.join(parts[:12])}" + (", ..." if len(parts) > 12 else "")
                                         if parts else "")


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

    def __post_init__(self):
        self.tensors = TensorTable(self.tensors, self.path)  # f.tensors[name] names the file when it lacks one

    @property
    def architecture(self) -> str | None:
        return self.metadata.get(Keys.General.ARCHITECTURE)

    def error(self, problem: str) -> GGUFError:
        return GGUFError(f"{self.path}: {problem}")

    def __getitem__(self, name: str) -> GGUFTensor:
        return self.tensors[name]


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


# -- typed metadata access ----------------------------------------------------------------------
_REQUIRED = object()


_KINDS = {bool: lambda t: t == "bool", str: lambda t: t == "str", int: lambda t: t[0] in "ui",
          float: lambda t: t[0] in "uif", "ints": lambda t: t[:5] in ("arr[u", "arr[i"),
          "floats": lambda t: t[:4] == "arr[" and t[4] in "uif", "strs": lambda t: t == "arr[str]"}


def metadata_value(f: GGUFFile, key: str, kind, default=_REQUIRED):
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
    if kind is float and t == "f32":
        # the shortest decimal that is this f32 (1e-5, not 9.99999974e-06): the value the writer meant
        return float(str(np.float32(v)))
    return kind(v) if isinstance(kind, type) else list(v.tolist() if isinstance(v, np.ndarray) else v)
