"""embed-dataset stopped from outside (issue 28): Ctrl-C stops the workers at once and leaves
only files its manifest lists; workers die with a killed parent; a resume after either finishes
the output with every item once. Each run is a subprocess (tests/support/dataset_driver.py, which slows
every item so that the stop lands while shards are being embedded) with a timeout."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pq = pytest.importorskip("pyarrow.parquet")

from graphdsl import demo  # noqa: E402
from graphdsl.dataset import read_output  # noqa: E402

DRIVER = Path(__file__).parents[1] / "support" / "dataset_driver.py"
N_ITEMS, SHARD = 20, 2
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc and sends POSIX signals")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("stop")
    mmproj, _, _ = demo.build_files("tiny", root / "cache")
    imgs = root / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(3)
    for i in range(N_ITEMS):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(imgs / f"{i:03d}.png")
    return mmproj, imgs


def start(data, out, delay: float, workers: int = 2, *extra, log=None) -> subprocess.Popen:
    mmproj, imgs = data
    env = {**os.environ, "GRAPHDSL_TEST_ITEM_DELAY": str(delay), "GRAPHDSL_TEST_ITEM_LOG": str(log or "")}
    return subprocess.Popen([sys.executable, str(DRIVER), "embed-dataset", str(imgs), "--mmproj", str(mmproj),
                             "-o", str(out), "--shard-size", str(SHARD), "--workers", str(workers), "--threads", "1",
                             *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)  # its own process group, as a terminal's job


def listed(out) -> list[str]:
    try:
        return [s["file"] for s in json.loads((out / "_manifest.json").read_text())["shards"]]
    except (OSError, ValueError):  # not written yet
        return []


def wait_for_first_shard(p, out, timeout=120) -> None:
    t0 = time.monotonic()
    while not listed(out):
        assert p.poll() is None, p.communicate()[1][-2000:]
        assert time.monotonic() - t0 < timeout, "no shard finished"
        time.sleep(0.05)


def children(pid: int) -> list[int]:
    kids = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as fh:
            kids += [int(k) for k in fh.read().split()]
    return kids


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def resume_and_check(data, out) -> None:
    """A rerun (no delay) completes the output: every item exactly once, each shard whole."""
    p = start(data, out, 0.0)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err[-2000:]
    ids = read_output(out)["id"].to_pylist()
    assert sorted(ids) == [f"{i:03d}.png" for i in range(N_ITEMS)]  # none lost, none twice
    assert sorted(f for f in os.listdir(out) if f != "_manifest.json") == sorted(listed(out))


@pytest.mark.parametrize("to", ["group", "parent"])
def test_ctrl_c_stops_the_workers_at_once_and_leaves_only_listed_shards(data, tmp_path, to):
    """group: a terminal's Ctrl-C (every process of the job gets SIGINT); parent: kill -INT of the
    main process only. Found by the red team: the run went on for 16 s after Ctrl-C, writing
    shards its manifest did not list."""
    out = tmp_path / "out"
    p = start(data, out, delay=1.0)  # 2 s a shard, 10 shards on 2 workers: 10 s of work
    try:
        wait_for_first_shard(p, out)
        workers = [k for k in children(p.pid) if "resource_tracker" not in Path(f"/proc/{k}/cmdline").read_text()]
        t0 = time.monotonic()
        os.killpg(p.pid, signal.SIGINT) if to == "group" else p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
        print(f"stopped {time.monotonic() - t0:.2f} s after SIGINT ({to})")  # pytest -s shows it
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert not any(alive(w) for w in workers)  # stopped, not left running
    files = sorted(f for f in os.listdir(out) if f != "_manifest.json")
    assert files == sorted(listed(out))  # nothing the manifest does not list, no temporary file
    assert len(files) < N_ITEMS // SHARD - 1  # it stopped: the running and queued shards were not finished
    assert p.returncode == 130, err[-2000:]
    assert "interrupted" in err and "Traceback" not in err and "rerun" in err, err[-2000:]
    resume_and_check(data, out)


def test_workers_die_with_a_killed_parent(data, tmp_path):
    """kill -9 of the main process: its workers exit too (found by the red team: they went on
    writing shards, then blocked forever holding the model)."""
    out = tmp_path / "out"
    p = start(data, out, delay=1.0)
    workers = []
    try:
        wait_for_first_shard(p, out)
        workers = [k for k in children(p.pid) if "resource_tracker" not in Path(f"/proc/{k}/cmdline").read_text()]
        assert len(workers) == 2
        p.kill()
        p.wait(timeout=30)
        t0 = time.monotonic()
        while any(alive(w) for w in workers) and time.monotonic() - t0 < 20:
            time.sleep(0.1)
        left = [w for w in workers if alive(w)]
    finally:
        for w in workers:  # our own children's children, by pid: never left behind by a failing test
            if alive(w):
                os.kill(w, signal.SIGKILL)
        os.killpg(p.pid, signal.SIGKILL) if p.poll() is None else None
    assert left == [], f"workers {left} outlived their parent"
    time.sleep(2.5)  # a surviving worker would finish its 2 s shard by now
    before = sorted(os.listdir(out))
    resume_and_check(data, out)  # the killed run's temporary files are cleaned up, and it completes
    assert not any(".tmp." in f for f in os.listdir(out)), before


def test_a_second_run_in_the_same_folder_is_refused_while_the_first_runs(data, tmp_path):
    """A second run would remove the first one's unlisted (running) shards as strays: it is refused."""
    out = tmp_path / "out"
    p = start(data, out, delay=1.0)
    try:
        wait_for_first_shard(p, out)
        q = start(data, out, delay=0.0, workers=0)
        _, err = q.communicate(timeout=120)
        assert q.returncode == 1 and f"{out} is being written by another embed-dataset run" in err, err[-2000:]
    finally:
        os.killpg(p.pid, signal.SIGINT)
        p.communicate(timeout=60)
    assert p.returncode == 130
    resume_and_check(data, out)  # the lock went with the process


def test_skip_then_kill_at_half_then_resume_loses_and_repeats_nothing(data, tmp_path):
    """--on-error skip (issue 27 item 3): failed items are listed with their error and the run goes
    on; killed (-9) at half and resumed, every item is either a row or a listed failure exactly
    once, and the resume reads no item of a finished shard."""
    mmproj, good = data
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    bad = {"003.png", "010.png", "011.png"}  # 010 and 011 are one shard: a shard with no rows
    for f in sorted(os.listdir(good)):
        (imgs / f).write_bytes(b"not an image" if f in bad else (good / f).read_bytes())
    out, log1, log2 = tmp_path / "out", tmp_path / "read1", tmp_path / "read2"
    p = start((mmproj, imgs), out, 0.5, 2, "--on-error", "skip", log=log1)
    try:
        t0 = time.monotonic()
        while len(listed(out)) < N_ITEMS // SHARD // 2:
            assert p.poll() is None and time.monotonic() - t0 < 180, p.communicate()[1][-2000:]
            time.sleep(0.05)
        p.kill()
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    before = json.loads((out / "_manifest.json").read_text())["shards"]
    assert N_ITEMS // SHARD // 2 <= len(before) < N_ITEMS // SHARD  # killed at about half
    finished_ids = {f"{i:03d}.png" for s in before for i in range(s["index"] * SHARD, (s["index"] + 1) * SHARD)}
    time.sleep(1)  # a worker that survived its parent would still be writing
    r = start((mmproj, imgs), out, 0.0, 2, "--on-error", "skip", log=log2)
    _, err = r.communicate(timeout=300)
    assert r.returncode == 0, err[-2000:]
    assert f"{len(bad)} item(s) failed and were skipped: {out / '_failed.jsonl'}" in err, err[-2000:]
    reread = set(log2.read_text().split())
    assert reread and not reread & finished_ids, sorted(reread & finished_ids)  # no finished item read again
    rows = read_output(out)["id"].to_pylist()
    failed = [json.loads(line) for line in (out / "_failed.jsonl").read_text().splitlines()]
    assert len(rows) == len(set(rows)) and len(failed) == len({f["id"] for f in failed})  # 0 duplicated
    assert set(rows) | {f["id"] for f in failed} == {f"{i:03d}.png" for i in range(N_ITEMS)}  # 0 lost
    assert {f["id"] for f in failed} == bad and not set(rows) & bad
    assert all(str(imgs / f["id"]) in f["error"] for f in failed), failed  # each error names its file
