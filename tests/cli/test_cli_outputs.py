"""The command's output files (issue 12, items 14, 15, 17): never over an input, never over an
existing file without --force, written exactly where named, and reported by their real name.

Every case runs the `graphdsl` entry point in a subprocess, as a user would.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from graphdsl import demo

DATA = demo.DATA


def gd(*argv, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "graphdsl.cli", *map(str, argv)], capture_output=True, text=True,
                          timeout=300, check=False, cwd=cwd, env={**os.environ, "GRAPHDSL_CACHE": str(cwd)})


def refused(r, *words) -> bool:
    """A usage error (status 2) with one error line naming `words`, and no traceback."""
    last = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""
    return r.returncode == 2 and "Traceback" not in r.stderr and "error:" in last and all(w in last for w in words)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    old = os.environ.get("GRAPHDSL_CACHE")
    os.environ["GRAPHDSL_CACHE"] = str(root)
    try:
        mmproj, text, _ = demo.build_files("tiny")
    finally:
        os.environ.pop("GRAPHDSL_CACHE") if old is None else os.environ.__setitem__("GRAPHDSL_CACHE", old)
    return mmproj, text


@pytest.fixture
def image(tmp_path):
    """A copy of the demo image: refusals are tested against a file nothing else needs."""
    return shutil.copy(DATA / "demo_image.png", tmp_path / "img.png")


# -- 14: never over an input -------------------------------------------------------------------------
def test_convert_refuses_to_write_over_its_checkpoint(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "clip_vision_model"}))
    (hf / "model.safetensors").write_bytes(b"precious weights")
    for out in (hf / "model.safetensors", hf / "config.json", tmp_path / "hf" / "." / "model.safetensors"):
        for force in ([], ["-f"], ["--force"]):
            r = gd("convert", hf, "-o", out, *force, cwd=tmp_path)
            assert refused(r, "is an input", "refusing"), r.stderr
    (tmp_path / "link.gguf").symlink_to(hf / "model.safetensors")
    assert refused(gd("convert", hf, "-o", tmp_path / "link.gguf", "-f", cwd=tmp_path), "is an input")
    assert refused(gd("convert", hf, "-o", hf, cwd=tmp_path), "folder")
    assert (hf / "model.safetensors").read_bytes() == b"precious weights"
    assert sorted(p.name for p in hf.iterdir()) == ["config.json", "model.safetensors"]


def test_convert_replaces_an_output_only_with_force(tmp_path):
    """A real conversion into the model's own folder; again without -f: refused, file untouched;
    with -f: replaced (another outtype, so the bytes differ)."""
    tf = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    cfg = tf.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=1,
                              image_size=16, patch_size=8)
    tf.CLIPVisionModel(cfg).save_pretrained(tmp_path / "hf")
    out = tmp_path / "hf" / "mmproj.gguf"
    r = gd("convert", tmp_path / "hf", "-o", out, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith(f"wrote {out}: "), r.stderr
    first = out.read_bytes()
    r = gd("convert", tmp_path / "hf", "-o", out, "--outtype", "f16", cwd=tmp_path)
    assert refused(r, "exists", "--force") and out.read_bytes() == first
    r = gd("convert", tmp_path / "hf", "-o", out, "--outtype", "f16", "-f", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() != first and len(out.read_bytes()) < len(first)
    assert not [p for p in (tmp_path / "hf").iterdir() if ".tmp" in p.name]


def test_embed_and_preprocess_refuse_their_inputs(files, image, tmp_path):
    before = image.read_bytes()
    r = gd("embed", "--mmproj", files[0], "--image", image, "--backend", "cpu", "-o", image, "-f", cwd=tmp_path)
    assert refused(r, "is an input")
    r = gd("embed", "--mmproj", files[0], "--image", DATA / "demo_image.png", "-o", files[0], "-f", cwd=tmp_path)
    assert refused(r, "is an input")
    r = gd("preprocess", "image", image, "-o", image, "-f", cwd=tmp_path)
    assert refused(r, "is an input")
    assert image.read_bytes() == before
    # text inputs are words, not files: a file that happens to share a word's name is just an output
    (tmp_path / "hello").write_bytes(b"")
    r = gd("preprocess", "text", "hello", "--text-model", files[1], "-o", "hello", "-f", cwd=tmp_path)
    assert r.returncode == 0, r.stderr


def test_inspect_refuses_its_inputs_and_clashing_outputs(files, tmp_path):
    mm = files[0]
    before = mm.read_bytes()
    assert refused(gd("inspect", mm, "--capture", "v.*", "--capture-out", mm, "-f", cwd=tmp_path), "is an input")
    assert refused(gd("inspect", mm, "--draw", mm, "-f", cwd=tmp_path), "is an input")
    assert refused(gd("inspect", mm, "--draw", "a.png", "--profile", "--chart", "a.png", cwd=tmp_path),
                   "--draw and --chart name the same file")
    assert refused(gd("inspect", mm, "--capture-out", "c.npz", cwd=tmp_path), "--capture-out needs --capture")
    assert refused(gd("inspect", mm, "--chart", "c.png", cwd=tmp_path), "--chart needs --profile")
    assert mm.read_bytes() == before and not (tmp_path / "a.png").exists()


# -- 14 + 17: existing outputs need --force; the name given is the name written --------------------
def test_preprocess_writes_exactly_the_name_given(image, tmp_path):
    r = gd("preprocess", "image", image, "-o", "px", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "wrote px: float32[3, 224, 224]" in r.stdout  # no --size: 224, the default
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.png", "px"]  # not "px.npy"
    first = (tmp_path / "px").read_bytes()
    assert np.load(tmp_path / "px").shape == (3, 224, 224)
    r = gd("preprocess", "image", image, "--size", "32", "-o", "px", cwd=tmp_path)
    assert refused(r, "-o px exists", "--force") and (tmp_path / "px").read_bytes() == first
    r = gd("preprocess", "image", image, "--size", "32", "-o", "px", "--force", cwd=tmp_path)
    assert r.returncode == 0 and np.load(tmp_path / "px").shape == (3, 32, 32)


def test_embed_output_name_and_force(files, tmp_path):
    args = ["embed", "--mmproj", files[0], "--image", DATA / "demo_image.png", "--backend", "cpu", "--threads", "2"]
    r = gd(*args, "-o", "e", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "wrote e: float32[16, 48]" in r.stdout and not (tmp_path / "e.npy").exists()
    (tmp_path / "e").write_bytes(b"keep me")
    assert refused(gd(*args, "-o", "e", cwd=tmp_path), "exists") and (tmp_path / "e").read_bytes() == b"keep me"
    r = gd(*args, "-o", "e", "-f", cwd=tmp_path)
    assert r.returncode == 0 and np.load(tmp_path / "e").shape == (16, 48)


def test_inspect_capture_out_name_and_force(files, tmp_path):
    args = ["inspect", files[0], "--modality", "image", "--threads", "2", "--capture", "v.blk.1.layer_out"]
    r = gd(*args, "--capture-out", "caps", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "wrote caps: 1 arrays" in r.stdout and not (tmp_path / "caps.npz").exists()
    with np.load(tmp_path / "caps") as z:
        assert z["v.blk.1.layer_out"].shape == (1, 17, 32)  # embed runs an image as a batch of one
    assert refused(gd(*args, "--capture-out", "caps", cwd=tmp_path), "exists")
    assert gd(*args, "--capture-out", "caps", "-f", cwd=tmp_path).returncode == 0


def test_a_missing_output_folder_is_refused_before_the_work(image, tmp_path):
    r = gd("preprocess", "image", image, "-o", tmp_path / "no" / "px.npy", cwd=tmp_path)
    assert refused(r, "does not exist")


# -- 15: a failed write keeps the old file (in-process: the failure is injected) ---------------------
def test_failed_outputs_keep_the_old_files(files, image, tmp_path, monkeypatch, capsys):
    """np.save / GGUFWriter die halfway through (disk full) under -f: the command fails with one
    line, the previous output is byte-identical, and no temporary file is left."""
    import errno

    import gguf

    from graphdsl import cli

    def disk_full(fh, *a, **kw):
        fh.write(b"\x93NUMPY partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    out = tmp_path / "px.npy"
    out.write_bytes(b"previous output")
    monkeypatch.setattr(np, "save", disk_full)
    assert cli.main(["preprocess", "image", str(image), "-o", str(out), "-f"]) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert out.read_bytes() == b"previous output"
    monkeypatch.undo()

    mm = tmp_path / "mm.gguf"
    shutil.copy(files[0], mm)
    before = mm.read_bytes()

    def half(self, *a, **kw):
        self.fout[0].write(b"\0" * 4096)
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", half)
    with pytest.raises(OSError, match="No space"):
        demo.build_files("tiny", tmp_path / "cache")  # the demo's cache: no half file to trust later
    from graphdsl.convert.writer import write_gguf
    with pytest.raises(OSError, match="No space"):
        write_gguf(str(mm), "x", [], {"w.weight": (np.zeros(8, np.float32), "f32")})
    assert mm.read_bytes() == before
    assert [p.name for p in tmp_path.rglob("*") if ".tmp" in p.name] == []
    assert not list((tmp_path / "cache").rglob("*.gguf"))
