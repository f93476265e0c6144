"""summary(graph): one row per node with parameters, FLOPs and bytes moved; totals; grouping.

Costs come from the op registry (`REGISTRY[op].flops`, like ggml's `op_flops` in
test-backend-ops). Bytes are what a node reads (its inputs, weights included) and writes (its
result), at the stored dtype, so quantized weights count their blocks. Layout ops that ggml
runs as views (reshape, view, permute) move no bytes. A weight's parameters are counted at its
first consumer, so the totals count shared weights once.

    >>> print(summary(g))                  # doctest: +SKIP
    >>> print(summary(g, group_by=3))        # per block: v.blk.0, v.blk.1, ...
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from ..ops.registry import REGISTRY
from .table import Report, Table, nbytes, si



@dataclass
class NodeStats:
    name: str
    op: str
    shape: tuple[int, ...]
    dtype: str
    params: int  # weight elements this node is the first to read
    flops: int | None  # None: the op's FLOP rule failed (reported as "?")
    read: int  # bytes
    written: int  # bytes


def is_view(node) -> bool:
    """Whether ggml runs the node as a view of its input (OpDef.view): no arithmetic, no copy."""
    opdef = REGISTRY.get(node.op)
    return opdef is not None and opdef.view


def flops_of(node) -> int | None:
    if node.op in ("input", "weight"):
        return 0
    try:
        return int(REGISTRY[node.op].flops(node.shape, [i.shape for i in node.inputs], **node.attrs))
    except Exception:  # noqa: BLE001 - a FLOP rule that does not know these attrs: report "?" rather than fail
        return None


def node_stats(graph, nodes=None) -> list[NodeStats]:
    """Stats for the computed and input nodes of `nodes` (default: live nodes), in topological order."""
    nodes = _default_nodes(graph) if nodes is None else nodes
    seen_w: set[int] = set()
    out = []
    for n in nodes:
        if n.op == "weight":
            continue
        params = 0
        for i in n.inputs:
            if i.op == "weight" and id(i) not in seen_w:
                seen_w.add(id(i))
                params += i.numel
        view = is_view(n) or n.op == "input"
        out.append(NodeStats(n.name, n.op, n.shape, n.dtype.name, params, flops_of(n),
                             0 if view else sum(i.nbytes for i in n.inputs), 0 if view else n.nbytes))
    return out


def _default_nodes(graph):
    return graph.live_nodes() if graph.outputs else list(graph.nodes)


def group_key(name: str, depth: int) -> str:
    """The first `depth` dotted parts: group_key('v.blk.3.attn_q', 2) == 'v.blk'."""
    return ".".join(name.split(".")[:depth])


class Summary(Report):
    """A table of nodes (or groups) with totals. `str()` is plain text; `.show()` uses rich on a tty.

    Attributes: rows (list of NodeStats), groups (dict key -> aggregated NodeStats, when
    grouped), total (aggregated NodeStats over all rows).
    """

    def __init__(self, graph, group_by: int | str | None = None, nodes=None):
        self.graph = graph
        self.group_by = group_by
        self.rows = node_stats(graph, nodes)
        self.total = _aggregate("total", self.rows)
        self.groups: dict[str, NodeStats] = {}
        self.ops: dict[str, Counter] = {}
        if group_by:
            key = _block_keys(graph, nodes) if group_by == "blocks" else None
            members: dict[str, list[NodeStats]] = {}
            for r in self.rows:
                k = key[r.name] if key else group_key(r.name, int(group_by))
                members.setdefault(k, []).append(r)
            self.groups = {k: _aggregate(k, v) for k, v in members.items()}
            self.ops = {k: Counter(r.op for r in v) for k, v in members.items()}

    @property
    def params(self) -> int:
        return self.total.params

    @property
    def flops(self) -> int | None:
        return self.total.flops

    def table(self) -> Table:
        g = self.graph
        title = (f"graph {g.name}: {len(self.rows)} nodes, {len(g.weights)} weights, "
                 f"{si(self.total.params)} parameters, {si(self.total.flops)} FLOPs")
        if self.group_by:
            t = Table(["group", "nodes", "ops", "params", "FLOPs", "read", "written"],
                      title=title, right={1, 3, 4, 5, 6})
            for k, s in self.groups.items():
                t.add(k, sum(self.ops[k].values()), _ops_str(self.ops[k]), si(s.params), si(s.flops),
                      nbytes(s.read), nbytes(s.written))
            t.total("total", len(self.rows), "", si(self.total.params), si(self.total.flops),
                    nbytes(self.total.read), nbytes(self.total.written))
            return t
        t = Table(["node", "op", "shape", "dtype", "params", "FLOPs", "read", "written"],
                  title=title, right={4, 5, 6, 7})
        for r in self.rows:
            t.add(r.name, r.op, _shape(r.shape), r.dtype, si(r.params) if r.params else "",
                  si(r.flops) if r.flops != 0 else "", nbytes(r.read) if r.read else "",
                  nbytes(r.written) if r.written else "")
        t.total("total", "", "", "", si(self.total.params), si(self.total.flops),
                nbytes(self.total.read), nbytes(self.total.written))
        return t

    def parts(self) -> list:
        return [self.table()]


def summary(graph, group_by: int | str | None = None) -> Summary:
    """Per-node table (op, shape, dtype, parameters, FLOPs, bytes read/written) with totals.

    Args:
        graph: the Graph.
        group_by: aggregate by the first N dotted name parts (2: "v.blk"; 3: "v.blk.0", ...), or
            "blocks": each run of repeated blocks ("v.blk.[0-23]") as one group, other nodes by
            their first name part ("v", "mm", ...).
    """
    return Summary(graph, group_by)


def _block_keys(graph, nodes=None) -> dict[str, str]:
    """Node -> its run of repeated blocks ('v.blk.[0-10]') or else its first name part ('v', 'mm')."""
    from .repeats import find_repeats
    nodes = _default_nodes(graph) if nodes is None else nodes
    keys = {n.name: re.sub(r"_\d+$", "", n.name.split(".")[0]) for n in nodes}
    for r in find_repeats(nodes):
        for members in r.members.values():
            keys.update({n.name: r.name for n in members})
    return keys


def _aggregate(name: str, rows: list[NodeStats]) -> NodeStats:
    flops = None if any(r.flops is None for r in rows) else sum(r.flops for r in rows)
    return NodeStats(name, "", (), "", sum(r.params for r in rows), flops,
                     sum(r.read for r in rows), sum(r.written for r in rows))


def _shape(shape) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _ops_str(c: Counter, limit: int = 4) -> str:
    items = [f"{op}×{k}" if k > 1 else op for op, k in c.most_common(limit)]
    if len(c) > limit:
        items.append("…")
    return " ".join(items)


__all__ = ["NodeStats", "Summary", "flops_of", "group_key", "node_stats", "summary"]
