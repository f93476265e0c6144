"""Gaps a new user hits (issue 19 part 3): text-only `embed`, the spans file, progress on a
terminal only, and a `make demo` that installs the runtime alone."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader
from gguf.quants import dequantize

import cli_run
from cli_run import stderr_on_tty

from graphdsl import cli, demo

ROOT = Path(__file__).resolve().parents[2]
DATA = demo.DATA


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    mmproj, text, _ = demo.build_files("tiny", tmp_path_factory.mktemp("cache"))
    return mmproj, text


def token_table(path) -> np.ndarray:
    """token_embd read with the gguf package alone (not graphdsl's loader): the reference."""
    t = next(t for t in GGUFReader(path).tensors if t.name == "token_embd.weight")
    return dequantize(t.data, t.tensor_type).reshape(-1, int(t.shape[0]))


def run(argv, capsys):
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_text_alone_needs_no_mmproj(files, tmp_path, capsys):
    out = tmp_path / "ids.npy"
    rc, text, err = run(["embed", "--text-model", files[1], "--tokens", "2,7,1", "--backend", "cpu",
                         "--threads", "2", "-o", out], capsys)
    assert rc == 0, err
    table = token_table(files[1])
    got = np.load(out)
    np.testing.assert_array_equal(got, table[[2, 7, 1]])  # get_rows is a copy: exact
    assert not np.array_equal(got, table[[2, 7, 2]])  # negative control: another id, other rows
    spans = json.loads((tmp_path / "ids.spans.json").read_text())
    assert spans["spans"] == [{"index": 0, "kind": "text", "start": 0, "n_tokens": 3}]
    # a prompt too, tokenized by the file's own vocabulary
    rc, _, err = run(["embed", "--text-model", files[1], "--prompt", "what is this", "--backend", "cpu",
                      "-o", tmp_path / "p.npy"], capsys)
    assert rc == 0, err and np.load(tmp_path / "p.npy").shape[1] == table.shape[1]


def test_text_alone_refusals(files, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:  # neither model: a usage error before any work
        cli.main(["embed", "--tokens", "1,2", "-o", str(tmp_path / "x.npy")])
    assert e.value.code == 2 and "--mmproj" in capsys.readouterr().err
    rc, _, err = run(["embed", "--text-model", files[1], "--tokens", "1,<image>", "--image",
                      DATA / "demo_image.png", "-o", tmp_path / "y.npy"], capsys)
    assert rc == 1 and "no mmproj" in err and not (tmp_path / "y.npy").exists()


def test_spans_file_next_to_the_embeddings(files, tmp_path, capsys):
    out = tmp_path / "e.npy"
    argv = ["embed", "--mmproj", files[0], "--text-model", files[1], "--backend", "cpu", "--threads", "2",
            "--tokens", "1,3,<image>,5", "--image", DATA / "demo_image.png", "-o", out]
    rc, text, err = run(argv, capsys)
    assert rc == 0, err
    doc = json.loads((tmp_path / "e.spans.json").read_text())
    assert doc["embeddings"] == "e.npy" and doc["shape"] == list(np.load(out).shape)
    assert [(s["kind"], s["start"], s["n_tokens"]) for s in doc["spans"]] == [("text", 0, 2), ("image", 2, 16),
                                                                             ("text", 18, 1)]
    # an existing spans file is an output like -o: replaced only with --force, an input never
    (tmp_path / "e.npy").unlink()
    with pytest.raises(SystemExit) as e:
        cli.main([str(a) for a in argv])
    assert e.value.code == 2 and "--spans" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main([str(a) for a in argv] + ["--spans", str(files[0]), "-f"])
    assert e.value.code == 2 and "is an input" in capsys.readouterr().err


def test_spans_write_is_atomic(files, tmp_path, capsys, monkeypatch):
    spans = tmp_path / "s.json"
    spans.write_text("old")

    def broken(*a, **kw):
        raise OSError("disk full")
    monkeypatch.setattr(json, "dump", broken)
    rc, _, err = run(["embed", "--text-model", files[1], "--tokens", "1,2", "--backend", "cpu", "-o",
                      tmp_path / "e.npy", "--spans", spans, "-f"], capsys)
    assert rc == 1 and "disk full" in err
    assert spans.read_text() == "old" and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _run_on(argv, tty: bool, cwd) -> str:
    """stderr of `graphdsl ARGV` in a subprocess, stderr on a pseudo-terminal or a pipe."""
    env = {**os.environ, "COLUMNS": "100"}
    if tty:
        return stderr_on_tty([sys.executable, "-m", "graphdsl.cli", *argv], cwd=cwd, env=env)
    return cli_run.graphdsl(*argv, cwd=cwd, env=env).stderr


def test_progress_on_a_terminal_quiet_when_piped(files, tmp_path):
    pytest.importorskip("tqdm")
    argv = ["embed", "--mmproj", files[0], "--text-model", files[1], "--backend", "cpu", "--threads", "2",
            "--tokens", "1,<audio>", "--audio", DATA / "speech_16k.wav", "-f", "-o", tmp_path / "a.npy"]
    on_tty = _run_on(argv, True, tmp_path)
    assert "embed: run" in on_tty and "3/3" in on_tty  # load, the audio file, the run
    assert _run_on(argv, False, tmp_path) == ""


def test_convert_progress_on_a_terminal(tmp_path):
    tf = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    pytest.importorskip("tqdm")
    cfg = tf.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=1,
                              image_size=16, patch_size=8)
    tf.CLIPVisionModel(cfg).save_pretrained(tmp_path / "hf")
    argv = ["convert", tmp_path / "hf", "-o", tmp_path / "c.gguf", "-f"]
    on_tty = _run_on(argv, True, tmp_path)
    assert "convert: encode" in on_tty and "Writing" in on_tty
    piped = _run_on(argv, False, tmp_path)
    assert "encode" not in piped and "Writing" not in piped  # only the one "converting ..." line


def test_make_demo_installs_the_runtime_only(tmp_path):
    def dry(target):
        r = subprocess.run(["make", "-n", target, f"VENV={tmp_path / 'v'}"], cwd=ROOT, capture_output=True,
                           text=True, timeout=60, check=True)
        return r.stdout
    demo_cmds, test_cmds = dry("demo"), dry("test")
    # `-e .` with no extras (then, on its line, only the oneDNN build switch)
    assert re.search(r"pip install -q -e \.( -C cmake\.define\.GRAPHDSL_ONEDNN=\w+)?\n", demo_cmds)
    assert "[test]" not in demo_cmds and "torch" not in demo_cmds
    assert "build_libggml.sh" in demo_cmds and "graphdsl demo" in demo_cmds  # the same fast libggml
    assert 'pip install -q -e ".[test]"' in test_cmds and "build_libggml.sh" in test_cmds  # tests keep theirs


@pytest.mark.parametrize("cmd", ["view", "embed-dataset"])
def test_new_commands_have_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([cmd, "--help"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith(f"usage: graphdsl {cmd}")
