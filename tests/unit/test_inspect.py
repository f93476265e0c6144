"""Inspection: summary (golden text, FLOPs by hand), networkx, drawing, lowered report, profile,
capture and diff."""
import io
import shutil
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

import graphdsl
from graphdsl import Graph, inspect, ops
from graphdsl.blocks import VitParams, vit
from graphdsl.inspect import drawing as draw_mod
from graphdsl.inspect.repeats import find_repeats
from graphdsl.inspect.summarize import flops_of

HAVE_DOT = shutil.which("dot") is not None


def tiny():
    g = Graph("tiny")
    x = g.input("x", (2, 3))
    with g.scope("proj"):
        h = ops.linear(x, g.weight("weight", (4, 3)), g.weight("bias", (4,)))
    g.output("y", h.gelu_erf(name="act"))
    return g


def encoder(n_layer=3):
    g = Graph("enc")
    x = g.input("x", (6, 16))
    with g.scope("v"):
        hs = vit(x, VitParams(16, 2, 32, 1e-5, "gelu_erf", attn="softmax"), n_layer)
        y = ops.norm(hs[-1], 1e-5, name="post_ln")
    g.output("y", y)
    rng = np.random.default_rng(0)
    w = {k: (0.2 * rng.standard_normal(n.shape)).astype(np.float32) for k, n in g.weights.items()}
    return g, w, {"x": rng.standard_normal((6, 16)).astype(np.float32)}


# -- summary ------------------------------------------------------------------------------
def test_summary_golden_and_flops_by_hand():
    s = inspect.summary(tiny())
    # mul_mat (2,4) over k=3: 2*2*4*3 = 48; bias add: 8; gelu_erf: 8 per element * 8 = 64
    assert s.flops == 48 + 8 + 64
    assert s.params == 4 * 3 + 4
    assert s.total.read == (24 + 48) + (32 + 16) + 32  # inputs at f32, weights included
    assert s.total.written == 3 * 32
    assert str(s) == (
        "graph tiny: 4 nodes, 2 weights, 16 parameters, 120 FLOPs\n"
        "node          op        shape  dtype  params  FLOPs   read  written\n"
        "------------  --------  -----  -----  ------  -----  -----  -------\n"
        "x             input     [2,3]  f32\n"
        "proj.mul_mat  mul_mat   [2,4]  f32        12     48   72 B     32 B\n"
        "proj.add      add       [2,4]  f32         4      8   48 B     32 B\n"
        "act           gelu_erf  [2,4]  f32               64   32 B     32 B\n"
        "------------  --------  -----  -----  ------  -----  -----  -------\n"
        "total                                     16    120  152 B     96 B"
    )


def test_summary_group_by_aggregates_blocks():
    g, _, _ = encoder(3)
    s = inspect.summary(g, group_by=3)
    assert list(s.groups) == ["x", "v.blk.0", "v.blk.1", "v.blk.2", "v.post_ln"]
    assert s.groups["v.blk.0"].flops == s.groups["v.blk.2"].flops > 0
    assert sum(v.flops for v in s.groups.values()) == s.flops
    assert sum(v.params for v in s.groups.values()) == s.params == sum(n.numel for n in g.weights.values())
    by2 = inspect.summary(g, group_by=2)
    assert by2.groups["v.blk"].flops == 3 * s.groups["v.blk.0"].flops
    assert "v.blk.1" in str(s) and "total" in str(s)


def test_summary_rich_rendering():
    pytest.importorskip("rich")
    from rich.console import Console
    con = Console(record=True, width=200, file=io.StringIO())
    con.print(inspect.summary(tiny()))
    out = con.export_text()
    assert "proj.mul_mat" in out and "120" in out


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_show_falls_back_to_plain_text_without_rich(monkeypatch):
    monkeypatch.setitem(sys.modules, "rich.console", None)  # import fails as if rich were not installed
    buf = _Tty()
    inspect.summary(tiny()).show(buf)
    assert buf.getvalue() == str(inspect.summary(tiny())) + "\n"


# -- networkx and drawing ---------------------------------------------------------------------
def test_to_networkx_attributes():
    g = tiny()
    nxg = inspect.to_networkx(g)
    assert nxg.nodes["proj.mul_mat"]["op"] == "mul_mat"
    assert nxg.nodes["proj.mul_mat"]["flops"] == 48
    assert nxg.nodes["proj.weight"]["params"] == 12
    assert nxg.nodes["act"]["is_output"]
    assert nxg.edges["x", "proj.mul_mat"]["shape"] == (2, 3)
    assert nxg.edges["proj.weight", "proj.mul_mat"]["args"] == [1]
    assert set(inspect.to_networkx(g, weights=False)) == {"x", "proj.mul_mat", "proj.add", "act"}


def test_repeats_found_and_broken_by_a_different_layer():
    g, _, _ = encoder(4)
    (r,) = find_repeats(g.live_nodes())
    assert (r.prefix, r.indices, r.label) == ("v.blk", [0, 1, 2, 3], "v.blk.[0-3] ×4")
    g2 = Graph("odd")
    x = g2.input("x", (4, 8))
    for i, d in enumerate([8, 8, 8, 16]):  # last layer has another width
        with g2.scope(f"blk.{i}"):
            x = ops.linear(x, g2.weight("w", (d, x.shape[-1])), name="fc").relu(name="act")
    g2.output("y", x)
    (r2,) = find_repeats(g2.live_nodes())
    assert r2.indices == [0, 1, 2]


def test_dot_collapses_repeated_blocks(tmp_path):
    g, _, _ = encoder(4)
    p = inspect.draw(g, tmp_path / "enc.dot")
    text = p.read_text()
    assert text.startswith('digraph "enc" {') and text.rstrip().endswith("}")
    assert text.count("{") == text.count("}")
    assert 'label="v.blk.[0-3] ×4"' in text
    assert '"v.blk.0.attn_q"' in text and '"v.blk.2.attn_q"' not in text  # one layer drawn
    assert 'label="6×16' in text  # shapes on edges
    assert "fillcolor=\"#f4cccc\"" in text  # mul_mat coloured as matmul
    full = draw_mod.to_dot(g, collapse=False)
    assert '"v.blk.3.attn_q"' in full
    try:
        import pydot
    except ImportError:
        return
    assert pydot.graph_from_dot_data(text)


@pytest.mark.skipif(not HAVE_DOT, reason="Graphviz `dot` not installed (apt-get install graphviz)")
def test_draw_svg_and_png(tmp_path):
    g, _, _ = encoder(2)
    svg = inspect.draw(g, tmp_path / "enc.svg")
    root = ET.parse(svg).getroot()
    assert root.tag.endswith("svg")
    assert "v.blk.[0-1] ×2" in "".join(root.itertext())
    png = inspect.draw(g, tmp_path / "enc.png", rankdir="LR")
    with Image.open(png) as im:
        im.verify()
        assert im.format == "PNG"


def test_draw_without_graphviz_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(draw_mod.shutil, "which", lambda name: None)
    with pytest.raises(inspect.GraphvizNotFound, match="apt-get install graphviz"):
        inspect.draw(tiny(), tmp_path / "t.svg")
    assert inspect.draw(tiny(), tmp_path / "t.dot").exists()  # DOT needs nothing
    with pytest.raises(ValueError, match="unknown format"):
        inspect.draw(tiny(), tmp_path / "t.jpeg")


# -- after compile ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compiled():
    g, w, inputs = encoder(2)
    run = graphdsl.compile(g, "cpu", n_threads=2, weights=w)
    run(inputs)
    return g, w, inputs, run


def test_lowered_report(compiled):
    g, _, _, run = compiled
    rep = inspect.lowered(run)
    assert rep.n_nodes == run.last_program.cgraph.n_nodes
    # "cpu" is ["ONEDNN", "CPU"] where oneDNN's backend is built; it takes no product this small (17 rows)
    assert rep.backends in (["CPU"], ["ONEDNN", "CPU"]) and rep.n_splits >= 1
    assert rep.op_counts["MUL_MAT"] >= 2 * 6
    assert rep.nodes_per_backend["CPU"] == rep.n_nodes
    assert sum(rep.compute_buffer_bytes.values()) > 0  # both host backends share one compute buffer
    assert sum(rep.weight_bytes.values()) == run.weight_bytes == sum(n.nbytes for n in g.weights.values())
    assert rep.placement["v.blk.1.attn_q"] == "CPU"
    owners = {n.owner for n in rep.nodes}
    assert "v.blk.0.attn_q.mm" in owners and "" not in owners
    text = str(rep)
    assert "split" in text and "MUL_MAT" in text and "compute buffer" in text
    with pytest.raises(ValueError, match="ggml executor"):
        inspect.lowered(graphdsl.compile(g, "reference"))


class _Spy:
    """Wraps a Runtime to record set_eval_callback calls."""

    def __init__(self, rt):
        self._rt, self.calls = rt, []

    def set_eval_callback(self, cb):
        self.calls.append(cb)
        self._rt.set_eval_callback(cb)

    def __getattr__(self, k):
        return getattr(self._rt, k)


def test_profile_times_every_node_and_removes_callback(compiled, tmp_path):
    _, _, inputs, run = compiled
    spy = _Spy(run.runtime)
    run.runtime = spy
    try:
        prof = inspect.profile(run, inputs, repeat=2)
    finally:
        run.runtime = spy._rt
    assert spy.calls[0] is not None and spy.calls[-1] is None
    assert len(prof.nodes) == run.last_program.cgraph.n_nodes
    assert all(n.seconds >= 0 and n.backend == "CPU" for n in prof.nodes)
    assert abs(sum(v[0] for v in prof.by_op().values()) - prof.total_s) < 1e-9
    blocks = prof.by_block()
    assert set(blocks) == {"v.blk.0", "v.blk.1", "v"}  # v.post_ln is outside the layers
    assert prof.by_op()["mul_mat"][2] == sum(
        flops_of(n) for n in run.graph.nodes if n.op == "mul_mat")
    text = str(prof)
    assert "mul_mat" in text and "v.blk.1" in text
    png = prof.chart(tmp_path / "p.png")
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 100
    prof.chart(tmp_path / "b.png", by="block")


def test_capture_equals_reference(compiled):
    g, w, inputs, run = compiled
    ref = graphdsl.compile(g, "reference", weights=w)
    got = inspect.capture(run, inputs, "v.blk.1.*")
    want = inspect.capture(ref, inputs, ["v.blk.1.*"])
    assert set(got) == set(want) == {n.name for n in g.match(["v.blk.1.*"])}
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_diff_finds_corrupted_weight(compiled):
    g, w, inputs, _ = compiled
    ref = graphdsl.compile(g, "reference", weights=w)
    bad = dict(w)
    bad["v.blk.1.attn_v.weight"] = w["v.blk.1.attn_v.weight"] * 1.05
    run = graphdsl.compile(g, "cpu", n_threads=2, weights=bad)
    rep = inspect.diff(run, ref, inputs)
    assert not rep.ok
    assert rep.first_bad.name == "v.blk.1.attn_v.mm"
    i = [r.name for r in rep.rows].index("v.blk.1.attn_v.mm")
    assert all(r.ok for r in rep.rows[:i])
    assert rep.first_bad.rel_l2 > 1e-2 and rep.first_bad.max_abs > 0
    assert "first node over the bound" in str(rep) and "<- first" in str(rep)
    good = inspect.diff(graphdsl.compile(g, "cpu", n_threads=2, weights=w), ref, inputs)
    assert good.ok and len(good.rows) == len(rep.rows)


def test_diff_against_named_intermediates(compiled):
    """The second source may be a hook that yields intermediates by node name (e.g. from HF)."""
    g, w, inputs, run = compiled
    ref = graphdsl.compile(g, "reference", weights=w)
    theirs = inspect.capture(ref, inputs, ["v.blk.0.layer_out", "v.blk.1.layer_out", "v.post_ln"])
    theirs["v.blk.1.layer_out"] = theirs["v.blk.1.layer_out"] + 1.0
    rep = inspect.diff(run, lambda inp: theirs, inputs, nodes=list(theirs), max_abs=1e-3)
    assert [r.name for r in rep.rows] == ["v.blk.0.layer_out", "v.blk.1.layer_out", "v.post_ln"]
    assert rep.first_bad.name == "v.blk.1.layer_out"
    assert rep.first_bad.max_abs == pytest.approx(1.0, rel=1e-4)


def test_diff_refuses_keys_and_globs_that_match_nothing(compiled):
    """A typo must not shrink the comparison to nothing and pass ('all 0 compared nodes')."""
    g, w, inputs, run = compiled
    theirs = inspect.capture(graphdsl.compile(g, "reference", weights=w), inputs, ["v.blk.0.layer_out"])
    with pytest.raises(ValueError, match=r"reference \(reference\) key 'v.blk.0.layer_outt' names no computed "
                                         r"node \(close: v.blk.0.layer_out"):
        inspect.diff(run, {"v.blk.0.layer_outt": theirs["v.blk.0.layer_out"]}, inputs)
    with pytest.raises(ValueError, match=r"nodes pattern 'v.blk.7.\*' matches no computed node"):
        inspect.diff(run, theirs, inputs, nodes=["v.blk.0.*", "v.blk.7.*"])
    with pytest.raises(ValueError, match="key 'x' names no computed node"):  # an input is not computed
        inspect.diff(run, {"x": inputs["x"]}, inputs)
    # the positive control: the right key compares exactly that node, labelled
    rep = inspect.diff(run, theirs, inputs, labels=("ggml", "my hook"))
    assert [r.name for r in rep.rows] == ["v.blk.0.layer_out"] and rep.ok
    assert rep.names == ("ggml", "my hook")
    assert "diff ggml vs my hook: all 1 compared nodes" in str(rep)
    assert "run: ggml; reference: my hook" in str(rep)


def test_diff_labels_executors_and_flags_layouts(compiled):
    g, w, inputs, run = compiled
    ref = graphdsl.compile(g, "reference", weights=w)
    rep = inspect.diff(run, ref, inputs, nodes="v.blk.1.*")
    assert f"run: {run.backend}; reference: reference" in rep.headline()
    theirs = inspect.capture(ref, inputs, ["v.blk.0.ffn_up", "v.blk.0.layer_out"])
    theirs["v.blk.0.ffn_up"] = theirs["v.blk.0.ffn_up"].T  # (32, 6) for a (6, 32) node: never reshaped
    theirs["v.blk.0.layer_out"] = theirs["v.blk.0.layer_out"][None]  # a batch of one is only an axis
    rep = inspect.diff(run, theirs, inputs)
    assert rep.first_bad.name == "v.blk.0.ffn_up" and "shape (6, 32) vs (32, 6)" in rep.first_bad.note
    assert rep.rows[-1].name == "v.blk.0.layer_out" and rep.rows[-1].ok


def _profile_of(node_ms, normal_ms, profiled_ms):
    nodes = [inspect.profiling.NodeTime(i, "MUL_MAT", f"n{i}", f"n{i}", "mul_mat", "CPU", t / 1e3)
             for i, t in enumerate(node_ms)]
    return inspect.Profile("g", nodes, normal_ms / 1e3, profiled_ms / 1e3, {}, 3)


def test_profile_headline_adds_up():
    """The issue's numbers: 5.2 ms of node time in a 45.9 ms call. The headline says where the rest
    went (outside the nodes) and what node by node cost, per node, in units that are not 0.000."""
    p = _profile_of([1.3] * 4, normal_ms=45.9, profiled_ms=46.5)
    assert p.headline() == (
        "profile of g: 4 ggml nodes, means of 3 call(s)\n"
        "node-by-node call 46.500 ms = 5.200 ms in the nodes (sum of node times, 11%) "
        "+ 41.300 ms outside them (inputs, outputs, allocation, Python)\n"
        "normal call 45.900 ms; computing node by node cost 600.0 µs in all, 150.0 µs per node")
    assert p.outside_s + p.total_s == pytest.approx(p.profiled_wall_s)
    noisy = _profile_of([1.3] * 4, normal_ms=45.9, profiled_ms=44.0)  # a busy machine: no negative "cost"
    assert noisy.headline().endswith("no measurable node-by-node cost: the normal call was 1.900 ms slower "
                                     "(timing noise, e.g. a busy machine)")


def test_profile_measured_numbers_are_consistent(compiled):
    _, _, inputs, run = compiled
    p = inspect.profile(run, inputs, repeat=2)
    assert p.outside_s >= 0  # every node's time lies inside the call that contains it
    assert p.total_s + p.outside_s == pytest.approx(p.profiled_wall_s)
    assert p.overhead_s == pytest.approx(p.profiled_wall_s - p.wall_s)
    assert f"node-by-node call {inspect.profiling._t(p.profiled_wall_s)} = " in p.headline()
