"""Capture named intermediates, and diff two runs of one graph node by node.

    >>> acts = graphdsl.inspect.capture(run, {"x": x}, "v.blk.3.*")        # doctest: +SKIP
    >>> rep = graphdsl.inspect.diff(run, ref, {"x": x}); print(rep)          # doctest: +SKIP
    >>> rep.first_bad.name                                                   # doctest: +SKIP

Capture works on every backend: `executor(inputs, capture=["v.blk.3.*"])` returns the graph's
outputs plus every computed node whose name matches a glob, as NumPy arrays; `capture()`
returns only the matched nodes. `diff` compares a run against a reference over the nodes of a
graph, in topological order, and names the first whose error exceeds the bound. A source is an
executor (ggml or reference), a mapping node name -> array (e.g. HF hidden states renamed to
graphdsl node names; `inspect.hf` builds one from forward hooks), or a callable
`fn(inputs) -> mapping`.

A `nodes` glob or a mapping key that names no computed node is a ValueError listing the close
names: a typo must not shrink the comparison to nothing and pass.
"""
from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

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
    rel_l2: float  # ||run - reference|| / ||reference||
    max_abs: float  # max |run - reference|
    ok: bool
    note: str = ""
    source: str = ""  # where the reference value came from (e.g. an HF module name), if not the node


@dataclass(repr=False)
class DiffReport(Report):
    rows: list[DiffRow]  # every compared node, topological order
    bound_rel_l2: float
    bound_max_abs: float | None
    names: tuple[str, str]  # (run, reference), e.g. ("cpu", "reference")
    missing: list[str]  # selected nodes that one side did not provide
    notes: list[str] = field(default_factory=list)  # extra lines under the table

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
            head = f"diff {a} vs {b}: all {len(self.rows)} compared nodes within {bound}{tail}"
        else:
            head = (f"diff {a} vs {b}: first node over the bound ({bound}) is %{bad.name} ({bad.op}): "
                    f"rel L2 {bad.rel_l2:.3g}, max abs {bad.max_abs:.3g}{' - ' + bad.note if bad.note else ''}")
        return f"{head}\nrun: {a}; reference: {b} (errors are relative to the reference)"

    def table(self) -> Table:
        sources = any(r.source for r in self.rows)
        cols = ["node", "op", "shape", "rel L2", "max abs", "status"] + (["reference from"] if sources else [])
        t = Table(cols, title=self.headline(), right={3, 4})
        first = self.first_bad
        for r in self.rows:
            mark = "<- first" if r is first else ("FAIL" if not r.ok else "")
            t.add(r.name, r.op, "[" + ",".join(map(str, r.shape)) + "]", f"{r.rel_l2:.3g}", f"{r.max_abs:.3g}",
                  (mark + (" " + r.note if r.note else "")).strip(), *([r.source] if sources else []))
        if self.missing:
            t.notes.append(f"not compared (missing on one side): {', '.join(self.missing[:10])}"
                           + (" …" if len(self.missing) > 10 else ""))
        t.notes.extend(self.notes)
        return t

    def parts(self) -> list:
        return [self.table()]


Source = object  # an executor, a Mapping[str, array] or a Callable[[inputs], Mapping]


def _is_executor(src) -> bool:
    return hasattr(src, "graph") and callable(src)


def _values(src, inputs, patterns) -> dict[str, np.ndarray]:
    if _is_executor(src):
        return capture(src, inputs, patterns)
    if isinstance(src, Mapping):
        return dict(src)
    if isinstance(src, Callable):
        return dict(src(dict(inputs)))
    raise TypeError(f"diff: a source must be an executor, a mapping or a callable, got {type(src).__name__}")


def _label(src, default: str) -> str:
    if _is_executor(src):
        return str(getattr(src, "backend", default))
    return default


def close_names(name: str, candidates, n: int = 3) -> str:
    """' (close: a, b)' or '' — for error messages about a name that matched nothing."""
    close = difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.5)
    return f" (close: {', '.join(close)})" if close else ""


def _check_names(graph, patterns: list[str], partial: dict[str, dict]) -> None:
    computed = [n.name for n in graph.nodes if n.op not in ("input", "weight")]
    errors = [f"nodes pattern {p!r} matches no computed node{close_names(p, computed)}"
              for p in patterns if not graph.match([p])]
    known = set(computed)
    for label, vals in partial.items():
        bad = [k for k in vals if k not in known]
        errors += [f"{label} key {k!r} names no computed node{close_names(k, computed)}" for k in bad[:10]]
        if len(bad) > 10:
            errors.append(f"... and {len(bad) - 10} more {label} keys")
    if errors:
        raise ValueError(f"diff on graph '{graph.name}': " + "; ".join(errors))


def diff(a: Source, b: Source, inputs: Mapping[str, object], *, nodes: str | Sequence[str] | None = None,
         rel_l2: float = 1e-4, max_abs: float | None = None, graph=None,
         labels: tuple[str | None, str | None] = (None, None), sources: Mapping[str, str] | None = None,
         notes: Sequence[str] = ()) -> DiffReport:
    """Compare the run `a` against the reference `b` on every selected node, in topological order.

    Args:
        a: the run under test: an executor, a mapping node name -> array, or a callable
            inputs -> mapping.
        b: the reference (the denominator of the relative error), of the same kinds.
        inputs: the inputs both run on.
        nodes: glob(s) of node names to compare. Default: every computed node, or, when a side
            is a mapping or callable, the nodes it provides. Each glob must match a node.
        rel_l2: bound on ||a - b|| / ||b||.
        max_abs: optional bound on max |a - b|.
        graph: the Graph (default: the graph of whichever source is an executor).
        labels: names for (run, reference) in the report; default: an executor's backend, or
            "run" / "reference".
        sources: node name -> where the reference value came from (shown as a column).
        notes: extra lines printed under the table.

    Returns:
        A DiffReport: `.rows` (all compared nodes), `.first_bad` (first over the bound or None).

    Raises:
        ValueError: a `nodes` glob or a mapping key matches no computed node, or nothing is compared.
    """
    graph = graph or getattr(a, "graph", None) or getattr(b, "graph", None)
    if graph is None:
        raise ValueError("diff: pass graph= when neither source is an executor")
    names = (labels[0] or _label(a, "run"), labels[1] or _label(b, "reference"))
    patterns = None if nodes is None else ([nodes] if isinstance(nodes, str) else list(nodes))
    # a partial source's keys are computed before the executors run, so they can select the nodes
    sides = {f"run ({names[0]})": a, f"reference ({names[1]})": b}
    partial = {k: _values(s, inputs, []) for k, s in sides.items() if not _is_executor(s)}
    _check_names(graph, patterns or [], partial)
    if patterns is None:
        patterns = sorted(set.intersection(*(set(v) for v in partial.values()))) if partial else ["*"]
    va, vb = (partial[k] if k in partial else capture(s, inputs, patterns) for k, s in sides.items())
    rows, missing = [], []
    matched = graph.match(patterns) if patterns else []
    wanted = {id(n) for n in matched}
    for n in graph.live_nodes(list(graph.outputs.values()) + matched):
        if id(n) not in wanted:
            continue
        if n.name not in va or n.name not in vb:
            missing.append(n.name)
            continue
        row = _compare(n, va[n.name], vb[n.name], rel_l2, max_abs)
        row.source = (sources or {}).get(n.name, "")
        rows.append(row)
    if not rows:
        raise ValueError(f"diff {names[0]} vs {names[1]} on graph '{graph.name}': no node was provided by both "
                         f"sides (missing: {', '.join(missing[:10]) or 'none selected'})")
    return DiffReport(rows, rel_l2, max_abs, names, missing, list(notes))


def _compare(node, x, y, bound_rel: float, bound_abs: float | None) -> DiffRow:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape != y.shape and np.squeeze(x).shape == np.squeeze(y).shape:
        y = y.reshape(x.shape)  # only size-1 axes differ (a batch of one): no memory order to guess
    elif x.shape != y.shape:
        # (D, N) vs (N, D) reshaped would compare the wrong elements: say so rather than guess
        return DiffRow(node.name, node.op, node.shape, math.inf, math.inf, False, f"shape {x.shape} vs {y.shape}")
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
