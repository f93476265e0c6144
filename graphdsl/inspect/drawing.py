"""to_networkx(graph) and draw(graph, path): DOT always, SVG/PNG/PDF through Graphviz's `dot`.

The DOT text is written here by hand (no pydot needed). Rendering SVG or PNG runs Graphviz's
`dot` program; where it is missing, `draw` raises `GraphvizNotFound` saying how to install it
(`apt-get install graphviz`, `brew install graphviz`, `conda install -c conda-forge graphviz`),
and a `.dot` path always works.

Drawings collapse repeated blocks: the 24 identical layers v.blk.0 .. v.blk.23 become one
cluster "v.blk.[0-23] ×24" showing the first layer; the wire from one layer to the next is a
dashed edge inside the cluster. Nodes are coloured by op kind and edges carry shapes.

    >>> draw(g, "encoder.svg")              # doctest: +SKIP
    >>> nxg = to_networkx(g); nxg.nodes["v.blk.0.attn_q"]["flops"]   # doctest: +SKIP
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from ..ops.registry import REGISTRY
from .repeats import collapse_map, find_repeats, local_name, split_name
from .summarize import flops_of, is_view
from .table import si

INSTALL_HINT = ("install Graphviz for SVG/PNG output: `apt-get install graphviz` (Debian/Ubuntu), "
                "`brew install graphviz` (macOS) or `conda install -c conda-forge graphviz`; "
                "or draw to a .dot file")

# fill colour per op kind (each op declares its kind in the registry), then the two leaf kinds
COLOURS = {
    "matmul": "#f4cccc", "conv": "#fce5cd", "norm": "#fff2cc", "activation": "#d0e0e3",
    "arithmetic": "#cfe2f3", "gather/reduce": "#d9d2e9", "layout": "#f3f3f3", "constant": "#ffffff",
    "input": "#d9ead3", "weight": "#eeeeee",
}


class GraphvizNotFound(RuntimeError):
    """Graphviz's `dot` program is needed for SVG/PNG/PDF."""


def op_kind(op: str) -> str:
    """The registry op's kind, "input" or "weight" for the leaves, else "other"."""
    if op in ("input", "weight"):
        return op
    opdef = REGISTRY.get(op)
    return opdef.kind if opdef is not None else "other"


def kind_colour(kind: str) -> str:
    return COLOURS.get(kind, "#ffffff")


def _nodes(graph, weights: bool):
    nodes = graph.live_nodes() if graph.outputs else list(graph.nodes)
    return [n for n in nodes if weights or n.op != "weight"]


def to_networkx(graph, weights: bool = True):
    """A networkx.DiGraph keyed by node name.

    Node attributes: op, kind, shape, dtype, attrs, params (weight elements), flops, nbytes,
    is_output. Edge attributes: shape, dtype, nbytes, args (input positions of the consumer).
    Graph attributes: name, inputs, outputs (output name -> node name).
    """
    import networkx as nx
    g = nx.DiGraph(name=graph.name, inputs=list(graph.inputs), outputs={k: v.name for k, v in graph.outputs.items()})
    nodes = _nodes(graph, weights)
    outs = {id(n) for n in graph.outputs.values()}
    for n in nodes:
        g.add_node(n.name, op=n.op, kind=op_kind(n.op), shape=n.shape, dtype=n.dtype.name, attrs=dict(n.attrs),
                   params=n.numel if n.op == "weight" else 0, flops=flops_of(n), nbytes=n.nbytes,
                   is_output=id(n) in outs)
    for n in nodes:
        for pos, i in enumerate(n.inputs):
            if i.name not in g:
                continue
            if g.has_edge(i.name, n.name):
                g.edges[i.name, n.name]["args"].append(pos)
            else:
                g.add_edge(i.name, n.name, shape=i.shape, dtype=i.dtype.name, nbytes=i.nbytes, args=[pos])
    return g


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _shape(shape) -> str:
    return "×".join(str(d) for d in shape)


def to_dot(graph, *, collapse: bool = True, weights: bool = False, rankdir: str = "TB",
           edge_labels: bool = True) -> str:
    """The graph as Graphviz DOT text (see the module docstring for what is drawn)."""
    nodes = _nodes(graph, weights)
    repeats = find_repeats(nodes) if collapse else []
    rep_of, owner = collapse_map(repeats)
    drawn = [n for n in nodes if id(n) not in rep_of]
    params = {}
    for n in nodes:
        params[id(n)] = sum(i.numel for i in n.inputs if i.op == "weight")
    lines = [f"digraph {_q(graph.name)} {{", f"  rankdir={rankdir};",
             '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];',
             '  edge [fontname="Helvetica", fontsize=8, color="#666666"];',
             f"  labelloc=t; label={_q(graph.name)}; fontname=\"Helvetica\";"]
    kinds_used = set()

    def node_line(n, indent="  "):
        kind = op_kind(n.op)
        kinds_used.add(kind)
        shown = local_name(n.name) if id(n) in owner else n.name
        label = f"{shown}\\n{n.op}" if n.op not in ("input", "weight") else f"{shown}\\n{n.op} {n.dtype.name}[{_shape(n.shape)}]"
        if params[id(n)]:
            label += f"\\n{_count(params[id(n)])} params"
        style = "filled" if n.op in ("input", "weight") else '"rounded,filled"'
        shape = ", shape=ellipse" if n.op == "input" else ""
        dashed = ', color="#999999"' if is_view(n) else ""
        return f'{indent}{_q(n.name)} [label="{_esc(label)}", fillcolor="{kind_colour(kind)}", style={style}{shape}{dashed}];'

    by_repeat: dict[int, list] = {}
    for n in drawn:
        r = owner.get(id(n))
        if r is None:
            lines.append(node_line(n))
        else:
            by_repeat.setdefault(id(r), []).append(n)
    for k, r in enumerate(repeats):
        lines.append(f"  subgraph cluster_{k} {{")
        lines.append(f'    label={_q(r.label)}; style="rounded,filled"; fillcolor="#fafafa"; color="#999999";')
        lines += [node_line(n, "    ") for n in by_repeat.get(id(r), [])]
        lines.append("  }")
    edges = {}
    for n in nodes:
        dst = rep_of.get(id(n), n)
        for i in n.inputs:
            if i.op == "weight" and not weights:
                continue
            src = rep_of.get(id(i), i)
            loop = id(src) in owner and id(dst) in owner and split_index(i) != split_index(n) \
                and owner[id(src)] is owner[id(dst)]
            key = (src.name, dst.name)
            if key not in edges:
                edges[key] = (i, loop)
    for (s, d), (i, loop) in edges.items():
        attrs = []
        if edge_labels:
            attrs.append(f'label="{_shape(i.shape)}"')
        if loop:
            attrs[-1:] = [f'label="{_shape(i.shape)} (next)"'] if edge_labels else []
            attrs += ["style=dashed", "constraint=false", 'color="#3c78d8"']
        lines.append(f"  {_q(s)} -> {_q(d)}" + (f" [{', '.join(attrs)}];" if attrs else ";"))
    for name, n in graph.outputs.items():
        src = rep_of.get(id(n), n)
        lines.append(f'  {_q("output:" + name)} [label="{_esc(name)}\\noutput", shape=doubleoctagon, '
                     f'style=filled, fillcolor="#b6d7a8"];')
        lines.append(f'  {_q(src.name)} -> {_q("output:" + name)} [label="{_shape(n.shape)}"];')
    lines += _legend(kinds_used)
    lines.append("}")
    return "\n".join(lines) + "\n"


def split_index(n):
    s = split_name(n.name)
    return s[1] if s else None


def _legend(kinds) -> list[str]:
    kinds = [k for k in COLOURS if k in kinds] + (["other"] if "other" in kinds else [])
    if not kinds:
        return []
    cells = "".join(f'<td bgcolor="{kind_colour(k)}">{k}</td>' for k in kinds)
    table = (f'<table border="0" cellborder="1" cellspacing="0" cellpadding="3"><tr><td>op kinds</td>{cells}'
             "</tr></table>")
    return [f'  legend [shape=plaintext, style="", fontsize=8, label=<{table}>];']


def _esc(s: str) -> str:
    return s.replace('"', '\\"')


def _count(n: int) -> str:
    return si(n)


def graphviz_available() -> bool:
    return shutil.which("dot") is not None


def draw(graph, path: str | os.PathLike, *, collapse: bool = True, weights: bool = False,
         rankdir: str = "TB", edge_labels: bool = True) -> Path:
    """Write a drawing of the graph; the format comes from the suffix (.dot/.gv, .svg, .png, .pdf).

    Args:
        collapse: draw runs of structurally identical blocks once ("v.blk.[0-23] ×24").
        weights: draw weight nodes too (their parameter counts are on the consumers anyway).
        rankdir: Graphviz layout direction ("TB" top to bottom, "LR" left to right).
        edge_labels: write each edge's shape on it.

    Returns:
        The path written. Raises GraphvizNotFound for SVG/PNG/PDF without Graphviz's `dot`.
    """
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    text = to_dot(graph, collapse=collapse, weights=weights, rankdir=rankdir, edge_labels=edge_labels)
    if fmt in ("dot", "gv"):
        path.write_text(text)
        return path
    if fmt not in ("svg", "png", "pdf"):
        raise ValueError(f"draw: unknown format {path.suffix!r}; use .dot, .svg, .png or .pdf")
    dot = shutil.which("dot")
    if dot is None:
        raise GraphvizNotFound(f"Graphviz's `dot` program was not found: {INSTALL_HINT}")
    proc = subprocess.run([dot, f"-T{fmt}", "-o", str(path)], input=text.encode(), capture_output=True,
                          timeout=300, check=False)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"Graphviz dot failed ({proc.returncode}): {err[0] if err else 'no message'}")
    return path
