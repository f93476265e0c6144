"""embed-dataset's errors name the file they are about (issue 28 item 8c): a failed write (disk
full, file too large) says which file, why, and that nothing partial was left, instead of numpy's
"2048 requested and 912 written"; a manifest that is not UTF-8, a bad JSON list of paths, a damaged
shard read back (page checksums: a flipped bit too). Writes that fail are provoked with
RLIMIT_FSIZE (EFBIG) in a subprocess."""
import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pyarrow")
resource = pytest.importorskip("resource", reason="RLIMIT_FSIZE is POSIX")

from graphdsl import demo  # noqa: E402
from graphdsl.dataset import embed_dataset, read_manifest, read_output  # noqa: E402

LIMITED = """import resource, sys
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # a write past 4 KiB fails with EFBIG
"""


def run_limited(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LIMITED + code], capture_output=True, text=True, timeout=300)


def test_a_failed_np_save_names_the_file_the_cause_and_leaves_nothing(tmp_path):
    out = tmp_path / "x.npy"
    out.write_bytes(b"previous")
    r = run_limited(f"""
import numpy as np
from graphdsl.fileio import atomic_open
try:
    with atomic_open({str(out)!r}) as fh:
        np.save(fh, np.zeros(100000, np.float32))
except OSError as e:
    import json
    print(json.dumps([type(e).__name__, e.errno, str(e), str(e.__cause__)]))
""")
    assert r.returncode == 0, r.stderr[-2000:]
    name, code, msg, cause = json.loads(r.stdout)
    assert "requested and" in cause  # numpy's own words, kept as the cause
    assert name == "WriteFailed" and code == errno.EFBIG, r.stdout  # EFBIG, found although numpy gave no errno
    assert msg.startswith(f"{out}: writing failed: File too large (EFBIG)"), msg
    assert "nothing partial was left (the previous file is unchanged)" in msg, msg
    assert out.read_bytes() == b"previous" and os.listdir(tmp_path) == ["x.npy"]  # no temporary file


def test_a_failed_shard_write_names_the_shard(tmp_path):
    mmproj, _, _ = demo.build_files("tiny", tmp_path / "cache")
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(4):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(imgs / f"{i}.png")
    out = tmp_path / "out"
    r = run_limited(f"""
from graphdsl import cli
sys.exit(cli.main(["embed-dataset", {str(imgs)!r}, "--mmproj", {str(mmproj)!r}, "-o", {str(out)!r},
                   "--shard-size", "4", "--threads", "1"]))
""")
    assert r.returncode == 1, r.stderr[-2000:]
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith(f"graphdsl embed-dataset: error: {out / 'part-00000.parquet'}: writing failed: "
                          "File too large (EFBIG)"), err
    assert err.endswith("nothing partial was left (no file was created)"), err
    assert os.listdir(out) == ["_manifest.json"] and json.loads((out / "_manifest.json").read_text())["shards"] == []


def test_manifest_errors_name_the_manifest(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    bad = tmp_path / "latin1.csv"
    bad.write_bytes("id,prompt\nx,caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=rf"^{bad}: line 2 is not UTF-8 text \(byte 0xe9 at offset 15"):
        read_manifest(bad)
    cell = tmp_path / "cell.csv"
    cell.write_text('id,images\nx,"[a.png"\n')
    with pytest.raises(ValueError, match=rf"^{cell}: row 0: paths starting with '\[' must be a JSON list"):
        read_manifest(cell)
    cell.write_text('id,images\nx,"[""a.png""]"\n')  # negative control: a good JSON list
    assert read_manifest(cell)[0].images == (str(tmp_path / "a.png"),)


def test_read_output_names_a_damaged_shard(tmp_path):
    mmproj, _, _ = demo.build_files("tiny", tmp_path / "cache")
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(2):
        Image.fromarray(np.full((32, 32, 3), 90 * i, np.uint8)).save(imgs / f"{i}.png")
    out = tmp_path / "out"
    embed_dataset(imgs, out, mmproj=mmproj, shard_size=1, n_threads=1)
    assert len(read_output(out)) == 2  # control
    p = out / "part-00001.parquet"
    with open(p, "r+b") as fh:  # the first page's header damaged, the footer intact: pyarrow names no file
        fh.seek(4)
        fh.write(b"\xff" * 200)
    with pytest.raises(ValueError, match=rf"^{p}: unreadable \(.*\); delete it and rerun embed-dataset"):
        read_output(out)


def test_a_shard_mixing_position_layouts_is_named(tmp_path):
    from types import SimpleNamespace

    from graphdsl.dataset import shards
    from graphdsl.embed import Embeddings, Span
    e = np.zeros((4, 8), np.float32)
    results = iter([Embeddings(e, [Span(0, "image", 0, 4)], positions=np.zeros((3, 4), np.int32)),
                    Embeddings(e, [Span(0, "image", 0, 4)])])
    fe = SimpleNamespace(items=lambda *a: [], embedder=lambda batch: next(results))
    items = [SimpleNamespace(id=f"x{i}", images=[], audios=[], prompt=None, tokens=[1]) for i in range(2)]
    with pytest.raises(ValueError, match=rf"{tmp_path / 'part-00007.parquet'}: items \['x0'\] have decoder "
                                         r"positions \(M-RoPE\) and items \['x1'\] do not"):
        shards.embed_shard(fe, 7, items, tmp_path)
    assert os.listdir(tmp_path) == []


def test_read_output_refuses_a_flipped_bit(tmp_path):
    """Shards carry page checksums, verified by read_output: a bit flipped in the embeddings (same
    size, intact footer) is an error naming the shard, not other numbers."""
    mmproj, _, _ = demo.build_files("tiny", tmp_path / "cache")
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(imgs / "0.png")
    out = tmp_path / "out"
    embed_dataset(imgs, out, mmproj=mmproj, shard_size=1, n_threads=1)
    before = read_output(out)  # control: reads
    p = out / "part-00000.parquet"
    with open(p, "r+b") as fh:
        import pyarrow.parquet as pq
        rg = pq.read_metadata(p).row_group(0)
        col = next(c for c in map(rg.column, range(rg.num_columns)) if c.path_in_schema.startswith("embeddings"))
        first = col.data_page_offset if col.dictionary_page_offset is None else col.dictionary_page_offset
        fh.seek(first + col.total_compressed_size // 2)  # inside the chunk's pages (its floats' dictionary)
        b = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([b[0] ^ 1]))
    with pytest.raises(ValueError, match=rf"^{p}: unreadable \(.*(checksum|CRC)"):
        read_output(out)
    assert len(before) == 1
