"""Capture named intermediates, and diff two runs of one graph node by node.

    >>> acts = graphdsl.inspect.capture(run, {"x": x}, "v.blk.3.*")        # doctest: +SKIP
    >>> rep = graphdsl.inspect.diff(run, ref, {"x": x}); print(rep)          # doctest: +SKIP
    >>> rep.first_bad.name                                                   # doctest: +SKIP

Capture works on every backend: `executor(inputs, capture=["v.blk.3.*"])` returns the graph's
outputs plus every computed node whose name matches a glob, as NumPy arrays; `capture()`
returns only the matched nodes. `diff` compares two sources over the nodes of a graph, in
topological order, and names the first whose error exceeds the bound. A source is an executor
(ggml or reference), a mapping node name -> array (e.g. HF hidden states renamed to graphdsl
node names), or a callable `fn(inputs) -> mapping` (a hook that yields such intermediates).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .table import Report, Table


def capture(executor, inputs: Mapping[str, object], patterns: str | Sequence[str] = "*") -> dict[str, np.ndarray]:
    """Run `executor` on `inputs` and return the computed nodes matching the glob(s), by name."""
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    res = executor(dict(inputs), capture=patterns)
    wanted = {n.name for n in executor.graph.match(patterns)}
    return {k: v for k, v in res.items() if k in wanted}


@dataclass
class DiffRow:
    name: str
    op: str
    shape: tuple[int, ...]
    rel_l2: float  # ||a - b|| / ||b||
    max_abs: float  # max |a - b|
    ok: bool
    note: str = ""


@dataclass(repr=False)
class DiffReport(Report):
    rows: list[DiffRow]  # every compared node, topological order
    bound_rel_l2: float
    bound_max_abs: float | None
    names: tuple[str, str]  # what was compared ("cpu", "reference")
    missing: list[str]  # matched nodes that one side did not provide

    @property
    def first_bad(self) -> DiffRow | None:
        return next((r for r in self.rows if not r.ok), None)

    @property
    def ok(self) -> bool:
        return self.first_bad is None

    def headline(self) -> str:
        a, b = self.names
        bound = f"rel L2 <= {self.bound_rel_l2:g}" + (f", max abs <= {self.bound_max_abs:g}"
                                                      if self.bound_max_abs is not None else "")
        bad = self.first_bad
        if bad is None:
            worst = max(self.rows, key=lambda r: r.rel_l2, default=None)
            tail = f"; worst rel L2 {worst.rel_l2:.3g} at %{worst.name}" if worst else ""
            return f"diff {a} vs {b}: all {len(self.rows)} compared nodes within {bound}{tail}"
        return (f"diff {a} vs {b}: first node over the bound ({bound}) is %{bad.name} ({bad.op}): "
                f"rel L2 {bad.rel_l2:.3g}, max abs {bad.max_abs:.3g}{' - ' + bad.note if bad.note else ''}")

    def table(self) -> Table:
        t = Table(["node", "op", "shape", "rel L2", "max abs", "status"], title=self.headline(), right={3, 4})
        first = self.first_bad
        for r in self.rows:
            mark = "<- first" if r is first else ("FAIL" if not r.ok else "")
            t.add(r.name, r.op, "[" + ",".join(map(str, r.shape)) + "]", f"{r.rel_l2:.3g}", f"{r.max_abs:.3g}",
                  (mark + (" " + r.note if r.note else "")).strip())
        if self.missing:
            t.notes.append(f"not compared (missing on one side): {', '.join(self.missing[:10])}"
                           + (" …" if len(self.missing) > 10 else ""))
        return t

    def parts(self) -> list:
        return [self.table()]


Source = object  # an executor, a Mapping[str, array] or a Callable[[inputs], Mapping]


def _values(src, inputs, patterns) -> dict[str, np.ndarray]:
    if hasattr(src, "graph") and callable(src):
        return capture(src, inputs, patterns)
    if isinstance(src, Mapping):
        return dict(src)
    if isinstance(src, Callable):
        return dict(src(dict(inputs)))
    raise TypeError(f"diff: a source must be an executor, a mapping or a callable, got {type(src).__name__}")


def _label(src, default: str) -> str:
    return str(getattr(src, "backend", default))


def diff(a: Source, b: Source, inputs: Mapping[str, object], *, nodes: str | Sequence[str] = "*",
         rel_l2: float = 1e-4, max_abs: float | None = None, graph=None) -> DiffReport:
    """Compare `a` against the reference `b` on every node matching `nodes`, in topological order.

    Args:
        a, b: executors, mappings node name -> array, or callables inputs -> mapping; b is the
            reference (the denominator of the relative error).
        inputs: the inputs both run on.
        nodes: glob(s) of node names to compare (default: every computed node).
        rel_l2: bound on ||a - b|| / ||b||.
        max_abs: optional bound on max |a - b|.
        graph: the Graph (default: the graph of whichever source is an executor).

    Returns:
        A DiffReport: `.rows` (all compared nodes), `.first_bad` (first over the bound or None).
    """
    graph = graph or getattr(a, "graph", None) or getattr(b, "graph", None)
    if graph is None:
        raise ValueError("diff: pass graph= when neither source is an executor")
    patterns = [nodes] if isinstance(nodes, str) else list(nodes)
    va, vb = _values(a, inputs, patterns), _values(b, inputs, patterns)
    rows, missing = [], []
    matched = graph.match(patterns)
    wanted = {id(n) for n in matched}
    for n in graph.live_nodes(list(graph.outputs.values()) + matched):
        if id(n) not in wanted:
            continue
        if n.name not in va or n.name not in vb:
            missing.append(n.name)
            continue
        rows.append(_compare(n, va[n.name], vb[n.name], rel_l2, max_abs))
    return DiffReport(rows, rel_l2, max_abs, (_label(a, "a"), _label(b, "b")), missing)


def _compare(node, x, y, bound_rel: float, bound_abs: float | None) -> DiffRow:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape:
        if x.size != y.size:
            return DiffRow(node.name, node.op, node.shape, math.inf, math.inf, False,
                           f"shape {x.shape} vs {y.shape}")
        y = y.reshape(x.shape)
    d = x - y
    ref = float(np.linalg.norm(y))
    err = float(np.linalg.norm(d))
    rel = err / ref if ref > 0 else (0.0 if err == 0 else math.inf)
    mabs = float(np.max(np.abs(d))) if d.size else 0.0
    ok = bool(rel <= bound_rel and (bound_abs is None or mabs <= bound_abs))
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        ok, note = False, "non-finite values"
    else:
        note = ""
    return DiffRow(node.name, node.op, node.shape, rel, mabs, ok, note)
