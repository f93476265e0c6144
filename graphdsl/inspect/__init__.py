"""Inspection: printing, summaries, networkx, drawing, lowered graph, profiling, capture and diff.

The DSL graph:
    print(g)                         one typed line per node
    summary(g, group_by=None)        table: op, shape, dtype, params, FLOPs, bytes read/written
    to_networkx(g)                   networkx.DiGraph with node and edge attributes
    draw(g, "g.svg")                 DOT / SVG / PNG; repeated blocks collapsed ("v.blk.[0-23] ×24")

What ggml ran (a GGMLExecutor after a call):
    lowered(run)                     ggml nodes and ops, placement, splits, buffers, unsupported ops
    profile(run, inputs)             per-node times via the scheduler's eval callback; .chart(png)
    capture(run, inputs, "v.blk.3.*") named intermediates as NumPy arrays (any backend)
    diff(run, ref, inputs)           first node whose error exceeds a bound, and a table of all
    view(run, inputs, profile=True, diff=ref)  an interactive HTML page (served on 127.0.0.1) with
                                     time and error overlays; view(g, path="g.html", serve_page=False)
    diff_hf(run, inputs, hf_model, hf_inputs)  the same against an HF torch model, via forward hooks
                                     and a mapping HF module -> node (inspect.hf; needs torch)

Every report prints as plain text with str() and through rich with .show() on a terminal.
"""
from .compare import DiffReport, DiffRow, capture, diff
from .drawing import GraphvizNotFound, draw, graphviz_available, to_dot, to_networkx
from .hf import diff_hf
from .placement import LoweredReport, lowered
from .printing import format_graph
from .profiling import Profile, profile
from .repeats import find_repeats
from .summarize import Summary, summary
from .table import Table, show
from .view import view

__all__ = ["DiffReport", "DiffRow", "GraphvizNotFound", "LoweredReport", "Profile", "Summary", "Table", "capture",
           "diff", "diff_hf", "draw", "find_repeats", "format_graph", "graphviz_available", "lowered", "profile", "show",
           "summary", "to_dot", "to_networkx", "view"]
