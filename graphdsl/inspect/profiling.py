"""Per-node timing through ggml's scheduler eval callback, aggregated per op and per block.

    >>> prof = graphdsl.inspect.profile(run, {"x": x}, repeat=3)     # doctest: +SKIP
    >>> print(prof)                        # per-op and per-block tables
    >>> prof.chart("profile.png")          # bar chart (Pillow)

How: `Runtime.set_eval_callback(cb)` installs ggml_backend_sched's eval callback. The scheduler
asks `cb(t, ask=True)` before each node; answering True for every node makes it compute the
graph node by node and call `cb(t, ask=False)` after each one, so the time between the two
calls is that node's compute time. The callback is removed afterwards (also on error).
ggml nodes map to graphdsl nodes by name (see `placement.ggml_owners`).

Three numbers, measured separately, explain one another in the headline: the sum of node times,
the node-by-node call that contains them (the rest of it is time outside the nodes: inputs,
outputs, allocation, Python), and a normal call without the callback. The node-by-node call
minus the normal call is the cost of computing node by node (a launch and a synchronisation per
node); on a busy machine it can come out negative, and is then reported as noise, not as a saving.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from .placement import ggml_owners
from .repeats import split_name
from .summarize import flops_of
from .table import Report, Table, ms


@dataclass
class NodeTime:
    index: int
    ggml_op: str
    name: str  # ggml tensor name
    owner: str  # graphdsl node ("" if none)
    op: str  # graphdsl op of the owner ("" if none)
    backend: str
    seconds: float  # mean over repeats


def block_of(name: str) -> str:
    """'v.blk.3.attn_q' -> 'v.blk.3'; 'v.post_ln' -> 'v'; 'x' -> 'x'."""
    s = split_name(name)
    return f"{s[0]}.{s[1]}" if s else name.split(".")[0]


class Profile(Report):
    """Per ggml node times of one graph run; aggregate with by_op(), by_block(), by_node()."""

    def __init__(self, graph_name: str, nodes: list[NodeTime], wall_s: float, profiled_wall_s: float,
                 flops: dict[str, int], repeat: int):
        self.graph_name = graph_name
        self.nodes = nodes
        self.wall_s = wall_s  # a normal call (no callback), mean over repeats
        self.profiled_wall_s = profiled_wall_s  # a node-by-node call, mean over repeats
        self.flops = flops  # graphdsl node -> FLOPs
        self.repeat = repeat

    @property
    def total_s(self) -> float:
        """Sum of the node times (each a mean over the profiled calls)."""
        return sum(n.seconds for n in self.nodes)

    @property
    def outside_s(self) -> float:
        """Time of the node-by-node call spent outside every node: inputs, outputs, allocation, Python."""
        return self.profiled_wall_s - self.total_s

    @property
    def overhead_s(self) -> float:
        """What computing node by node cost, in all: node-by-node call - normal call (signed: < 0 is noise)."""
        return self.profiled_wall_s - self.wall_s

    @property
    def overhead_per_node_s(self) -> float:
        return self.overhead_s / max(len(self.nodes), 1)

    def headline(self) -> str:
        n, pw = len(self.nodes), self.profiled_wall_s
        share = f", {100 * self.total_s / pw:.0f}%" if pw > 0 else ""
        if self.overhead_s >= 0:
            cost = (f"computing node by node cost {_t(self.overhead_s)} in all, "
                    f"{_t(self.overhead_per_node_s)} per node")
        else:
            cost = (f"no measurable node-by-node cost: the normal call was {_t(-self.overhead_s)} slower "
                    f"(timing noise, e.g. a busy machine)")
        return (f"profile of {self.graph_name}: {n} ggml nodes, means of {self.repeat} call(s)\n"
                f"node-by-node call {_t(pw)} = {_t(self.total_s)} in the nodes (sum of node times{share}) "
                f"+ {_t(self.outside_s)} outside them (inputs, outputs, allocation, Python)\n"
                f"normal call {_t(self.wall_s)}; {cost}")

    def _by(self, key) -> dict[str, tuple[float, int, int]]:
        """key(node) -> (seconds, ggml nodes, FLOPs), sorted by time, largest first."""
        acc: dict[str, list] = {}
        counted: set[str] = set()
        for n in self.nodes:
            k = key(n)
            a = acc.setdefault(k, [0.0, 0, 0])
            a[0] += n.seconds
            a[1] += 1
            if n.owner and n.owner not in counted:
                counted.add(n.owner)
                a[2] += self.flops.get(n.owner) or 0
        return dict(sorted(((k, tuple(v)) for k, v in acc.items()), key=lambda kv: -kv[1][0]))

    def by_op(self) -> dict[str, tuple[float, int, int]]:
        """graphdsl op -> (seconds, ggml nodes, FLOPs)."""
        return self._by(lambda n: n.op or f"({n.ggml_op})")

    def by_ggml_op(self) -> dict[str, tuple[float, int, int]]:
        return self._by(lambda n: n.ggml_op)

    def by_block(self, depth: int | None = None) -> dict[str, tuple[float, int, int]]:
        """Block ('v.blk.3') -> ...; with depth, the first `depth` dotted parts of the node name."""
        if depth:
            return self._by(lambda n: ".".join((n.owner or n.name).split(".")[:depth]))
        return self._by(lambda n: block_of(n.owner or n.name))

    def by_node(self) -> dict[str, tuple[float, int, int]]:
        return self._by(lambda n: n.owner or n.name)

    def table(self, by: str | int = "op", top: int | None = None) -> Table:
        """by: "op", "ggml_op", "block", "node" or an int depth of dotted name parts."""
        groups = self._groups(by)
        total = self.total_s or 1e-12
        t = Table([_BY_TITLE.get(by, "group"), "time", "%", "ggml nodes", "GFLOP/s"],
                  title=f"profile {self.graph_name} by {by}", right={1, 2, 3, 4})
        items = list(groups.items())
        for k, (s, cnt, fl) in items[:top] if top else items:
            t.add(k, ms(s), f"{100 * s / total:.1f}", cnt, f"{fl / s / 1e9:.2f}" if fl and s > 0 else "")
        if top and len(items) > top:
            rest = items[top:]
            t.add(f"({len(rest)} more)", ms(sum(v[0] for _, v in rest)), f"{100 * sum(v[0] for _, v in rest) / total:.1f}",
                  sum(v[1] for _, v in rest), "")
        t.total("total", ms(self.total_s), "100.0", len(self.nodes), "")
        return t

    def _groups(self, by):
        if isinstance(by, int):
            return self.by_block(by)
        fn = {"op": self.by_op, "ggml_op": self.by_ggml_op, "block": self.by_block, "node": self.by_node}.get(by)
        if fn is None:
            raise ValueError(f"profile: by must be 'op', 'ggml_op', 'block', 'node' or an int, got {by!r}")
        return fn()

    def parts(self) -> list:
        return [self.headline(), self.table("op"), self.table("block", top=30)]

    def chart(self, path, by: str | int = "op", top: int = 20):
        """Write a horizontal bar chart PNG of time per op / block / node (Pillow)."""
        from .chart import bar_chart
        items = list(self._groups(by).items())[:top]
        return bar_chart(path, [k for k, _ in items], [v[0] * 1e3 for _, v in items],
                         title=f"{self.graph_name}: time by {by} (ms, node by node)", unit="ms")


def _t(seconds: float) -> str:
    """Milliseconds, or microseconds below one (a per-node cost must not print as 0.000 ms)."""
    return f"{seconds * 1e6:.1f} µs" if abs(seconds) < 1e-3 else ms(seconds)


_BY_TITLE = {"op": "op", "ggml_op": "ggml op", "block": "block", "node": "node"}


def profile(executor, inputs=None, *, repeat: int = 3, warmup: int = 1, **kw) -> Profile:
    """Time every ggml node of one run of `executor` on `inputs`.

    Nodes on an RPC device are timed until their result can be read back, so each includes
    sending its one-node graph and a round trip (about 0.3 ms per node on loopback here).

    Args:
        executor: a GGMLExecutor.
        inputs: the inputs (dict, or keywords).
        repeat: profiled runs to average (and plain runs for the wall time), >= 1.
        warmup: plain runs first (the first run also reserves the graph); at least one is made.
    """
    if not hasattr(executor, "runtime"):
        raise ValueError("profile() needs a ggml executor (the reference backend has no scheduler)")
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise ValueError(f"profile(): repeat must be an int >= 1, got {repeat!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"profile(): warmup must be an int >= 0, got {warmup!r}")
    # held throughout: another thread's run in between would take the eval callback's timings
    with executor.lock:
        return _profile(executor, dict(inputs or {}, **kw), repeat, warmup)


def _profile(executor, inputs, repeat: int, warmup: int) -> Profile:
    for _ in range(max(warmup, 1)):
        executor(inputs)
    walls = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        executor(inputs)
        walls.append(time.perf_counter() - t0)
    rt = executor.runtime
    names = rt.backend_names
    remote = [n.startswith("RPC") for n in names]
    runs, pwalls = [], []
    for _ in range(repeat):
        events: list[tuple] = []
        started = [0.0]

        def cb(t, ask, events=events, started=started):
            if ask:
                started[0] = time.perf_counter()
                return True
            b = rt.tensor_backend(t)
            if b >= 0 and remote[b]:
                rt.wait_for(t)  # an RPC compute returns before the server has finished
            dt = time.perf_counter() - started[0]
            events.append((t.op, t.name, names[b] if b >= 0 else "", dt))
            return True

        rt.set_eval_callback(cb)
        rt.set_threadpool(True)  # one CPU compute per node: keep the worker threads between them
        try:
            t0 = time.perf_counter()
            executor(inputs)
            pwalls.append(time.perf_counter() - t0)
        finally:
            rt.set_eval_callback(None)
            rt.set_threadpool(False)
        runs.append(events)
    prog = executor.last_program
    first = runs[0]
    n = min(len(r) for r in runs)
    owners = ggml_owners([e[1] for e in first[:n]], prog.tensors)
    by_name = {nd.name: nd for nd in prog.graph.nodes}
    nodes = []
    for i in range(n):
        op, name, backend, _ = first[i]
        secs = statistics.fmean(r[i][3] for r in runs)
        own = owners[i]
        nodes.append(NodeTime(i, op, name, own, by_name[own].op if own in by_name else "", backend, secs))
    flops = {nd.name: flops_of(nd) for nd in prog.graph.nodes if nd.op not in ("input", "weight")}
    # means, as the node times are: the headline adds and subtracts them
    return Profile(prog.graph.name, nodes, statistics.fmean(walls), statistics.fmean(pwalls), flops, repeat)
