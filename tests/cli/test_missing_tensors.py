"""A file missing one tensor, for every registered architecture: `graphdsl info` and `graphdsl embed`
name the file and the tensor, never a bare ``KeyError: 'mm.model.fc.weight'`` (issue 28).

Each arch's example config is written as a complete file (test_registry's writer), then every
tensor is dropped in turn (of the repeated blocks, block 0's only). All of them go through
``graphdsl.cli.main`` in one child process (a hang or crash is a failed test, not a dead runner),
and each arch's last required tensor and the issue's three also go through
``python -m graphdsl.cli`` as the user types it. Dropping a tensor can leave a valid file of
another layout (a projector without its bias, a LLaVA file without image_newline is plain CLIP):
then embed runs and the loaded model must not use the tensor. Dropping a tensor whose presence
selects the layout (the class token) can also surface as another tensor's shape disagreeing with
the metadata; that message too must start with the file. The complete files embed (negative control).
"""
from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from mtmd_util import write_text_gguf
from test_hostile_files_gguf import make, text_spec
from test_registry import CANONICAL, _file

import graphdsl
from graphdsl.convert.writer import write_gguf
from graphdsl.gguf_io import MMPROJ_ARCH, read_gguf
from graphdsl.models import ARCHS, from_gguf, text
from graphdsl.models.text import GGUF_ARCH

DATA = Path(graphdsl.__file__).parent / "data"
MEDIA = {"image": ["--image", str(DATA / "demo_image.png")], "audio": ["--audio", str(DATA / "speech_16k.wav")]}
# the issue's bare KeyErrors: idefics3.py:99, siglip.py:157, whisper_enc.py:164
ISSUE = {"idefics3": "mm.model.fc.weight", "siglip": "mm.input_projection.weight",
         "whisper_enc": "a.position_embd.weight"}
LAYOUT = ("shape disagrees with the metadata", "mis-shaped [")  # another tensor's shape, named with the file


def _embed_argv(arch, path, out):
    if arch.modality == "text":
        return ["embed", "--text-model", path, "--tokens", "1,2,3", "-o", out, "--force", "--backend", "cpu"]
    extra = ["--cross-output", out + ".npz"] if arch.output == "cross" else []
    if arch.name == "minicpmv":  # its slices are separated by marker tokens of the text model's vocabulary
        vocab = out + ".text.gguf"
        write_text_gguf(vocab, _config(arch).n_mm_embd)
        extra = ["--text-model", vocab]
    return ["embed", "--mmproj", path, *MEDIA[arch.modality], "-o", out, *extra, "--force", "--backend", "cpu"]


LATER_BLOCK = re.compile(r"\bblk\.[1-9]\d*\.")


def _config(arch):
    """The arch's first example config; Whisper's with the 30 s window real audio fills."""
    cfg = CANONICAL[arch.name][0]
    return dataclasses.replace(cfg, n_ctx=1500) if arch.name == "whisper_enc" else cfg


def _write_dropped(tmp_path, arch):
    """(complete file, [(dropped tensor, file without it)]) for one arch."""
    if arch.modality == "text":
        full = make(str(tmp_path / "text.gguf"), text_spec())
        write, kind = (lambda p, t: write_gguf(p, GGUF_ARCH, _text_kv(full), t)), "text"
    else:
        full = str(_file(tmp_path, arch, _config(arch)))
        kv = [("general.name", arch.name), *arch.config_to_gguf(_config(arch))]
        write, kind = (lambda p, t: write_gguf(p, MMPROJ_ARCH, kv, t)), "mmproj"
    f = read_gguf(full)
    tensors = {n: (np.array(t.array), t.dtype) for n, t in f.tensors.items()}
    drops = []
    for i, name in enumerate(tensors):
        if LATER_BLOCK.search(name):
            continue  # the same roles as block 0's tensors
        path = str(tmp_path / f"{arch.name}-{i}.gguf")
        write(path, {n: v for n, v in tensors.items() if n != name})
        drops.append((name, path))
    return full, drops, kind


def _text_kv(path):
    f = read_gguf(path)
    return [(k, v) for k, v in f.metadata.items() if not k.startswith("general.") and not k.startswith("GGUF.")]


# Runs every command through cli.main (what `python -m graphdsl.cli` calls) in one child process;
# for a run that exits 0, also whether the loaded model uses the dropped tensor.
CHILD = textwrap.dedent("""
    import contextlib, io, json, sys
    from graphdsl import cli
    from graphdsl.models import from_gguf, text
    out = []
    for argv, kind, dropped in json.loads(sys.stdin.read()):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()) as so:
            try:
                rc = cli.main(argv)
            except SystemExit as e:
                rc = e.code
        uses = None
        if rc == 0 and argv[0] == "embed":
            m = (text.from_gguf if kind == "text" else from_gguf)(argv[2])
            uses = dropped in m.weights
        out.append([argv, rc, err.getvalue(), so.getvalue() if argv[0] == "info" else "", uses])
    print(json.dumps(out))
""")


def run_child(cases, timeout=600):
    p = subprocess.run([sys.executable, "-c", CHILD], input=json.dumps(cases), capture_output=True, text=True,
                       timeout=timeout)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout)


def _check_embed(dropped, path, rc, err, uses):
    assert "Traceback" not in err and "KeyError" not in err, (dropped, err[-1500:])
    if rc == 0:  # a valid file of another layout: the model it loads must not use the tensor
        assert uses is not True, f"{path} without {dropped} embedded with a model that uses it"
        return
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"graphdsl embed: error: {path}: "), (dropped, line)
    assert dropped in line or any(s in line for s in LAYOUT), (dropped, line)


USABLE = re.compile(r"^  graphdsl\.models: \w+\.\w+( \+ \w+\.\w+)*$", re.M)


def _check_info(dropped, path, rc, err, report) -> bool:
    """info reports on a broken file rather than refusing it: exit 0, and its model part names the
    tensor (or another's disagreeing shape). Returns whether it calls the file usable."""
    assert rc == 0 and "Traceback" not in err and "KeyError" not in err, (dropped, err[-1500:])
    model = report.split("\nmodel: ", 1)[1]
    if model.startswith("text model ") or USABLE.search(model):
        return True
    assert dropped in model or any(s in model for s in LAYOUT), (dropped, model)
    assert not model.startswith("not usable") or model.startswith(f"not usable by graphdsl: {path}: "), model
    return False


@pytest.mark.parametrize("arch", list(ARCHS.values()), ids=lambda a: a.name)
def test_every_dropped_tensor_is_named_with_its_file(tmp_path, arch):
    full, drops, kind = _write_dropped(tmp_path, arch)
    out = str(tmp_path / "out.npy")
    cases = [[_embed_argv(arch, full, out), kind, ""], [["info", full], kind, ""]]
    for name, path in drops:
        cases += [[_embed_argv(arch, path, out), kind, name], [["info", path], kind, name]]
    results = run_child(cases)
    (_, rc, err, _, _), (_, info_rc, _, report, _) = results[:2]
    assert rc == 0 and info_rc == 0, err[-1500:]  # negative control: the complete file embeds
    assert _check_info("", full, info_rc, "", report)
    named = 0
    for (name, path), embed, info in zip(drops, results[2::2], results[3::2]):
        _check_embed(name, path, *embed[1:3], embed[4])
        usable = _check_info(name, path, info[1], info[2], info[3])
        assert kind == "text" or usable == (embed[1] == 0), (name, info[3], embed[2])  # info says what embed does
        named += f"tensor {name!r} is missing" in embed[2]
    if arch.name in ISSUE:  # the issue's bare KeyErrors now name the file and the tensor
        assert named, arch.name


def _loads(load, path) -> bool:
    try:
        load(path)
    except ValueError:
        return False
    return True


def _cli(*argv):
    return subprocess.run([sys.executable, "-m", "graphdsl.cli", *argv], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("arch", list(ARCHS.values()), ids=lambda a: a.name)
def test_the_command_names_file_and_tensor(tmp_path, arch):
    """As the user runs them: the issue's tensor where it names one, and each arch's last required one."""
    full, drops, kind = _write_dropped(tmp_path, arch)
    paths = dict(drops)
    load = text.from_gguf if kind == "text" else from_gguf
    needed = [n for n, p in drops if not _loads(load, p)]  # not an optional part of the layout
    said = {}
    for name in dict.fromkeys(n for n in (ISSUE.get(arch.name), needed[-1]) if n):
        r = _cli(*_embed_argv(arch, paths[name], str(tmp_path / "o.npy")))
        assert r.returncode != 0, f"{paths[name]} without {name} embedded"
        _check_embed(name, paths[name], r.returncode, r.stderr, None)
        said[name] = r.stderr.strip()
        r = _cli("info", paths[name])
        # (info checks a text file's token table only, not the layout tensors around it)
        assert not _check_info(name, paths[name], r.returncode, r.stderr, r.stdout) or kind == "text"
    if arch.name in ISSUE:
        f = read_gguf(full)
        name, proj = ISSUE[arch.name], f.metadata["clip.projector_type"]
        left, msg = [n for n in f.tensors if n != name], said[name]
        assert msg.startswith(f"graphdsl embed: error: {paths[name]}: tensor {name!r} is missing (projector "
                              f"{proj!r} needs it; the file has {len(left)} tensors: "), msg
        assert all(f" {head}.* (" in msg for head in {n.split(".")[0] for n in left}), msg
