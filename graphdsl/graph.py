"""The graph IR: a Graph of Nodes, built through Tensor handles.

A small, closed IR in the spirit of torch.fx: every node is `Node(op, inputs, attrs, shape,
dtype, name)` plus a free-form `meta` dict for analysis results. Two pseudo-ops start a graph:
`input` (fed at run time) and `weight` (bound once, by name). Every other op comes from the
registry in `graphdsl.ops`, whose shape rule runs when the node is built, so a bad shape is a
ValueError at the line that wrote it, never an abort inside ggml. Constants are the registry op
`const` (`Graph.const`): fixed, or recomputed from input shapes when the graph is specialized.

This module imports nothing of `graphdsl.inspect` (which imports it): printing lives here;
tables and drawings are `graphdsl.inspect.summary(g)` / `draw(g, path)` / `to_networkx(g)`.

Shapes are NumPy order (outermost first) and weights are `(out, in)` as in PyTorch.
"""
from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from . import dtypes as dt
from . import ops
from .ops.const import ConstValue
from .ops.registry import REGISTRY, ShapeError

MAX_RANK = 4  # ggml tensors have four dimensions
MAX_BYTES = 2**48  # 256 TiB: no device holds more, and ggml's size arithmetic stays far from overflow


class Node:
    __slots__ = ("op", "inputs", "attrs", "shape", "dtype", "name", "meta")

    def __init__(self, op: str, inputs: tuple[Node, ...], attrs: dict[str, Any],
                 shape: tuple[int, ...], dtype: dt.DType, name: str):
        self.op = op
        self.inputs = inputs
        self.attrs = attrs
        self.shape = shape
        self.dtype = dtype
        self.name = name
        self.meta: dict[str, Any] = {}

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.dtype.row_bytes(self.shape[-1]) * (self.numel // self.shape[-1]) if self.shape else 0

    def __repr__(self) -> str:
        return f"%{self.name} : {type_str(self.dtype, self.shape)} = {self.op}(...)"


def _sized(node: Node) -> Node:
    if node.nbytes > MAX_BYTES:
        raise ValueError(f"[{node.op}] node '{node.name}': {type_str(node.dtype, node.shape)} would take "
                         f"{node.nbytes} bytes, more than the {MAX_BYTES} graphdsl allows for one tensor")
    return node


def type_str(dtype: dt.DType, shape: Sequence[int]) -> str:
    return f"{dtype.name}[{','.join(str(d) for d in shape)}]"


class Tensor:
    """A handle to one node of a Graph, with NumPy-like operators.

    Example:
        >>> g = Graph()
        >>> x = g.input("x", (4, 8))
        >>> w = g.weight("w", (16, 8))
        >>> y = (x @ w.T).gelu()          # same as ops.mul_mat(x, w).gelu()
        >>> y.shape
        (4, 16)
    """

    __slots__ = ("graph", "node")
    __array_priority__ = 1000  # make `ndarray + Tensor` defer to Tensor.__radd__

    def __init__(self, graph: Graph, node: Node):
        self.graph = graph
        self.node = node

    shape = property(lambda self: self.node.shape)
    dtype = property(lambda self: self.node.dtype)
    name = property(lambda self: self.node.name)
    ndim = property(lambda self: len(self.node.shape))

    def __repr__(self) -> str:
        return f"Tensor(%{self.name} : {type_str(self.dtype, self.shape)})"

    # Arithmetic. Scalars become `scale` nodes; tensors broadcast the way ggml repeats.
    def __add__(self, o):
        return ops.scale(self, 1.0, float(o)) if _is_scalar(o) else ops.add(self, o)

    __radd__ = __add__

    def __sub__(self, o):
        return ops.scale(self, 1.0, -float(o)) if _is_scalar(o) else ops.sub(self, o)

    def __rsub__(self, o):
        return ops.scale(self, -1.0, float(o))

    def __mul__(self, o):
        return ops.scale(self, float(o)) if _is_scalar(o) else ops.mul(self, o)

    __rmul__ = __mul__

    def __truediv__(self, o):
        return ops.scale(self, 1.0 / float(o)) if _is_scalar(o) else ops.div(self, o)

    def __neg__(self):
        return ops.neg(self)

    def __matmul__(self, o: Tensor):
        """a @ b with NumPy semantics; lowered to ggml_mul_mat(b^T, a)."""
        return ops.mul_mat(self, o.transpose())

    @property
    def T(self) -> Tensor:
        return self.transpose()

    def __getattr__(self, op: str):
        # t.gelu(), t.reshape(...), t.permute(...): every registered op is a method.
        fn = ops.OPS_API.get(op)
        if fn is None:
            raise AttributeError(f"Tensor has no attribute or op {op!r}")
        return lambda *args, **kw: fn(self, *args, **kw)


def _is_scalar(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


class Graph:
    """A dataflow graph of named nodes: inputs, weights, ops and named outputs.

    Example:
        >>> from graphdsl import ops
        >>> g = Graph("mlp")
        >>> x = g.input("x", (3, 8))
        >>> with g.scope("mm.0"):
        ...     h = ops.linear(x, g.weight("weight", (16, 8)), g.weight("bias", (16,)))
        >>> g.output("y", h.gelu_erf())
        Tensor(%gelu_erf : f32[3,16])
        >>> sorted(g.weights)
        ['mm.0.bias', 'mm.0.weight']
    """

    def __init__(self, name: str = "graph"):
        self.name = name
        self.nodes: list[Node] = []
        self.inputs: dict[str, Node] = {}
        self.weights: dict[str, Node] = {}
        self.outputs: dict[str, Node] = {}
        self._names: dict[str, int] = {}
        self._scope: list[str] = []
        self._wtypes: list[Mapping[str, str | dt.DType]] = []

    # -- construction ---------------------------------------------------------------------
    @contextlib.contextmanager
    def scope(self, name: str | int) -> Iterator[None]:
        """Prefix names built inside with `name.` (nest for `v.blk.3.attn_q`)."""
        self._scope.append(str(name))
        try:
            yield
        finally:
            self._scope.pop()

    @contextlib.contextmanager
    def weight_types(self, types: Mapping[str, str | dt.DType] | None) -> Iterator[None]:
        """Inside, a weight whose qualified name is in `types` is declared with that dtype.

        Blocks declare weights with one default type each; a GGUF file mixes types (f32 norms,
        f16 patch embedding, q8_0 matrices). Declaring each weight as the file stores it lets
        the executor bind the file's arrays as they are.
        """
        self._wtypes.append(types or {})
        try:
            yield
        finally:
            self._wtypes.pop()

    def qualify(self, name: str) -> str:
        return ".".join([*self._scope, name]) if name else ".".join(self._scope)

    def _unique(self, name: str) -> str:
        if name not in self._names:
            self._names[name] = 0
            return name
        while True:
            self._names[name] += 1
            cand = f"{name}_{self._names[name]}"
            if cand not in self._names:
                self._names[cand] = 0
                return cand

    def input(self, name: str, shape: Sequence[int], dtype: str | dt.DType = "f32") -> Tensor:
        """A tensor fed at run time (NumPy order), by exactly this name.

        Scopes do not prefix input names: the caller feeds `name` as written here, wherever the
        input was declared (a scoped name would surface only later, as a missing input).
        """
        d = dt.dtype(dtype)
        if d.is_quantized:
            raise ValueError(f"[input] node '{name}': inputs cannot be quantized ({d.name})")
        node = self._leaf("input", name, shape, d, qualify=False)
        self.inputs[node.name] = node
        return Tensor(self, node)

    def weight(self, name: str, shape: Sequence[int], dtype: str | dt.DType = "f32") -> Tensor:
        """A parameter bound by name before running; its name is qualified by the scope.

        Asking again for the same qualified name returns the same weight (shared parameters).
        """
        qual = self.qualify(name)
        for types in reversed(self._wtypes):
            if qual in types:
                dtype = types[qual]
                break
        d = dt.dtype(dtype)
        if qual in self.weights:
            node = self.weights[qual]
            if node.shape != tuple(shape) or node.dtype != d:
                raise ValueError(f"[weight] node '{qual}': declared again as {type_str(d, shape)}, "
                                 f"was {type_str(node.dtype, node.shape)}")
            return Tensor(self, node)
        if d.is_quantized and shape and shape[-1] % d.block_size:
            raise ValueError(f"[weight] node '{qual}': {d.name} needs rows that are a multiple of "
                             f"{d.block_size}, got shape {tuple(shape)}")
        node = self._leaf("weight", name, shape, d)
        self.weights[node.name] = node
        return Tensor(self, node)

    def const(self, name: str, value, *, shape_of: Sequence[Tensor] = (),
              dtype: str | dt.DType | None = None) -> Tensor:
        """A value known before the run: an array, or `fn(*shapes) -> array` of `shape_of`'s shapes.

        A function is called again whenever those shapes change (`specialize`, an executor called
        with another input shape); an array given with `shape_of` is pinned to the current shapes
        (a change raises ValueError). Only the shapes of `shape_of` are read. dtype: any
        non-quantized one (default i32 for integers, f16 for float16, else f32). See ops/const.py.

            >>> import numpy as np
            >>> g = Graph("c"); px = g.input("pixels", (3, 32, 48))
            >>> g.const("cols", lambda s: np.arange(s[-1] // 16), shape_of=[px])   # i32
            Tensor(%cols : i32[3])
        """
        qual = self.qualify(name)
        if any(not isinstance(t, Tensor) or t.graph is not self for t in shape_of):
            raise ValueError(f"[const] node '{qual}': shape_of must be tensors of this graph")
        try:
            cv = ConstValue(value, [t.shape for t in shape_of], dtype, pinned=bool(shape_of))
        except ShapeError as e:
            raise ValueError(f"[const] node '{qual}': {e}") from None
        return self.emit("const", list(shape_of), {"value": cv}, name)

    def _leaf(self, op: str, name: str, shape: Sequence[int], d: dt.DType, qualify: bool = True) -> Node:
        shape = tuple(int(s) for s in shape)
        qual = self.qualify(name) if qualify else name
        if not 1 <= len(shape) <= MAX_RANK or any(s <= 0 for s in shape):
            raise ValueError(f"[{op}] node '{qual}': shape {shape} must have 1 to {MAX_RANK} positive dims")
        if qual in self._names:
            raise ValueError(f"[{op}] node '{qual}': name already used in graph '{self.name}'")
        return self._append(_sized(Node(op, (), {}, shape, d, self._unique(qual))))

    def _append(self, node: Node) -> Node:
        self.nodes.append(node)
        return node

    def emit(self, op: str, inputs: Sequence[Tensor], attrs: dict[str, Any], name: str | None) -> Tensor:
        """Add one registry op; its shape rule runs now and errors name the node."""
        opdef = REGISTRY.get(op)
        qual = self.qualify(name or op)
        if opdef is None:
            raise ValueError(f"[{op}] node '{qual}': unknown op")
        for t in inputs:
            if not isinstance(t, Tensor):
                raise ValueError(f"[{op}] node '{qual}': expected graph tensors, got {type(t).__name__}")
            if t.graph is not self:
                raise ValueError(f"[{op}] node '{qual}': input %{t.name} belongs to another graph")
        nodes = tuple(t.node for t in inputs)
        try:
            shape, dtype = opdef.infer(*nodes, **attrs)
        except ShapeError as e:
            args = ", ".join(f"%{n.name} {type_str(n.dtype, n.shape)}" for n in nodes)
            raise ValueError(f"[{op}] node '{qual}': {e} (inputs: {args})") from None
        shape = tuple(int(s) for s in shape)
        if not 1 <= len(shape) <= MAX_RANK:
            raise ValueError(f"[{op}] node '{qual}': result rank {len(shape)} is outside 1..{MAX_RANK}")
        if any(s <= 0 for s in shape):
            raise ValueError(f"[{op}] node '{qual}': result shape {shape} has an empty dim")
        return Tensor(self, self._append(_sized(Node(op, nodes, dict(attrs), shape, dtype, self._unique(qual)))))

    def output(self, name: str, t: Tensor) -> Tensor:
        if not isinstance(t, Tensor) or t.graph is not self:
            raise ValueError(f"[output] '{name}': expected a tensor of this graph")
        if name in self.outputs:
            raise ValueError(f"[output] '{name}': output name already used")
        self.outputs[name] = t.node
        return t

    # -- queries ----------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Tensor:
        for n in self.nodes:
            if n.name == name:
                return Tensor(self, n)
        raise KeyError(name)

    def find(self, pattern: str) -> list[Node]:
        """Nodes whose names match a glob such as `v.blk.3.*`."""
        return [n for n in self.nodes if fnmatch.fnmatchcase(n.name, pattern)]

    def match(self, patterns: Sequence[str]) -> list[Node]:
        """Computed nodes (not inputs or weights) whose names match any of the glob patterns."""
        return [n for n in self.nodes if n.op not in ("input", "weight")
                and any(fnmatch.fnmatchcase(n.name, p) for p in patterns)]

    def live_nodes(self, outputs: Sequence[Node] | None = None, *, values_only: bool = False) -> list[Node]:
        """Nodes the outputs depend on, in build (topological) order.

        With `values_only`, the inputs of `const` nodes are not followed: a constant reads only
        their shapes, so an executor need not compute (or upload) them for it.
        """
        roots = list(self.outputs.values()) if outputs is None else list(outputs)
        seen: set[int] = set()
        stack = roots
        while stack:
            n = stack.pop()
            if id(n) not in seen:
                seen.add(id(n))
                if not (values_only and n.op == "const"):
                    stack.extend(n.inputs)
        return [n for n in self.nodes if id(n) in seen]

    def specialize(self, shapes: dict[str, Sequence[int]]) -> Graph:
        """Replay this graph with new input shapes (same ops, attrs and weights).

        Shape rules run again, so an op whose attributes do not fit the new shapes raises
        ValueError naming it; constants built from a function of shapes are recomputed, pinned
        ones raise. Attributes are not recomputed: a reshape to a grid (gh, gw) fixed at build
        time stays (gh, gw), so models whose structure depends on the input size rebuild instead.
        """
        unknown = set(shapes) - set(self.inputs)
        if unknown:
            raise ValueError(f"unknown inputs {sorted(unknown)}; graph '{self.name}' has {sorted(self.inputs)}")
        g = Graph(self.name)
        new: dict[int, Node] = {}
        for n in self.nodes:
            if n.op in ("input", "weight"):
                shape = tuple(shapes.get(n.name, n.shape)) if n.op == "input" else n.shape
                m = g._append(Node(n.op, (), {}, shape, n.dtype, n.name))
                (g.inputs if n.op == "input" else g.weights)[n.name] = m
                g._names[n.name] = 0
            else:
                ins = [Tensor(g, new[id(i)]) for i in n.inputs]
                m = g.emit(n.op, ins, n.attrs, n.name).node
            m.meta = dict(n.meta)
            new[id(n)] = m
        g.outputs = {k: new[id(v)] for k, v in self.outputs.items()}
        return g

    def __str__(self) -> str:
        return format_graph(self)

    def __repr__(self) -> str:
        return (f"<Graph '{self.name}': {len(self.nodes)} nodes, {len(self.inputs)} inputs, "
                f"{len(self.weights)} weights, {len(self.outputs)} outputs>")

    # -- inspection (thin delegates to graphdsl.inspect, imported on first use: inspect imports this
    # module, and its renderers need the optional rich / networkx / Graphviz) ----------------------


def format_graph(graph: Graph) -> str:
    """One typed line per node, as jaxprs and fx graphs print (`str(graph)`)."""
    lines = [f"graph {graph.name}(", *(f"    %{n.name} : {type_str(n.dtype, n.shape)}," for n in graph.inputs.values()),
             "):"]
    for n in graph.nodes:
        head = f"    %{n.name} : {type_str(n.dtype, n.shape)} = "
        if n.op == "weight":
            lines.append(head + "weight")
        elif n.op != "input":
            args = [f"%{i.name}" for i in n.inputs] + [f"{k}={v!r}" for k, v in n.attrs.items()]
            lines.append(head + f"{n.op}({', '.join(args)})")
    lines.append(f"    return {{{', '.join(f'{k}=%{v.name}' for k, v in graph.outputs.items())}}}")
    return "\n".join(lines)
