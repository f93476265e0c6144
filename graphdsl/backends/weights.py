"""Checking weight arrays against the weights a graph declares (strict: one error lists all)."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from graphdsl import dtypes as dt
from graphdsl.dtypes import to_numpy


def storage(node, value) -> np.ndarray:
    """The bytes a weight node is stored as: f32/f16/i32 arrays, bf16 bit patterns, or quantized blocks.

    Float arrays given for a quantized or bf16 weight are converted here with ggml's own
    quantizer, so what the reference interpreter sees is exactly what ggml sees.
    """
    d, shape = node.dtype, node.shape
    arr = to_numpy(value)
    if d.is_quantized:
        rows = int(np.prod(shape[:-1], dtype=np.int64))
        if arr.dtype == np.uint8:  # already blocks, e.g. from a GGUF file
            if arr.size != rows * d.row_bytes(shape[-1]):
                raise ValueError(f"holds {arr.size} bytes of {d.name}, expected {rows * d.row_bytes(shape[-1])}")
            return np.ascontiguousarray(arr).reshape(rows, d.row_bytes(shape[-1]))
        if tuple(arr.shape) != shape:
            raise ValueError(f"shape {tuple(arr.shape)} != declared {shape}")
        from graphdsl import _ggml
        out = np.empty((rows, d.row_bytes(shape[-1])), np.uint8)
        _ggml.quantize(d.ggml_type, np.ascontiguousarray(arr, np.float32).reshape(rows, shape[-1]), out)
        return out
    if tuple(arr.shape) != shape:
        raise ValueError(f"shape {tuple(arr.shape)} != declared {shape}")
    if d is dt.bf16:
        return arr if arr.dtype == np.uint16 else dt.f32_to_bf16(arr)
    if d is dt.i32:
        return dt.as_i32(arr, "i32")
    if d.is_float and not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"expected floats for {d.name}, got {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=d.numpy)


def check_weights(graph, weights: Mapping[str, object], *, allow_extra: bool = False) -> dict[str, np.ndarray]:
    """Convert and check every weight; raise one ValueError listing missing, extra and bad ones."""
    missing = [n for n in graph.weights if n not in weights]
    extra = [] if allow_extra else sorted(set(weights) - set(graph.weights))
    bad, out = [], {}
    for name, node in graph.weights.items():
        if name in weights:
            try:
                out[name] = storage(node, weights[name])
            except ValueError as e:
                bad.append(f"{name}: {e}")
    if missing or extra or bad:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {', '.join(missing)}")
        if extra:
            parts.append(f"unexpected {len(extra)}: {', '.join(extra)}")
        if bad:
            parts.append(f"mis-shaped or mistyped {len(bad)}: {'; '.join(bad)}")
        raise ValueError(f"weights do not match graph '{graph.name}': " + " | ".join(parts))
    return out


def const_value(node) -> np.ndarray:
    """A const node's stored value (its dtype; bf16 as bit patterns) for its inputs' shapes now."""
    return node.attrs["value"].evaluate([i.shape for i in node.inputs])


def check_inputs(graph, inputs: Mapping[str, object]) -> dict[str, np.ndarray]:
    """Inputs by name, converted to their declared dtype; shapes may differ (see Graph.specialize).

    Constants are graph nodes (`Graph.const`), never fed: naming one here is an error like any
    unknown name.
    """
    missing = [n for n in graph.inputs if n not in inputs]
    extra = sorted(set(inputs) - set(graph.inputs))
    if missing or extra:
        consts = sorted(set(extra) & {n.name for n in graph.nodes if n.op == "const"})
        hint = f" ({', '.join(consts)}: constants, computed by the graph)" if consts else ""
        raise ValueError(f"inputs do not match graph '{graph.name}': missing {missing}, unexpected {extra}{hint}")
    out = {}
    for name, node in graph.inputs.items():
        arr = to_numpy(inputs[name])
        if node.dtype is dt.i32:
            arr = dt.as_i32(arr, f"[input] '{name}'")
        elif not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"[input] '{name}': expected floats, got {arr.dtype}")
        elif node.dtype is dt.bf16:
            arr = arr if arr.dtype == np.uint16 else dt.f32_to_bf16(arr)
        else:
            arr = np.ascontiguousarray(arr, dtype=node.dtype.numpy)
        if arr.ndim != len(node.shape):
            raise ValueError(f"[input] '{name}': rank {arr.ndim} != declared rank {len(node.shape)} {node.shape}")
        # -inf is legitimate (attention masks); NaN never is.
        if node.dtype.is_float and np.isnan(dt.bf16_to_f32(arr) if node.dtype is dt.bf16 else arr).any():
            raise ValueError(f"[input] '{name}': contains NaN")
        out[name] = arr
    return out
