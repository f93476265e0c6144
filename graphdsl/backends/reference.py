"""The NumPy interpreter: the semantics every backend is checked against.

It runs each node's registry reference in float64 (so it is a tighter reference than any f32
backend), on weights stored exactly as ggml stores them (f16, bf16, quantized blocks) and
dequantized with the gguf package. Constants are evaluated from their node (of the graph
specialized to the call's shapes), exactly as the ggml backend uploads them.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from gguf.quants import dequantize

from graphdsl import dtypes as dt
from graphdsl.ops.registry import REGISTRY

from .weights import check_inputs, check_weights, const_value


def to_compute(node, stored: np.ndarray) -> np.ndarray:
    """Stored weight/input bytes -> float64 (or int32) values."""
    d = node.dtype
    if d.is_quantized:
        return dequantize(stored, d.ggml_type).reshape(node.shape).astype(np.float64)
    if d is dt.bf16:
        return dt.bf16_to_f32(stored).astype(np.float64)
    if d is dt.i32:
        return stored
    return stored.astype(np.float64)


class ReferenceExecutor:
    """Runs a Graph with NumPy. `capture` takes glob patterns of node names to return as well."""

    backend = "reference"

    def __init__(self, graph, weights: Mapping[str, object] | None = None):
        self.graph = graph
        self._weights: dict[str, np.ndarray] = {}
        if weights is not None:
            self.load_weights(weights)

    def load_weights(self, weights: Mapping[str, object], *, allow_extra: bool = False) -> None:
        stored = check_weights(self.graph, weights, allow_extra=allow_extra)
        self._weights = {k: to_compute(self.graph.weights[k], v) for k, v in stored.items()}

    def __call__(self, inputs: Mapping[str, object] | None = None, *, capture: Sequence[str] = (),
                 **kw) -> dict[str, np.ndarray]:
        inputs = dict(inputs or {}, **kw)
        graph = self.graph
        arrays = check_inputs(graph, inputs)
        shapes = {k: v.shape for k, v in arrays.items()}
        if any(graph.inputs[k].shape != s for k, s in shapes.items()):
            graph = graph.specialize(shapes)
        if not self._weights and graph.weights:
            raise ValueError(f"graph '{graph.name}' has unbound weights: {', '.join(graph.weights)}")
        values: dict[int, np.ndarray] = {}
        captured = {}
        wanted = graph.match(capture)
        for node in graph.live_nodes(list(graph.outputs.values()) + wanted, values_only=True):
            if node.op == "input":
                v = to_compute(node, arrays[node.name])
            elif node.op == "weight":
                v = self._weights[node.name]
            elif node.op == "const":  # its inputs give shapes only, and were not computed
                v = to_compute(node, const_value(node))
            else:
                args = [values[id(i)] for i in node.inputs]
                try:
                    v = np.asarray(REGISTRY[node.op].reference(*args, **node.attrs))
                except ValueError as e:
                    raise ValueError(f"[{node.op}] node '{node.name}': {e}") from None
            if v.shape != node.shape:
                raise AssertionError(f"reference of {node.op} gave {v.shape}, shape rule says {node.shape}")
            values[id(node)] = v
            if node in wanted:
                captured[node.name] = finish(node, v)
        out = {name: finish(n, values[id(n)]) for name, n in graph.outputs.items()}
        return {**out, **captured} if capture else out


def finish(node, v: np.ndarray) -> np.ndarray:
    if node.dtype is dt.i32:
        return v.astype(np.int32)
    if node.dtype is dt.f16:
        return v.astype(np.float16)
    return v.astype(np.float32)
