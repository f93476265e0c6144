"""`graphdsl embed-dataset` (issue 19 part 2): manifests, the Parquet shards against embed_files
item by item, a worker pool identical to the serial path, resumption and atomic shards."""
import csv
import json
import os
import time

import numpy as np
import pytest
from PIL import Image

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from cli_run import stderr_on_tty  # noqa: E402

from graphdsl import cli, demo  # noqa: E402
from graphdsl.dataset import embed_dataset, read_manifest, read_output, shards  # noqa: E402
from graphdsl.embed import embed_files  # noqa: E402

WAV = demo.DATA / "speech_16k.wav"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    mmproj, text, _ = demo.build_files("tiny", root / "cache")
    imgs = root / "imgs"
    (imgs / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(5):  # different sizes: each is resized by the tower's pre-processing
        Image.fromarray(rng.integers(0, 255, (30 + 7 * i, 40, 3), dtype=np.uint8)).save(
            imgs / ("sub" if i == 4 else "") / f"im{i}.png")
    (imgs / "notes.txt").write_text("not media")
    return dict(root=root, mmproj=mmproj, text=text, imgs=imgs)


def rows(out):
    t = read_output(out)
    return {r["id"]: r for r in t.to_pylist()}


def test_manifests_agree(setup, tmp_path):
    imgs = setup["imgs"]
    folder = read_manifest(imgs)
    assert [it.id for it in folder] == ["im0.png", "im1.png", "im2.png", "im3.png", "sub/im4.png"]
    recs = [{"id": "a", "prompt": "what <image> is this", "images": ["imgs/im0.png"]},
            {"id": "b", "tokens": "1,<audio>,2", "audios": [str(WAV)]}]
    base = setup["root"]
    (base / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    with open(base / "m.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, ["id", "prompt", "tokens", "images", "audios"])
        w.writeheader()
        w.writerow({"id": "a", "prompt": recs[0]["prompt"], "images": "imgs/im0.png"})
        w.writerow({"id": "b", "tokens": "1,<audio>,2", "audios": json.dumps([str(WAV)])})
    full = [{"id": r["id"], "prompt": r.get("prompt"), "tokens": r.get("tokens"), "images": r.get("images", []),
             "audios": r.get("audios", [])} for r in recs]
    pq.write_table(pa.Table.from_pylist(full), base / "m.parquet")
    a, b, c = (read_manifest(base / f"m.{e}") for e in ("jsonl", "csv", "parquet"))
    assert a == b == c and a[0].images == (str(base / "imgs/im0.png"),) and a[1].tokens == "1,<audio>,2"
    bad = base / "bad.jsonl"
    bad.write_text(json.dumps({"id": "x", "images": ["nope.png"]}) + "\n")
    with pytest.raises(FileNotFoundError, match="nope.png"):
        read_manifest(bad)
    bad.write_text(json.dumps({"id": "x", "prompt": "a"}) + "\n" + json.dumps({"id": "x", "prompt": "b"}) + "\n")
    with pytest.raises(ValueError, match="duplicate ids: x"):
        read_manifest(bad)


def test_shards_hold_what_embed_files_gives(setup, tmp_path):
    """Every row equals embed_files on the same item (the same graph: bit for bit), spans included."""
    base = setup["root"]
    recs = [{"id": "p", "prompt": "what <image> is this", "images": ["imgs/im1.png"]},
            {"id": "q", "tokens": "1,<audio>,2", "audios": [str(WAV)]},
            {"id": "r", "images": ["imgs/im2.png", "imgs/im3.png"]}]
    man = base / "mixed.jsonl"
    man.write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = tmp_path / "out"
    res = embed_dataset(man, out, mmproj=setup["mmproj"], text_model=setup["text"], shard_size=2, n_threads=2)
    assert res == {"n_items": 3, "n_shards": 2, "skipped_shards": 0, "n_embd": 48, "n_failed": 0}
    assert sorted(os.listdir(out)) == ["_manifest.json", "part-00000.parquet", "part-00001.parquet"]
    got = rows(out)
    for it in read_manifest(man):
        ref = embed_files(setup["mmproj"], setup["text"], images=it.images, audios=it.audios, prompt=it.prompt,
                          tokens=it.tokens, backend="cpu", n_threads=2)
        e = np.asarray(got[it.id]["embeddings"], np.float32)
        np.testing.assert_array_equal(e, ref.embd)
        assert got[it.id]["n_tokens"] == len(ref.embd)
        assert got[it.id]["spans"] == [{"index": s.index, "kind": s.kind, "start": s.start, "n_tokens": s.n_tokens}
                                       for s in ref.spans]
    # negative control: another item's embeddings differ
    assert not np.array_equal(np.asarray(got["r"]["embeddings"])[:16], np.asarray(got["p"]["embeddings"])[1:17])
    doc = json.loads((out / "_manifest.json").read_text())
    assert doc["complete"] and [s["first_id"] for s in doc["shards"]] == ["p", "r"]


def test_worker_pool_equals_the_serial_path(setup, tmp_path):
    serial, pool = tmp_path / "serial", tmp_path / "pool"
    embed_dataset(setup["imgs"], serial, mmproj=setup["mmproj"], shard_size=2, n_threads=1)
    embed_dataset(setup["imgs"], pool, mmproj=setup["mmproj"], shard_size=2, workers=2, n_threads=1)
    assert read_output(serial).equals(read_output(pool))
    assert [pq.read_metadata(pool / f).num_rows for f in sorted(os.listdir(pool)) if f.endswith(".parquet")] == [2, 2, 1]


def test_resume_skips_finished_shards_and_never_leaves_a_partial_one(setup, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real = shards.embed_shard
    calls = []

    def crash_on_third(fe, index, items, out_dir, tick=None, on_error="stop"):
        calls.append(index)
        if index == 2:
            def half_written(table, where, *a, **kw):  # the process dies while writing this shard
                open(where, "wb").write(b"PAR1 partial")
                raise KeyboardInterrupt
            monkeypatch.setattr(pq, "write_table", half_written)
        return real(fe, index, items, out_dir, tick, on_error)
    monkeypatch.setattr("graphdsl.dataset.run.embed_shard", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        embed_dataset(setup["imgs"], out, mmproj=setup["mmproj"], shard_size=2, n_threads=1)
    monkeypatch.undo()
    assert sorted(os.listdir(out)) == ["_manifest.json", "part-00000.parquet", "part-00001.parquet"]  # no partial
    first = (out / "part-00000.parquet").stat()
    res = embed_dataset(setup["imgs"], out, mmproj=setup["mmproj"], shard_size=2, n_threads=1)
    assert res["skipped_shards"] == 2 and (out / "part-00000.parquet").stat().st_mtime_ns == first.st_mtime_ns
    clean = tmp_path / "clean"
    embed_dataset(setup["imgs"], clean, mmproj=setup["mmproj"], shard_size=2, n_threads=1)
    assert read_output(out).equals(read_output(clean))
    # another run's settings in the same folder: refused, or started over when asked
    with pytest.raises(ValueError, match="another run"):
        embed_dataset(setup["imgs"], out, mmproj=setup["mmproj"], shard_size=3, n_threads=1)
    res = embed_dataset(setup["imgs"], out, mmproj=setup["mmproj"], shard_size=3, n_threads=1, restart=True)
    assert res["skipped_shards"] == 0 and res["n_shards"] == 2


def test_command(setup, tmp_path, capsys):
    out = tmp_path / "o"
    argv = ["embed-dataset", str(setup["imgs"]), "--mmproj", str(setup["mmproj"]), "-o", str(out),
            "--shard-size", "3", "--threads", "2"]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "5 items in 2 shard(s) of width 48; 0 shard(s) were already done, 5 item(s) embedded now" in text
    assert cli.main(argv) == 0 and "2 shard(s) were already done, 0 item(s)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:  # the output inside the input folder: refused before any work
        cli.main(["embed-dataset", str(setup["imgs"]), "--mmproj", str(setup["mmproj"]),
                  "-o", str(setup["imgs"] / "out")])
    assert e.value.code == 2 and "inside the input" in capsys.readouterr().err
    rc = cli.main(["embed-dataset", str(setup["imgs"]), "--text-model", str(setup["text"]), "-o", str(tmp_path / "t")])
    assert rc == 1 and "no mmproj" in capsys.readouterr().err  # images without an image encoder: one line


def test_progress_bar_with_rate_on_a_terminal_only(setup, tmp_path):
    import subprocess
    import sys
    pytest.importorskip("tqdm")
    cmd = [sys.executable, "-m", "graphdsl.cli", "embed-dataset", str(setup["imgs"]), "--mmproj",
           str(setup["mmproj"]), "--shard-size", "2", "--threads", "1"]
    bar = stderr_on_tty(cmd + ["-o", str(tmp_path / "a")], columns=120)
    assert "5/5" in bar and "item/s" in bar  # count, rate (and ETA while running)
    r = subprocess.run(cmd + ["-o", str(tmp_path / "b")], capture_output=True, text=True, timeout=300, check=True)
    assert r.stderr == "" and "5 item(s) embedded now" in r.stdout  # piped: the summary line only


class _FakeFileEmbedder:
    """embed_shard's view of a FileEmbedder (items + embedder), returning fixed results."""

    def __init__(self, result):
        self.result = result
        self.embedder = lambda batch: result

    def items(self, *a):
        return []


def _item(i):
    from types import SimpleNamespace
    return SimpleNamespace(id=f"x{i}", images=[], audios=[], prompt=None, tokens=[1])


def test_shards_keep_decoder_positions_and_notes_and_refuse_cross_memories(tmp_path):
    """What a result carries besides the rows is stored (Qwen's M-RoPE ids, MiniCPM-V's slice notes)
    or refused (mllama's cross-attention memories), never dropped (found in review: an mllama
    dataset came out as rows of 0 tokens, reported as a success)."""
    from graphdsl.cross import CrossMemory
    from graphdsl.embed import Embeddings, Span
    rng = np.random.default_rng(0)
    pos = np.array([[0, 1, 1, 1], [0, 1, 1, 2], [0, 1, 2, 1]], np.int32)
    res = Embeddings(rng.standard_normal((4, 8)).astype(np.float32), [Span(0, "image", 0, 4)],
                     positions=pos, notes=["grid 1 x 2"])
    shards.embed_shard(_FakeFileEmbedder(res), 0, [_item(0), _item(1)], tmp_path)
    t = pq.read_table(tmp_path / shards.shard_name(0))
    assert np.array(t["positions"][1].as_py()).T.tolist() == pos.tolist()  # (n, 3) rows per item
    assert t["notes"].to_pylist() == [["grid 1 x 2"]] * 2
    plain = Embeddings(res.embd, res.spans)  # negative control: nothing extra, no extra columns
    shards.embed_shard(_FakeFileEmbedder(plain), 1, [_item(2)], tmp_path)
    assert {"positions", "notes"}.isdisjoint(pq.read_table(tmp_path / shards.shard_name(1)).column_names)
    cross = Embeddings(np.zeros((0, 8), np.float32), [Span(0, "image", 0, 0)],
                       cross=[CrossMemory(0, "image", np.zeros((5, 8), np.float32), 5, 0, 1)])
    with pytest.raises(ValueError, match="item 'x3'.*cross-attention memories"):
        shards.embed_shard(_FakeFileEmbedder(cross), 2, [_item(3)], tmp_path)
    assert not (tmp_path / shards.shard_name(2)).exists()


def test_resume_redoes_a_damaged_shard_with_a_warning(setup, tmp_path):
    """A listed shard that was truncated, or damaged at its footer, is redone with a warning that
    names it (found by the red team: the rerun exited 0 and read_output failed with ArrowInvalid)."""
    out, clean = tmp_path / "out", tmp_path / "clean"
    embed_dataset(setup["imgs"], clean, mmproj=setup["mmproj"], shard_size=2, n_threads=1)
    embed_dataset(setup["imgs"], out, mmproj=setup["mmproj"], shard_size=2, n_threads=1)
    p1, p2 = out / "part-00001.parquet", out / "part-00002.parquet"
    os.truncate(p1, p1.stat().st_size // 2)
    with open(p2, "r+b") as fh:  # same size, footer gone
        fh.seek(-8, os.SEEK_END)
        fh.write(b"\0" * 8)
    first = (out / "part-00000.parquet").stat().st_mtime_ns
    with pytest.warns(shards.integrity.DamagedShardWarning) as got:
        res = embed_dataset(setup["imgs"], out, mmproj=setup["mmproj"], shard_size=2, n_threads=1)
    msgs = sorted(str(w.message) for w in got)
    assert len(msgs) == 2 and str(p1) in msgs[0] and "bytes" in msgs[0], msgs
    assert str(p2) in msgs[1] and "unreadable" in msgs[1], msgs
    assert res["skipped_shards"] == 1 and (out / "part-00000.parquet").stat().st_mtime_ns == first  # control
    assert read_output(out).equals(read_output(clean))


def _same_size_and_mtime_other_model(src, dst):
    """A copy of the GGUF `src` at `dst` with one weight changed, then given src's mtime."""
    import shutil
    shutil.copyfile(src, dst)
    st = os.stat(src)
    with open(dst, "r+b") as fh:  # the last tensor's data (f32): low mantissa bytes, so the weights stay finite
        fh.seek(-64, os.SEEK_END)
        b = bytearray(fh.read(16))
        b[::4] = bytes(x ^ 0xFF for x in b[::4])
        fh.seek(-64, os.SEEK_END)
        fh.write(b)
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.path.getsize(dst) == st.st_size and os.stat(dst).st_mtime_ns == st.st_mtime_ns


def test_resume_knows_the_model_by_content(setup, tmp_path):
    """Another model with the same path, size and mtime is refused, naming both (found by the red
    team: it resumed into a "complete" output mixing two models' rows); the same bytes elsewhere resume."""
    import shutil
    a, b, same = tmp_path / "a.gguf", tmp_path / "b.gguf", tmp_path / "same.gguf"
    shutil.copy2(setup["mmproj"], a)
    out = tmp_path / "out"
    items = read_manifest(setup["imgs"])
    embed_dataset(items, out, mmproj=a, shard_size=2, n_threads=1)
    (out / "part-00002.parquet").unlink()  # so that a resume has work left
    doc = json.loads((out / "_manifest.json").read_text())
    doc["shards"] = doc["shards"][:2]
    (out / "_manifest.json").write_text(json.dumps(doc))
    _same_size_and_mtime_other_model(a, b)
    os.replace(b, a)  # the same path, size and mtime; other bytes
    with pytest.raises(ValueError, match=rf"another run.*made with {a} \(sha256 \w+\), this run has {a} \(sha256 "):
        embed_dataset(items, out, mmproj=a, shard_size=2, n_threads=1)
    _same_size_and_mtime_other_model(setup["mmproj"], b)
    with pytest.raises(ValueError, match=rf"another run.*{a}.*sha256.*{b}.*sha256.*another model"):
        embed_dataset(items, out, mmproj=b, shard_size=2, n_threads=1)
    shutil.copy2(setup["mmproj"], same)  # negative control: the first model's bytes under another name continue
    assert embed_dataset(items, out, mmproj=same, shard_size=2, n_threads=1)["skipped_shards"] == 2


def test_model_hash_is_reused_only_for_an_untouched_file(tmp_path):
    """The recorded hash is reused while (device, inode, size, mtime, ctime) match; a file rewritten in
    place and touched back to its mtime changes ctime, and is read again."""
    f = tmp_path / "m.gguf"
    f.write_bytes(b"x" * 100)
    rec = shards.integrity.file_sha256(f)
    fake = {**rec, "sha256": "f" * 64}
    assert shards.integrity.file_sha256(f, fake)["sha256"] == "f" * 64  # not read again
    st = os.stat(f)
    time.sleep(0.05)  # past the kernel's coarse timestamp tick, as any real rewrite after a run is
    with open(f, "r+b") as fh:
        fh.write(b"y")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = shards.integrity.file_sha256(f, fake)
    assert again["sha256"] not in ("f" * 64, rec["sha256"])


def test_on_error_stop_names_the_item_and_skip_lists_it(setup, tmp_path):
    """stop (the default) ends the run at the first failing item, naming it; skip leaves it out,
    lists it with its error, and gives the other items the rows a run without it gives."""
    import shutil
    imgs = tmp_path / "imgs"
    shutil.copytree(setup["imgs"], imgs)
    (imgs / "im2.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=rf"item 'im2.png': .*{imgs / 'im2.png'}"):
        embed_dataset(imgs, tmp_path / "stop", mmproj=setup["mmproj"], shard_size=1, n_threads=1)
    out = tmp_path / "skip"
    res = embed_dataset(imgs, out, mmproj=setup["mmproj"], shard_size=1, n_threads=1, on_error="skip")
    assert res["n_failed"] == 1 and res["n_shards"] == 5
    assert not (out / "part-00002.parquet").exists()  # its only item failed: no file, the entry says why
    failed = [json.loads(line) for line in (out / "_failed.jsonl").read_text().splitlines()]
    assert [(f["id"], f["shard"]) for f in failed] == [("im2.png", 2)] and "not a readable image" in failed[0]["error"]
    got, ref = rows(out), rows(_clean_run(setup, tmp_path))
    assert sorted(got) == sorted(set(ref) - {"im2.png"})
    for k in got:
        assert got[k]["embeddings"] == ref[k]["embeddings"]
    again = embed_dataset(imgs, out, mmproj=setup["mmproj"], shard_size=1, n_threads=1, on_error="skip")
    assert again["skipped_shards"] == 5 and again["n_failed"] == 1  # a failed item is not retried
    embed_dataset(imgs, out, mmproj=setup["mmproj"], shard_size=1, n_threads=1, on_error="skip", restart=True)
    (imgs / "im2.png").unlink()  # another item list: --force starts over, and no failure is left listed
    embed_dataset(imgs, out, mmproj=setup["mmproj"], shard_size=1, n_threads=1, restart=True)
    assert not (out / "_failed.jsonl").exists()


def _clean_run(setup, tmp_path):
    out = tmp_path / "clean"
    embed_dataset(setup["imgs"], out, mmproj=setup["mmproj"], shard_size=1, n_threads=1)
    return out


def test_a_version_1_output_is_refused_with_force_named(setup, tmp_path):
    """Version-1 manifests named models by path, size and mtime: nothing to check a resume against."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "_manifest.json").write_text(json.dumps({"version": 1, "fingerprint": {}, "shards": []}))
    with pytest.raises(ValueError, match=r"_manifest.json: written by another version of embed-dataset .*--force"):
        embed_dataset(setup["imgs"], out, mmproj=setup["mmproj"], shard_size=2, n_threads=1)
    assert embed_dataset(setup["imgs"], out, mmproj=setup["mmproj"], shard_size=2, n_threads=1,
                         restart=True)["n_shards"] == 3


def test_remove_strays_takes_a_killed_runs_temporary_files_and_nothing_else(tmp_path):
    """kill -9 while the manifest or the failure list is being replaced leaves its temporary file; a
    resume (the folder's lock held) removes it with the shard temporaries, and touches no other name."""
    from graphdsl.dataset import integrity
    ours = [".part-00003.parquet.0c7d7855.tmp.parquet", "._manifest.json.0c7d7855.tmp.json",
            "._failed.jsonl.a1b2c3d4.tmp.jsonl", "part-00009.parquet"]
    theirs = ["_manifest.json", "part-00000.parquet", ".notes.0c7d7855.tmp.json", "keep.txt"]
    for name in ours + theirs:
        (tmp_path / name).write_bytes(b"x")
    gone = integrity.remove_strays(tmp_path, keep={"part-00000.parquet"})
    assert sorted(gone) == sorted(ours)
    assert sorted(os.listdir(tmp_path)) == sorted(theirs)
