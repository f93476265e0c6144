"""One typed line per node, as jaxprs and fx graphs print."""
from __future__ import annotations

from ..graph import type_str


def _attrs(attrs: dict) -> str:
    return "".join(f", {k}={v!r}" for k, v in attrs.items())


def format_graph(graph) -> str:
    lines = [f"graph {graph.name}("]
    lines += [f"    %{n.name} : {type_str(n.dtype, n.shape)}," for n in graph.inputs.values()]
    lines.append("):")
    for n in graph.nodes:
        if n.op == "input":
            continue
        if n.op == "weight":
            lines.append(f"    %{n.name} : {type_str(n.dtype, n.shape)} = weight")
            continue
        args = ", ".join(f"%{i.name}" for i in n.inputs)
        lines.append(f"    %{n.name} : {type_str(n.dtype, n.shape)} = {n.op}({args}{_attrs(n.attrs)})")
    outs = ", ".join(f"{k}=%{v.name}" for k, v in graph.outputs.items())
    lines.append(f"    return {{{outs}}}")
    return "\n".join(lines)
