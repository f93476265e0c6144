"""The `graphdsl` command: --help on every command, one real run of each, one-line errors."""
import importlib
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from graphdsl import cli, demo

COMMANDS = ["devices", "info", "inspect", "embed", "preprocess", "convert", "bench", "demo", "rpc-server"]
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


def test_console_entry_point(tmp_path):
    # cwd outside the checkout: with a non-editable install the source tree would shadow the package
    r = subprocess.run([sys.executable, "-m", "graphdsl.cli", "devices"], capture_output=True, text=True,
                       timeout=120, check=False, cwd=tmp_path)
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
    assert "%v.blk.0.attn_q : f32[1,17,32] = add(" in out  # the typed lines (embed runs an image as a batch of one)
    assert "%v.blk.1.layer_out: float32[1, 17, 32]" in out
    assert np.load(npz)["v.blk.1.layer_out"].shape == (1, 17, 32)
    assert "diff cpu vs reference: all" in out


def test_embed(files, tmp_path, capsys):
    out_npy = tmp_path / "e.npy"
    rc, out, err = run(["embed", "--mmproj", str(files[0]), "--text-model", str(files[1]), "--backend", "cpu",
                        "--threads", "2", "--prompt", "USER: <image> what is this? <audio> ASSISTANT:",
                        "--image", str(DATA / "demo_image.png"), "--audio", str(DATA / "speech_16k.wav"),
                        "-o", str(out_npy)], capsys)
    assert rc == 0, err
    e = np.load(out_npy)
    assert e.dtype == np.float32 and e.shape == (3 + 16 + 4 + 375 + 2, 48)
    assert "embd f32[400, 48] on CPU" in out or "embd f32[400, 48] on ONEDNN+CPU" in out  # oneDNN's products where built
    rows = [line.split() for line in out.splitlines() if line.startswith("  ") and line.split()[0].isdigit()]
    assert rows == [["0", "text", "0", "3"], ["1", "image", "3", "16"], ["2", "text", "19", "4"],
                    ["3", "audio", "23", "375"], ["4", "text", "398", "2"]]
    # the same sequence given as ids: the same numbers
    rc, out, err = run(["embed", "--mmproj", str(files[0]), "--text-model", str(files[1]), "--backend", "cpu",
                        "--threads", "2", "--tokens", "1,3,43,<image>,5,6,8,42,<audio>,4,43",
                        "--image", str(DATA / "demo_image.png"), "--audio", str(DATA / "speech_16k.wav"),
                        "-o", str(tmp_path / "t.npy")], capsys)
    assert rc == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "t.npy"), e)
    rc, _, err = run(["embed", "--mmproj", str(files[0]), "--text-model", str(files[1]), "--prompt",
                      "<image> <image>", "--image", str(DATA / "demo_image.png"), "-o", str(tmp_path / "x.npy")],
                     capsys)
    assert rc == 1 and "2 <image> marker(s) but 1 image input(s)" in err and err.count("\n") == 1
    assert not (tmp_path / "x.npy").exists()


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
    """HF folder(s) -> GGUF -> info -> inspect / embed, through the command only."""
    tf = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    from transformers.models.whisper.modeling_whisper import WhisperEncoder
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
    # a vision and an audio folder -> one mmproj, whose two encoders run as one batch
    WhisperEncoder(tf.WhisperConfig(d_model=32, encoder_attention_heads=2, encoder_layers=1, encoder_ffn_dim=64)
                   ).save_pretrained(tmp_path / "hf_audio")
    both = tmp_path / "both.gguf"
    rc, text, err = run(["convert", str(tmp_path / "hf"), str(tmp_path / "hf_audio"), "-o", str(both)], capsys)
    assert rc == 0, err
    rc, text, _ = run(["info", str(both)], capsys)
    assert rc == 0 and "graphdsl.models: clip.ClipVision + whisper_enc.WhisperEncoder" in text
    rc, text, err = run(["embed", "--mmproj", str(both), "--backend", "cpu", "--threads", "2",
                         "--image", str(DATA / "demo_image.png"), "--audio", str(DATA / "speech_16k.wav"),
                         "-o", str(tmp_path / "e.npy")], capsys)
    assert rc == 0, err
    assert np.load(tmp_path / "e.npy").shape == (5 + 1500, 32)  # CLIP keeps its class token without a projector


def test_rpc_server_without_rpc(capsys):
    """The portable wheel has no RPC backend: one line from the extension, status 1 (never blocks)."""
    from graphdsl import _ggml
    if _ggml.has_backend("RPC"):
        pytest.skip("this libggml has RPC: rpc-server would serve (blocks)")
    rc, out, err = run(["rpc-server", "--port", "50052", "--threads", "1"], capsys)
    assert rc == 1 and out == ""
    assert err == "graphdsl rpc-server: error: this libggml has no RPC backend; rebuild it with " \
                  "scripts/build_libggml.sh rpc\n"
    with pytest.raises(SystemExit) as e:  # a usage error, refused by argparse
        cli.main(["rpc-server", "--port", "70000"])
    assert e.value.code == 2 and "--port: 70000 is not a TCP port (1..65535)" in capsys.readouterr().err


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
    real = importlib.import_module

    def fake(name, *a):
        if name.startswith("graphdsl.convert"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real(name, *a)

    monkeypatch.setattr(importlib, "import_module", fake)
    rc, _, err = run(["info", "x.gguf"], capsys)
    assert rc == 1 and "not available yet" in err
