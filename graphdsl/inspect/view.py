"""An interactive, self-contained HTML view of a graph, with time and error overlays.

    >>> v = graphdsl.inspect.view(run, {"pixels": px}, profile=True, diff=ref)   # doctest: +SKIP
    >>> v.url                     # served on 127.0.0.1 until v.close()          # doctest: +SKIP
    >>> graphdsl.inspect.view(g, path="g.html", serve=False)                     # doctest: +SKIP

The page is one HTML file with its data inside (no network, no server needed to open it later):
a tree of the graph's nodes built from their names (`v.blk.3.attn_q` under `v` > `v.blk.[0-11]
×12` > `v.blk.3`; runs of structurally identical blocks from `find_repeats` form one collapsible
group), one row per node with op, shape, dtype, FLOPs, bytes read/written, weights (name, shape,
type), the backend it ran on (an executor after a run), its time (`profile`) and its error
against a reference (`diff`). Groups add their members up (time, FLOPs, bytes) or take the
worst (error). An overlay colours the rows by time, error, FLOPs or bytes; "slowest" and "first
over the bound" select the node in one click; a row's panel lists its inputs and consumers.

Why not Google's Model Explorer (PyPI ai-edge-model-explorer 0.1.34), which has an adapter and
node-data API: it does install here and serves offline with a custom adapter, but it draws the
graph in WebGL, so the nodes and overlay values are not in the DOM, and in headless Chromium
(SwiftShader) its canvas stayed blank; it also pulls ai-edge-model-explorer-adapter (481 MB of
TF/MLIR converters), Flask and IPython. See the viewer section of the README.
"""
from __future__ import annotations

import html
import http.server
import json
import os
import re
import shutil
import signal
import threading
import weakref
from pathlib import Path

from .repeats import find_repeats
from .summarize import node_stats

PAGE = Path(__file__).with_name("view.html")


def _split(obj):
    """(graph, executor or None)."""
    if hasattr(obj, "graph") and callable(obj):
        return obj.graph, obj
    if hasattr(obj, "nodes") and hasattr(obj, "outputs"):
        return obj, None
    raise TypeError(f"view: expected a Graph or an executor, got {type(obj).__name__}")


def _parts(name: str) -> list[str]:
    """'v.blk.3.attn_q' -> ['v', 'blk.3', 'attn_q']: a number belongs to the name before it."""
    out: list[str] = []
    for p in name.split("."):
        if p.isdigit() and out:
            out[-1] += "." + p
        else:
            out.append(p)
    return out


def _paths(nodes) -> dict[str, list[str]]:
    """node name -> the ids of the groups it lies in, outermost first (a run of repeats is one more level)."""
    runs = {}
    for r in find_repeats(nodes):
        label = f"{r.name} ×{len(r.indices)}"
        for i in r.indices:
            runs[f"{r.prefix}.{i}"] = label
    out = {}
    for n in nodes:
        parts = _parts(n.name)
        path, prefix = [], ""
        for p in parts[:-1]:
            prefix = f"{prefix}.{p}" if prefix else p
            if prefix in runs:
                path.append(runs[prefix])
            path.append(prefix)
        out[n.name] = path
    return out


def view_data(obj, *, profile=None, diff=None, title: str | None = None) -> dict:
    """The page's data: nodes (topological order) with stats, groups, backends, times and errors.

    Args:
        obj: a Graph, or an executor (its graph; after a run, each node's backend).
        profile: an ``inspect.Profile`` of the executor (ms per node).
        diff: an ``inspect.DiffReport`` (relative L2 error per node against its reference).
    """
    graph, exe = _split(obj)
    nodes = [n for n in (graph.live_nodes() if graph.outputs else graph.nodes)]
    stats = {s.name: s for s in node_stats(graph, nodes)}
    where = {}
    if exe is not None and getattr(exe, "last_program", None) is not None and hasattr(exe, "placement"):
        where = exe.placement()["nodes"]
    times = {k: v[0] * 1e3 for k, v in profile.by_node().items()} if profile is not None else {}
    errs = {r.name: r for r in diff.rows} if diff is not None else {}
    paths = _paths([n for n in nodes if n.op != "weight"])
    rows = []
    for n in nodes:
        if n.op == "weight":
            continue
        s = stats[n.name]
        row = {"name": n.name, "op": n.op, "shape": list(n.shape), "dtype": n.dtype.name, "flops": s.flops,
               "read": s.read, "written": s.written, "params": s.params, "path": paths[n.name],
               "inputs": [i.name for i in n.inputs if i.op != "weight"],
               "weights": [[i.name, list(i.shape), i.dtype.name] for i in n.inputs if i.op == "weight"]}
        if n.name in where:
            row["backend"] = where[n.name]
        if n.name in times:
            row["ms"] = times[n.name]
        if n.name in errs:
            e = errs[n.name]
            row["err"] = {"rel_l2": _finite(e.rel_l2), "max_abs": _finite(e.max_abs), "ok": e.ok, "note": e.note}
        rows.append(row)
    out = {"title": title or f"graph {graph.name}", "graph": graph.name, "nodes": rows,
           "outputs": {k: v.name for k, v in graph.outputs.items()}}
    if exe is not None:
        out["backend"] = str(getattr(exe, "backend", ""))
    if profile is not None:
        out["profile"] = {"total_ms": profile.total_s * 1e3, "wall_ms": profile.wall_s * 1e3,
                          "unowned_ms": sum(n.seconds for n in profile.nodes if not n.owner) * 1e3}
    if diff is not None:
        out["diff"] = {"bound": diff.bound_rel_l2, "run": diff.names[0], "reference": diff.names[1],
                       "first_bad": diff.first_bad.name if diff.first_bad else None}
    return out


def _finite(x: float):
    return x if x == x and abs(x) != float("inf") else str(x)  # JSON has no inf/nan


def page(obj, *, profile=None, diff=None, title: str | None = None) -> str:
    """The self-contained HTML page (see `view_data`)."""
    data = view_data(obj, profile=profile, diff=diff, title=title)
    # inside <script>: no "<" at all, so no "</script>" or "<!--" can end the data early
    blob = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")
    tpl = PAGE.read_text(encoding="utf-8")
    return tpl.replace("%%TITLE%%", html.escape(data["title"])).replace("%%DATA%%", blob)


class Viewer:
    """A page written to `path`, served on `url` (127.0.0.1 by default) until `close()`.

    A page `view` wrote to a temporary folder of its own (no `path` given) lives as long as the
    Viewer: `close()`, leaving a `with` block (an exception too), garbage collection and the
    interpreter's exit remove the folder. Pass `path` to keep the page.
    """

    def __init__(self, path: Path, url: str | None, server=None, tmpdir: Path | None = None):
        self.path, self.url, self._server = path, url, server
        # a finalizer, not __del__: it also runs at interpreter exit, once, whichever comes first
        self._remove = weakref.finalize(self, shutil.rmtree, str(tmpdir), True) if tmpdir else None

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._remove is not None:
            self._remove()

    def serve_forever(self, ready: str = "") -> None:
        """Block until Ctrl-C or SIGTERM (the command line's `graphdsl view`), then close. `ready`
        is printed once both stop it cleanly (a script waiting for it may then signal)."""
        prev = None
        if threading.current_thread() is threading.main_thread():  # signal handlers live there only
            prev = signal.signal(signal.SIGTERM, _terminate)  # default SIGTERM skips every cleanup
        try:
            if ready:
                print(ready, flush=True)
            threading.Event().wait()
        finally:
            if prev is not None:
                signal.signal(signal.SIGTERM, prev)
            self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _repr_html_(self) -> str:  # in a notebook: a link rather than the whole page inline
        return f'<a href="{html.escape(self.url or self.path.as_uri())}" target="_blank">{html.escape(str(self.path))}</a>'


def _terminate(signum, frame):
    raise SystemExit(128 + signum)


def allowed_hosts(host: str, port: int) -> frozenset[str]:
    """Host header values the server answers: the bound address and the loopback names, with its port.

    Why: a page on evil.example can re-resolve its own name to 127.0.0.1 (DNS rebinding) and read
    this server as same-origin; its requests then carry `Host: evil.example`, which is refused.
    """
    names = {host.lower(), "localhost", "127.0.0.1", "::1"}
    fmt = [f"[{n}]" if ":" in n else n for n in names]
    return frozenset(f"{n}:{port}" for n in fmt) | (frozenset(fmt) if port == 80 else frozenset())


def serve(body: bytes, host: str = "127.0.0.1", port: int = 0):
    """Serve `body` at / on host:port in a daemon thread; returns (server, url). Requests whose
    Host header is not the bound address or a loopback name with the server's port get 403."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            if (self.headers.get("Host") or "").strip().lower() not in allowed:
                self.send_error(403, "Host not allowed")
                return
            if self.path.split("?")[0].split("#")[0] not in ("/", "/index.html"):
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):  # quiet: the command prints its URL once
            pass

    srv = http.server.ThreadingHTTPServer((host, port), Handler)
    allowed = allowed_hosts(srv.server_address[0], srv.server_address[1])
    threading.Thread(target=srv.serve_forever, daemon=True, name="graphdsl-view").start()
    h = srv.server_address[0]
    return srv, f"http://{'[' + h + ']' if ':' in h else h}:{srv.server_address[1]}/"


def view(obj, inputs=None, *, profile=None, diff=None, path: str | os.PathLike | None = None, serve_page: bool = True,
         host: str = "127.0.0.1", port: int = 0, title: str | None = None, repeat: int = 3) -> Viewer:
    """Write the interactive page of a graph or executor and serve it on 127.0.0.1.

    Args:
        obj: a Graph, or an executor (after a run its nodes show their backend).
        inputs: the executor's inputs, needed when `profile` is True or `diff` is a source.
        profile: an ``inspect.Profile``, or True to profile the executor on `inputs`.
        diff: an ``inspect.DiffReport``, or a reference source (an executor such as
            ``graphdsl.compile(g, "reference", weights=w)``, a mapping or callable; see
            ``inspect.diff``) to diff the executor against on `inputs`.
        path: where to write the page (atomically); default: a file in a new temporary folder.
        serve_page: serve the page on host:port (port 0: a free one); False: only write it.
        repeat: profiled runs to average when `profile` is True.
    """
    from ..fileio import atomic_open
    from .compare import DiffReport
    from .compare import diff as _diff
    from .profiling import profile as _profile
    if profile is True or (diff is not None and not isinstance(diff, DiffReport)):
        if _split(obj)[1] is None or inputs is None:
            raise ValueError("view: profile=True or a diff reference needs an executor and its inputs")
    if profile is True:
        profile = _profile(obj, inputs, repeat=repeat)
    if diff is not None and not isinstance(diff, DiffReport):
        diff = _diff(obj, diff, inputs)
    body = page(obj, profile=profile or None, diff=diff, title=title).encode("utf-8")
    tmpdir = None
    if path is None:
        import tempfile
        graph_name = re.sub(r"[^A-Za-z0-9_.-]", "_", _split(obj)[0].name)[:60] or "graph"
        tmpdir = Path(tempfile.mkdtemp(prefix="graphdsl-view-"))
        path = tmpdir / f"{graph_name}.html"
    path = Path(path)
    try:
        with atomic_open(path) as fh:
            fh.write(body)
        srv, url = serve(body, host, port) if serve_page else (None, None)
    except BaseException:  # a port in use, a full disk: no folder left behind
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
        raise
    return Viewer(path, url, srv, tmpdir)


__all__ = ["Viewer", "page", "serve", "view", "view_data"]
