"""`graphdsl demo` end to end on the tiny spec (the default spec has the same structure, wider):
the library's run (graphdsl.demo.run_demo) and the command's report (graphdsl.cli.demo)."""
import io

import numpy as np
import pytest

import graphdsl
from graphdsl import demo, inspect
from graphdsl.cli.demo import report_demo


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    buf = io.StringIO()
    res, drawing = report_demo("auto", spec="tiny", root=root, n_threads=2, out=buf)
    return res, buf.getvalue(), root, drawing


def test_demo_runs_the_mixed_batch(result):
    res, text, _, drawing = result
    assert [s.kind for s in res.spans] == ["text", "image", "text", "audio", "text"]
    spec = demo.SPECS["tiny"]
    assert res.spans[1].n_tokens == (spec.clip.image_size // spec.clip.patch_size) ** 2  # class token dropped
    assert res.spans[3].n_tokens == spec.whisper.n_ctx // spec.whisper.stack_factor
    assert res.embd_shape == (sum(s.n_tokens for s in res.spans), spec.n_embd)
    for section in ("graph mixed_batch:", "v.blk.[0-1]", "lowered graph mixed_batch", "stages:",
                    "compile + first run", "output: embd float32[409, 48]", "graph drawing:"):
        assert section in text, section
    assert drawing.exists() and drawing.stat().st_size > 1000
    assert list(res.timings) == ["build model files", "load GGUF", "preprocess + tokenize", "build graph",
                                 "compile + first run", "run (steady)", "draw graph"]


def test_library_run_prints_nothing(result, capsys):
    """run_demo is the library's part: no report, no drawing; the cached files are found again."""
    _, _, root, _ = result
    stages = []
    res = demo.run_demo("cpu", spec="tiny", root=root, n_threads=2, on_stage=stages.append)
    assert capsys.readouterr() == ("", "")
    assert stages == list(res.timings) and stages[0] == "model files (cached)" and not res.built
    assert res.embd_dtype == "float32" and res.executor(res.feeds)["embd"].shape == res.embd_shape


def test_demo_files_are_cached_and_deterministic(result):
    res, _, root, _ = result
    mmproj, text, built = demo.build_files("tiny", root)
    assert not built and (mmproj, text) == res.files
    other = root / "again"
    mmproj2, text2, built2 = demo.build_files("tiny", other)
    assert built2 and mmproj2.read_bytes() == mmproj.read_bytes() and text2.read_bytes() == text.read_bytes()


def test_demo_graph_matches_reference(result):
    """What the demo ran on ggml equals the NumPy reference on the same loaded weights."""
    res, _, _, _ = result
    m = demo.load_models(*res.files)
    from graphdsl.embed import build_mixed
    g, feeds, _ = build_mixed(demo.demo_items(m), m.text.block, m.media)
    ref = graphdsl.compile(g, "reference", weights=m.weights_for(g))
    rep = inspect.diff(res.executor, ref, feeds, nodes=["embd", "*.layer_out"], rel_l2=1e-4)
    assert rep.ok, rep.headline()
    assert len(rep.rows) == 1 + 2 + 2  # embd, two vision and two audio layers
    np.testing.assert_array_equal(res.executor(feeds)["embd"].shape, res.embd_shape)


def test_demo_loads_its_files_like_any_gguf(result):
    """The demo reads its files through models.from_gguf / text.from_gguf, as `graphdsl embed` does,
    and its mixed batch equals what embed_files gives for the same prompt and media."""
    res, _, _, _ = result
    from graphdsl.embed import build_mixed, embed_files
    from graphdsl.models import Mmproj, clip, whisper_enc
    m = demo.load_models(*res.files)
    assert isinstance(m.mmproj, Mmproj) and m.mmproj.image_config().mode == "clip"
    assert isinstance(m.media["image"], clip.ClipVision) and isinstance(m.media["audio"], whisper_enc.WhisperEncoder)
    assert m.media["image"].n_out == m.media["audio"].n_out == m.text.block.n_out == demo.SPECS["tiny"].n_embd
    out = embed_files(*res.files, images=[demo.DATA / "demo_image.png"], audios=[demo.DATA / "speech_16k.wav"],
                      prompt=demo.PROMPT, backend="cpu", n_threads=2)
    assert [(s.kind, s.start, s.n_tokens) for s in out.spans] == [(s.kind, s.start, s.n_tokens) for s in res.spans]
    feeds = build_mixed(demo.demo_items(m), m.text.block, m.media)[1]
    np.testing.assert_allclose(out.embd, res.executor(feeds)["embd"], rtol=0, atol=1e-5)
