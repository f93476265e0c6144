"""The `graphdsl` command: --help on every command, one real run of each, one-line errors."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from graphdsl import cli, demo

COMMANDS = ["devices", "info", "inspect", "embed", "preprocess", "convert", "bench", "demo"]
DATA = demo.DATA


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The tiny demo model, built once; GRAPHDSL_CACHE points at it for `inspect`/`bench` of "demo"."""
    root = tmp_path_factory.mktemp("cache")
    old = os.environ.get("GRAPHDSL_CACHE")
    os.environ["GRAPHDSL_CACHE"] = str(root)
    mmproj, text, _ = demo.build_files("tiny")
    yield mmproj, text
    if old is None:
        os.environ.pop("GRAPHDSL_CACHE", None)
    else:
        os.environ["GRAPHDSL_CACHE"] = old


def run(argv, capsys):
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("cmd", [None, *COMMANDS])
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(([cmd] if cmd else []) + ["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: graphdsl") and "options:" in out and len(out) > 150


def test_console_entry_point():
    r = subprocess.run([sys.executable, "-m", "graphdsl.cli", "devices"], capture_output=True, text=True,
                       timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert "CPU" in r.stdout and 'backend="auto" runs on' in r.stdout


def test_no_command_prints_help(capsys):
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_info(files, capsys):
    rc, out, _ = run(["info", str(files[0])], capsys)
    assert rc == 0 and "model: mmproj: vision 32px/8" in out and "projector 'voxtral'" in out


def test_inspect_demo(files, tmp_path, capsys):
    dot = tmp_path / "g.dot"
    chart = tmp_path / "p.png"
    rc, out, _ = run(["inspect", "--spec", "tiny", "--threads", "2", "--draw", str(dot), "--lowered",
                      "--profile", "--repeat", "1", "--chart", str(chart)], capsys)
    assert rc == 0
    assert "v.blk.[0-1]" in out and "a.blk.[0-1]" in out  # summary grouped by repeated blocks
    assert "lowered graph mixed_batch" in out and "profile mixed_batch by op" in out
    assert 'label="v.blk.[0-1] ×2"' in dot.read_text()
    with Image.open(chart) as im:
        assert im.format == "PNG"


def test_inspect_mmproj_capture_and_diff(files, tmp_path, capsys):
    npz = tmp_path / "c.npz"
    rc, out, _ = run(["inspect", str(files[0]), "--modality", "image", "--threads", "2", "--print",
                      "--capture", "v.blk.1.layer_out", "--capture-out", str(npz), "--diff"], capsys)
    assert rc == 0
    assert "%v.blk.0.attn_q : f32[17,32] = add(" in out  # the typed lines
    assert "%v.blk.1.layer_out: float32[17, 32]" in out
    assert np.load(npz)["v.blk.1.layer_out"].shape == (17, 32)
    assert "diff cpu vs reference: all" in out


def test_embed(files, tmp_path, capsys):
    out_npy = tmp_path / "e.npy"
    rc, out, _ = run(["embed", str(files[0]), "--text-model", str(files[1]), "--backend", "cpu", "--threads", "2",
                      "--prompt", "USER: <image> what is this? <audio> ASSISTANT:",
                      "--image", str(DATA / "demo_image.png"), "--audio", str(DATA / "speech_16k.wav"),
                      "-o", str(out_npy)], capsys)
    assert rc == 0, out
    e = np.load(out_npy)
    assert e.shape == (3 + 16 + 4 + 375 + 2, 48)
    assert "chunk 1: image  rows 3..18 (16)" in out and "chunk 3: audio" in out
    rc, _, err = run(["embed", str(files[0]), "--text-model", str(files[1]), "--prompt", "<image> <image>",
                      "--image", str(DATA / "demo_image.png")], capsys)
    assert rc == 1 and "2 <image> marker(s) but 1 --image" in err


def test_preprocess(files, tmp_path, capsys):
    rc, out, _ = run(["preprocess", "image", str(DATA / "demo_image.png"), "--mmproj", str(files[0]),
                      "-o", str(tmp_path / "px.npy")], capsys)
    assert rc == 0 and np.load(tmp_path / "px.npy").shape == (3, 32, 32)
    rc, out, _ = run(["preprocess", "image", str(DATA / "demo_image.png"), str(DATA / "demo_image.png"),
                      "--size", "48", "-o", str(tmp_path / "px2.npy")], capsys)
    assert rc == 0 and np.load(tmp_path / "px2.npy").shape == (2, 3, 48, 48)
    rc, out, _ = run(["preprocess", "audio", str(DATA / "speech_16k.wav"), "-o", str(tmp_path / "mel.npy")], capsys)
    assert rc == 0 and "valid frames [309]" in out and np.load(tmp_path / "mel.npy").shape == (1, 80, 3000)
    rc, out, _ = run(["preprocess", "text", "what is in this picture?", "--text-model", str(files[1])], capsys)
    assert rc == 0 and out.startswith("7 tokens: [1, ")


def test_bench(files, capsys):
    rc, out, _ = run(["bench", "--spec", "tiny", "--repeat", "2", "--warmup", "0", "--threads", "2"], capsys)
    assert rc == 0 and "median" in out and "GFLOP/s" in out


def test_demo_command(tmp_path, capsys):
    rc, out, _ = run(["demo", "--spec", "tiny", "--cache", str(tmp_path), "--no-draw", "--threads", "2"], capsys)
    assert rc == 0 and "output: embd float32[409, 48]" in out


def test_convert_real_checkpoint(tmp_path, capsys):
    """HF folder -> GGUF -> info -> inspect, through the command only."""
    tf = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    cfg = tf.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2,
                              image_size=16, patch_size=8)
    tf.CLIPVisionModel(cfg).save_pretrained(tmp_path / "hf")
    out = tmp_path / "clip.gguf"
    rc, text, err = run(["convert", str(tmp_path / "hf"), "-o", str(out), "--outtype", "f16"], capsys)
    assert rc == 0, err
    assert text.startswith(f"wrote {out}")
    rc, text, _ = run(["info", str(out)], capsys)
    assert rc == 0 and "projector 'none'" in text
    rc, text, _ = run(["inspect", str(out), "--lowered", "--threads", "2"], capsys)
    assert rc == 0 and "lowered graph clip" in text


def test_errors_are_one_line(tmp_path, capsys):
    rc, _, err = run(["info", str(tmp_path / "missing.gguf")], capsys)
    assert rc == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("graphdsl info: error: ")
    (tmp_path / "junk.gguf").write_bytes(b"junk" * 8)
    rc, _, err = run(["inspect", str(tmp_path / "junk.gguf")], capsys)
    assert rc == 1 and "not a GGUF file" in err and err.count("\n") == 1
    with pytest.raises(ValueError):
        cli.main(["--debug", "info", str(tmp_path / "junk.gguf")])


def test_missing_module_says_not_available(monkeypatch, capsys):
    real = cli.importlib.import_module

    def fake(name, *a):
        if name.startswith("graphdsl.convert"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real(name, *a)

    monkeypatch.setattr(cli.importlib, "import_module", fake)
    rc, _, err = run(["info", "x.gguf"], capsys)
    assert rc == 1 and "not available yet" in err
