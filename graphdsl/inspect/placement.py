"""What ggml actually ran: the lowered graph, placement, splits, buffers, unsupported ops.

    >>> run = graphdsl.compile(g, "auto", weights=w); run(x=x)         # doctest: +SKIP
    >>> rep = graphdsl.inspect.lowered(run); print(rep)                  # doctest: +SKIP
    >>> rep.op_counts["MUL_MAT"], rep.n_splits, rep.unsupported          # doctest: +SKIP

Everything here is read from the executor's last program (`executor.last_program`) and from the
scheduler after its reservation: ggml node count and ops (`cgraph.node(i).op`), the backend
each ggml node was assigned to (`ggml_backend_sched_get_tensor_backend`), the number of
splits and copies, compute-buffer bytes per backend (`ggml_backend_sched_get_buffer_size`),
weight bytes per buffer, and, for every backend, the ggml ops it reports it cannot run
(`ggml_backend_supports_op`): those are what sends nodes of an accelerator graph to the CPU.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from .table import Report, Table, nbytes

_SUFFIX = re.compile(r"( \([a-z]+\))+$")  # ggml's "x (cont)", "x (permuted) (cont)" names


@dataclass
class GGMLNode:
    index: int
    op: str  # ggml op name: "MUL_MAT", "ADD", ...
    name: str  # ggml tensor name
    ne: tuple[int, ...]  # ggml order
    backend: str  # where the scheduler put it ("" if unassigned)
    owner: str  # the graphdsl node it implements ("" if none)


@dataclass(repr=False)
class LoweredReport(Report):
    graph_name: str
    backends: list[str]
    dsl_nodes: int  # computed graphdsl nodes in the program
    nodes: list[GGMLNode]
    n_splits: int
    n_copies: int
    compute_buffer_bytes: dict[str, int]
    weight_bytes: dict[str, int]
    placement: dict[str, str]  # graphdsl node -> backend
    fallbacks: dict[str, str] = field(default_factory=dict)  # graphdsl node -> why not on the first backend
    unsupported: dict[str, list[str]] = field(default_factory=dict)  # backend -> ggml ops it cannot run

    @property
    def n_nodes(self) -> int:
        return len(self.nodes)

    @property
    def op_counts(self) -> Counter:
        return Counter(n.op for n in self.nodes)

    @property
    def nodes_per_backend(self) -> Counter:
        return Counter(n.backend for n in self.nodes)

    def tables(self) -> list[Table]:
        head = Table(["backend", "ggml nodes", "compute buffer", "weights", "cannot run"],
                     title=(f"lowered graph {self.graph_name}: {self.dsl_nodes} graphdsl nodes -> "
                            f"{self.n_nodes} ggml nodes, {self.n_splits} split(s), {self.n_copies} copy(ies)"),
                     right={1, 2, 3})
        per = self.nodes_per_backend
        for b in self.backends:
            w = sum(v for k, v in self.weight_bytes.items() if _same_backend(k, b))
            head.add(b, per.get(b, 0), nbytes(self.compute_buffer_bytes.get(b, 0)), nbytes(w),
                     ", ".join(self.unsupported.get(b, [])) or "-")
        head.total("total", self.n_nodes, nbytes(sum(self.compute_buffer_bytes.values())),
                   nbytes(sum(self.weight_bytes.values())), "")
        if self.weight_bytes:
            head.notes.append("weight buffers: " + ", ".join(f"{k} {nbytes(v)}" for k, v in self.weight_bytes.items()))
        for name, why in list(self.fallbacks.items())[:20]:
            head.notes.append(f"  {name}: {why}")
        ops = Table(["ggml op", "count", "backends"], title="ggml ops", right={1})
        where: dict[str, Counter] = {}
        for n in self.nodes:
            where.setdefault(n.op, Counter())[n.backend] += 1
        for op, k in self.op_counts.most_common():
            ops.add(op, k, ", ".join(f"{b or '?'}×{c}" for b, c in where[op].items()))
        return [head, ops]

    def parts(self) -> list:
        return self.tables()


def _same_backend(buffer_name: str, backend: str) -> bool:
    return buffer_name.lower().startswith(backend.lower())


def ggml_owners(names: list[str], dsl_names) -> list[str]:
    """The graphdsl node each ggml node implements, from names, in graph order.

    A ggml node named like a graphdsl node is that node; `x (cont)` / `x (permuted)` are layout
    copies of x made for a consumer and are charged to x; other unnamed pieces of a lowering
    (`node_17`) belong to the next named node, which is the lowering's result.
    """
    owners = [""] * len(names)
    pending: list[int] = []
    for i, name in enumerate(names):
        base = _SUFFIX.sub("", name)
        if name in dsl_names:
            owners[i] = name
            for j in pending:
                owners[j] = name
            pending = []
        elif base != name and base in dsl_names:
            owners[i] = base
        else:
            pending.append(i)
    return owners


def lowered(executor, inputs=None, **kw) -> LoweredReport:
    """Report what ggml ran for `executor`'s last call (or run it on `inputs` first).

    Args:
        executor: a GGMLExecutor (graphdsl.compile(..., backend="cpu" / "auto" / ...)).
        inputs: optional inputs (dict or keywords) to run first; otherwise the last run is reported.
    """
    if not hasattr(executor, "runtime"):
        raise ValueError(f"lowered() needs a ggml executor, got backend {getattr(executor, 'backend', executor)!r}")
    with executor.lock:  # the run and the report of it, with no other thread's run in between
        if inputs is not None or kw:
            executor(dict(inputs or {}, **kw))
        return _report(executor)


def _report(executor) -> LoweredReport:
    prog = executor.last_program
    if prog is None:
        raise ValueError("lowered() reports what ggml ran: call the executor once first, or pass inputs")
    rt = executor.runtime
    names = rt.backend_names
    cg = prog.cgraph
    tensors = [cg.node(i) for i in range(cg.n_nodes)]
    owners = ggml_owners([t.name for t in tensors], prog.tensors)
    nodes = []
    for i, (t, owner) in enumerate(zip(tensors, owners)):
        b = rt.tensor_backend(t)
        nodes.append(GGMLNode(i, t.op, t.name, tuple(t.ne), names[b] if b >= 0 else "", owner))
    unsupported = {}
    for bi, b in enumerate(names):
        bad = sorted({t.op for t in tensors if not rt.supports_op(bi, t)})
        if bad:
            unsupported[b] = bad
    pl = executor.placement()
    return LoweredReport(
        graph_name=prog.graph.name, backends=list(names),
        dsl_nodes=sum(1 for n in prog.graph.live_nodes(list(prog.graph.outputs.values()) + _captured(prog))
                      if n.op not in ("input", "weight")),
        nodes=nodes, n_splits=pl["n_splits"], n_copies=pl.get("n_copies", 0),
        compute_buffer_bytes=dict(pl["compute_buffer_bytes"]), weight_bytes=dict(pl.get("weight_bytes", {})),
        placement=dict(pl["nodes"]), fallbacks=dict(pl.get("fallbacks", {})), unsupported=unsupported)


def _captured(prog) -> list:
    by_name = {n.name: n for n in prog.graph.nodes}
    return [by_name[k] for k in prog.outputs if k not in prog.graph.outputs and k in by_name]
