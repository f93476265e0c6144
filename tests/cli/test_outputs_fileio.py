"""graphdsl.fileio: outputs are written completely or not at all, and never over an input.

Each failure test has a negative control, an in-place "wb" write that fails the same way, to show
the assertion would catch the data loss the atomic write prevents.
"""
from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from graphdsl.convert.writer import write_gguf
from graphdsl.fileio import OutputExists, OutputIsInput, atomic_open, atomic_path, check_output


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


def _disk_full(fh, written: bytes):
    fh.write(written)
    fh.flush()
    raise OSError(errno.ENOSPC, "No space left on device")


def test_atomic_open_writes_exactly_the_name(tmp_path):
    with atomic_open(tmp_path / "out") as fh:
        np.save(fh, np.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no "out.npy", no temporary file
    np.testing.assert_array_equal(np.load(tmp_path / "out"), np.arange(3))
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o666 & ~_umask()  # not mkstemp's 0600


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, "No space left on device"), KeyboardInterrupt()])
def test_failed_write_keeps_the_old_file(tmp_path, exc):
    out = tmp_path / "embd.npy"
    out.write_bytes(b"old contents " * 1000)
    old = out.read_bytes()
    out.chmod(0o640)
    with pytest.raises(type(exc)):
        with atomic_open(out) as fh:
            fh.write(b"new" * 5000)
            fh.flush()
            raise exc
    assert out.read_bytes() == old and _leftovers(tmp_path) == []
    assert out.stat().st_mode & 0o777 == 0o640
    # negative control: the same failure in an in-place "wb" write loses the old file
    with pytest.raises(OSError):
        with open(out, "wb") as fh:
            _disk_full(fh, b"new" * 10)
    assert out.read_bytes() != old


def test_replacement_keeps_permissions_and_writes_through_symlinks(tmp_path):
    target = tmp_path / "real.bin"
    target.write_bytes(b"a")
    target.chmod(0o600)
    link = tmp_path / "link.bin"
    link.symlink_to(target)
    with atomic_open(link) as fh:
        fh.write(b"b")
    assert link.is_symlink() and target.read_bytes() == b"b" and target.stat().st_mode & 0o777 == 0o600


def test_atomic_path_refuses_a_folder(tmp_path):
    with pytest.raises(IsADirectoryError):
        with atomic_path(tmp_path):
            pass


def _gguf(path, value: float, n: int = 4096):
    write_gguf(str(path), "test", [("test.value", value)], {"w.weight": (np.full((n,), value, np.float32), "f32")})


def test_failed_gguf_write_keeps_the_old_file(tmp_path, monkeypatch):
    """write_gguf dies after the header (disk full while writing tensors): the old GGUF stays whole."""
    import gguf
    out = tmp_path / "m.gguf"
    _gguf(out, 1.0)
    old = out.read_bytes()

    def fail(self, *a, **kw):
        _disk_full(self.fout[0], b"\0" * 1000)
    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", fail)
    with pytest.raises(OSError, match="No space"):
        _gguf(out, 2.0)
    assert out.read_bytes() == old and _leftovers(tmp_path) == []
    # negative control: GGUFWriter on the destination itself leaves a truncated file
    w = gguf.GGUFWriter(str(out), arch="test")
    w.add_tensor("w.weight", np.zeros(4, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    with pytest.raises(OSError):
        w.write_tensors_to_file()
    w.close()
    assert out.read_bytes() != old


_READER = textwrap.dedent("""
    import hashlib, mmap, sys
    with open(sys.argv[1], "rb") as fh:
        m = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    print("mapped", flush=True)
    sys.stdin.readline()           # the parent rewrites the file meanwhile
    print(hashlib.sha256(m[:]).hexdigest(), flush=True)
""")


@pytest.mark.parametrize("atomic", [True, False])
def test_a_process_mapping_the_old_file_keeps_its_bytes(tmp_path, atomic):
    """Another process maps the GGUF (as from_gguf does) while it is rewritten. Atomic: the mapping
    still reads the old bytes. Negative control, in place: the mapping sees the new bytes."""
    out = tmp_path / "m.gguf"
    _gguf(out, 1.0)
    old = hashlib.sha256(out.read_bytes()).hexdigest()
    child = subprocess.Popen([sys.executable, "-c", _READER, str(out)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "mapped"
        if atomic:
            _gguf(out, 2.0)
        else:  # same size, so the mapping stays valid (a shorter file would SIGBUS the reader)
            new = out.read_bytes().replace(np.float32(1.0).tobytes(), np.float32(2.0).tobytes())
            with open(out, "r+b") as fh:
                fh.write(new)
        seen, _ = child.communicate("go\n", timeout=60)
    finally:
        child.kill()
    assert child.returncode == 0
    now = hashlib.sha256(out.read_bytes()).hexdigest()
    assert now != old  # the file was rewritten in both cases
    assert (seen.strip() == old) is atomic


def test_check_output_never_over_an_input(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    ckpt = hf / "model.safetensors"
    ckpt.write_bytes(b"weights")
    (tmp_path / "hard").hardlink_to(ckpt)
    (tmp_path / "soft").symlink_to(ckpt)
    for out in (ckpt, hf / "sub" / ".." / "model.safetensors", tmp_path / "hard", tmp_path / "soft"):
        with pytest.raises(OutputIsInput, match="refusing to write over it"):
            check_output(out, [ckpt], force=True)
    with pytest.raises(OutputIsInput, match="inside the input folder"):
        check_output(ckpt, [hf], force=True)
    # new files are fine, also inside an input folder; and unrelated existing ones with force
    assert check_output(hf / "new.gguf", [hf, ckpt]) == hf / "new.gguf"
    (tmp_path / "old.gguf").write_bytes(b"x")
    with pytest.raises(OutputExists, match="pass --force"):
        check_output(tmp_path / "old.gguf", [ckpt])
    check_output(tmp_path / "old.gguf", [ckpt, None], force=True)
    with pytest.raises(ValueError, match="is a folder"):
        check_output(hf, [], force=True)
    with pytest.raises(ValueError, match="does not exist"):
        check_output(tmp_path / "nope" / "x.npy", [])
