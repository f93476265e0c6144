"""The interactive viewer (issue 19 part 1): its data, the page, `graphdsl view`, and the page in
a real headless Chromium (skipped where none is installed; .ci/run installs Debian's)."""
import json
import re
import shutil
import subprocess
import urllib.request

import numpy as np
import pytest

import graphdsl
from graphdsl import cli, demo, inspect
from graphdsl.inspect.view import page, view, view_data

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
BAD = "v.blk.1.attn_q"  # the node whose reference the negative control perturbs


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    mmproj, text, _ = demo.build_files("tiny", tmp_path_factory.mktemp("cache"))
    g, feeds, w, _ = demo.model_graph(str(mmproj), modality="image")
    run = graphdsl.compile(g, "cpu", n_threads=2, weights=w)
    run(feeds)
    ref = graphdsl.compile(g, "reference", weights=w)
    good = inspect.capture(ref, feeds)
    bad = dict(good)
    bad[BAD] = bad[BAD] * 1.01  # a 1% error at one node: far over the 1e-4 bound
    return dict(mmproj=mmproj, text=text, g=g, feeds=feeds, run=run, good=good, bad=bad)


def test_data_has_the_hierarchy_stats_backend_and_overlays(model):
    run, feeds = model["run"], model["feeds"]
    prof = inspect.profile(run, feeds, repeat=1)
    rep = inspect.diff(run, model["bad"], feeds)
    d = view_data(run, profile=prof, diff=rep)
    nodes = {n["name"]: n for n in d["nodes"]}
    q = nodes["v.blk.0.attn_q"]
    assert q["path"] == ["v", "v.blk.[0-1] ×2", "v.blk.0"]  # the run of repeats is one collapsible level
    stats = {s.name: s for s in inspect.summary(model["g"]).rows}
    assert (q["op"], q["shape"], q["dtype"], q["flops"], q["read"]) == (
        "add", [1, 17, 32], "f32", stats["v.blk.0.attn_q"].flops, stats["v.blk.0.attn_q"].read)
    assert q["weights"] == [["v.blk.0.attn_q.bias", [32], "f32"]] and q["backend"] == "CPU"
    mm = nodes["v.blk.0.attn_q.mm"]
    assert mm["weights"][0][0] == "v.blk.0.attn_q.weight" and mm["flops"] == 2 * 17 * 32 * 32
    assert all(n["ms"] >= 0 for n in d["nodes"] if n["op"] not in ("input",) and "ms" in n)
    assert sum("ms" in n for n in d["nodes"]) > 50
    # the error overlay: only the perturbed node is over the bound, and it is the first
    assert d["diff"]["first_bad"] == BAD and not nodes[BAD]["err"]["ok"]
    assert 5e-3 < nodes[BAD]["err"]["rel_l2"] < 2e-2
    assert all(n["err"]["ok"] for k, n in nodes.items() if "err" in n and k != BAD)
    ok = view_data(run, diff=inspect.diff(run, model["good"], feeds))  # the control: all within
    assert ok["diff"]["first_bad"] is None


def test_a_graph_without_a_run_and_escaping(model):
    g = graphdsl.Graph("a </script><!-- b")
    x = g.input("x", (2, 3))
    g.output("y", x.gelu_erf())
    html = page(g, title="t </script> <b>")
    assert html.count("</script>") == 2  # the data cannot end its own script element
    blob = re.search(r'id="graphdsl-data" type="application/json">(.*?)</script>', html, re.S).group(1)
    d = json.loads(blob)
    assert d["graph"] == "a </script><!-- b" and "backend" not in d["nodes"][0]
    assert "<title>t &lt;/script&gt; &lt;b&gt; - graphdsl</title>" in html
    with pytest.raises(TypeError, match="Graph or an executor"):
        view_data(42)
    with pytest.raises(ValueError, match="executor and its inputs"):
        view(g, profile=True)


def test_view_serves_on_loopback_and_writes_atomically(model, tmp_path):
    out = tmp_path / "p.html"
    with view(model["run"], path=out) as v:
        assert v.url.startswith("http://127.0.0.1:")
        body = urllib.request.urlopen(v.url, timeout=10).read().decode()
        assert body == out.read_text() and '"name":"v.blk.1.attn_q"' in body
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(v.url + "etc/passwd", timeout=10)
    assert [p.name for p in tmp_path.iterdir()] == ["p.html"]  # no temporary file left


def test_view_command(model, tmp_path, capsys):
    out = tmp_path / "v.html"
    rc = cli.main(["view", str(model["mmproj"]), "--modality", "audio", "--threads", "2", "--diff", "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    d = json.loads(re.search(r'type="application/json">(.*?)</script>', out.read_text(), re.S).group(1))
    assert any(n["name"].startswith("a.blk.1.") for n in d["nodes"]) and d["diff"]["first_bad"] is None
    assert "wrote" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:  # an existing page is replaced only with --force
        cli.main(["view", str(model["mmproj"]), "-o", str(out)])
    assert e.value.code == 2
    rc = cli.main(["view", str(model["text"]), "--threads", "2", "-o", str(tmp_path / "t.html")])  # a text GGUF
    assert rc == 0 and '"op":"get_rows"' in (tmp_path / "t.html").read_text()


def _dom(url: str) -> str:
    r = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", url],
                       capture_output=True, text=True, timeout=180, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


@pytest.mark.skipif(BROWSER is None, reason="no Chromium installed (apt-get install chromium; .ci/run does)")
def test_page_in_headless_chromium(model):
    run, feeds = model["run"], model["feeds"]
    with view(run, feeds, profile=True, diff=model["bad"], repeat=1) as v:
        dom = _dom(v.url + f"#overlay=error&select={BAD}")
    assert 'data-ready="1"' in dom  # the script ran to its end
    rows = re.findall(r'<div class="row node[^"]*" data-name="([^"]+)"', dom)
    assert len(rows) == len(view_data(run)["nodes"]) and "v.blk.0.attn_q.mm" in rows
    # the perturbed node: marked over the bound, its error shown in the row and the details panel
    row = re.search(rf'<div class="row node([^"]*)" data-name="{re.escape(BAD)}">(.*?)</div>(?=<div class="row)', dom, re.S)
    assert "bad" in row.group(1) and "sel" in row.group(1)
    assert re.search(r'<span class="num ov err">[0-9.]+e-[23]</span>', row.group(2))
    assert re.search(r'<span class="num ov time">[0-9.]+ ms</span>', row.group(2))
    assert f"<h2>{BAD}</h2>" in dom and "OVER 0.0001" in dom
    ok = re.search(r'<div class="row node([^"]*)" data-name="v.blk.0.attn_q">', dom)
    assert "bad" not in ok.group(1)  # the control: an unperturbed node is within the bound
    # top-level groups open; blocks closed unless the selection lies inside (v.blk.1 does, v.blk.0 not)
    assert re.search(r'<div class="row group bad" data-group="v">', dom)  # the worst member marks its groups
    assert re.search(r'<div class="row node" data-name="v.blk.1.attn_v">', dom)
    assert re.search(r'<div class="row node hidden" data-name="v.blk.0.attn_v">', dom)


def test_nan_errors_survive_json(model):
    vals = dict(model["good"])
    vals[BAD] = np.full_like(vals[BAD], np.nan)
    d = view_data(model["run"], diff=inspect.diff(model["run"], vals, model["feeds"]))
    json.dumps(d, allow_nan=False)  # strict JSON: a browser's JSON.parse takes no NaN
    assert {n["name"]: n for n in d["nodes"]}[BAD]["err"]["ok"] is False


# -- issue 28: the Host header (DNS rebinding) and the temporary page folder -----------------------------
def _get(url: str, host: str | None) -> int:
    """The status of GET / with the given Host header (None: none at all)."""
    import http.client
    from urllib.parse import urlsplit
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        conn.putrequest("GET", "/", skip_host=True)
        if host is not None:
            conn.putheader("Host", host)
        conn.endheaders()
        return conn.getresponse().status
    finally:
        conn.close()


def test_only_loopback_host_headers_are_answered(model, tmp_path):
    """A page on evil.example re-resolved to 127.0.0.1 sends `Host: evil.example`: 403, as do another
    port and no Host at all; the loopback names with the right port are answered (the control)."""
    with view(model["g"], path=tmp_path / "p.html") as v:
        port = int(v.url.rsplit(":", 1)[1].strip("/"))
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"[::1]:{port}"):
            assert _get(v.url, host) == 200, host
        for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1:{port + 1}", "127.0.0.1",
                     f"localhost.evil.example:{port}", "", None):
            assert _get(v.url, host) == 403, host


def _view_dirs(root):
    return sorted(p.name for p in root.iterdir() if p.name.startswith("graphdsl-view-"))


def test_the_temporary_page_folder_goes_with_the_viewer(model, tmp_path, monkeypatch):
    """close(), a with block left by an exception and a failed start leave no graphdsl-view-* folder."""
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    v = view(model["g"])
    assert v.path.parent.parent == tmp_path and v.path.is_file() and _view_dirs(tmp_path)
    v.close()
    v.close()  # twice is fine
    assert not _view_dirs(tmp_path)
    with pytest.raises(RuntimeError, match="boom"):
        with view(model["g"], serve_page=False) as v:
            assert v.path.is_file()
            raise RuntimeError("boom")
    assert not _view_dirs(tmp_path)
    import socket
    with socket.socket() as busy:  # the port is taken: the bind fails after the page was written
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(OSError):
            view(model["g"], port=busy.getsockname()[1])
    assert not _view_dirs(tmp_path)
    kept = tmp_path / "kept.html"
    view(model["g"], path=kept, serve_page=False).close()  # the control: a page the caller named stays
    assert kept.is_file()


CHILD_EXIT = """
import sys
from graphdsl.demo import model_graph
from graphdsl.inspect.view import view
g = model_graph(sys.argv[1], modality="image")[0]
v = view(g)
print(v.path, flush=True)
"""


@pytest.mark.parametrize("how", ["exit", "SIGINT", "SIGTERM"])
def test_the_folder_is_gone_after_the_process_ends(model, tmp_path, how):
    """A script that ends without close(), and `graphdsl view` stopped by Ctrl-C or SIGTERM, in a child."""
    import os
    import signal
    import sys
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    if how == "exit":
        r = subprocess.run([sys.executable, "-c", CHILD_EXIT, str(model["mmproj"])], capture_output=True, text=True,
                           env=env, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        assert r.stdout.strip().startswith(str(tmp_path / "graphdsl-view-"))
    else:
        p = subprocess.Popen([sys.executable, "-m", "graphdsl.cli", "view", str(model["mmproj"]), "--threads", "1"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        try:
            line = p.stdout.readline()  # "...: serving URL (the page is also at PATH); Ctrl-C stops"
            assert "serving http://127.0.0.1:" in line, line + p.stderr.read()[-2000:]
            page_dir = tmp_path / _view_dirs(tmp_path)[0]
            assert (page_dir / re.search(r"also at (\S+)\)", line).group(1).rsplit("/", 1)[1]).is_file()
            p.send_signal(getattr(signal, how))
            rc = p.wait(timeout=60)
        finally:
            if p.poll() is None:
                p.kill()
            p.stdout.close()
            p.stderr.close()
        assert rc == (130 if how == "SIGINT" else 128 + signal.SIGTERM), rc
    assert not _view_dirs(tmp_path)
