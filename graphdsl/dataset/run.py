"""Running the shards: in this process, on a local pool of worker processes, or on Ray.

Each worker process (or Ray actor) loads the models once (`embed.FileEmbedder`): the GGUF
weights are memory-mapped, so the workers share the page cache's one copy of the file, and on
the CPU backend ggml reads them in place. Workers split the cores: each gets
cpu_count // workers ggml threads unless n_threads says otherwise.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import warnings
from collections.abc import Callable
from pathlib import Path

from . import integrity
from .embedder import load_embedder, model_config
from .manifest import read_manifest
from .shards import MANIFEST, ON_ERROR, embed_shard, fingerprint, load_done, plan, previous, save_manifest


def embed_dataset(source, out: str | os.PathLike, *, mmproj=None, text_model=None, shard_size: int = 256,
                  workers: int = 0, ray: bool | str = False, ray_actors: int = 2, restart: bool = False,
                  on_error: str = "stop",
                  progress: Callable[[int], None] | None = None, on_start: Callable[[int, int], None] | None = None,
                  **model_kw) -> dict:
    """Embed every item of a folder or manifest into sharded Parquet under `out` (resumable).

    Args:
        source: a folder, a .csv / .jsonl / .parquet manifest (``dataset.read_manifest``), or a list of Items.
        out: the output folder (created); see ``dataset.shards`` for its layout.
        mmproj, text_model, **model_kw: the models and settings (``embed.FileEmbedder``; ``options=``
            a ``RunOptions``, or its fields as keywords).
        shard_size: items per Parquet file (and per unit of work).
        workers: 0 embeds in this process; N >= 1 in N worker processes.
        ray: True (a local Ray, or RAY_ADDRESS) or a cluster address: Ray Data with `ray_actors`
            actors (needs ``graphdsl[ray]``); `out` must then be a folder every node can write.
        restart: start over when `out` holds another run's shards (else ValueError).
        on_error: "stop" (ValueError naming the first item that fails) or "skip": a failed item is
            left out, listed with its error in OUT/_failed.jsonl, and the run goes on. Failed items
            of finished shards count as done: a resume does not retry them (--force does).
        progress: called with the number of items finished, after each item.
        on_start: called once with (items already done, items in all) before any work.

    Returns:
        The final manifest's summary: {"n_items", "n_shards", "skipped_shards", "n_embd", "n_failed"}.
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"[embed-dataset] on_error must be one of {ON_ERROR}, got {on_error!r}")
    items = read_manifest(source) if isinstance(source, (str, os.PathLike)) else list(source)
    cfg = model_config(mmproj, text_model, **model_kw)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: the output must be a folder")
    out.mkdir(parents=True, exist_ok=True)
    with _only_run(out):
        return _embed(items, cfg, out, shard_size, workers, ray, ray_actors, restart, progress, on_start, on_error)


def _embed(items, cfg, out: Path, shard_size, workers, ray, ray_actors, restart, progress, on_start,
           on_error) -> dict:
    shards = plan(items, shard_size)
    prev = previous(out, restart)
    fp = fingerprint(items, cfg, shard_size, known=((prev or {}).get("fingerprint") or {}).get("files"))
    done = load_done(out, prev, fp)
    skipped = len(done)
    n_embd = next((e["n_embd"] for e in done.values() if e["n_embd"] is not None), None)
    pending = [(i, s, str(out), on_error) for i, s in enumerate(shards) if i not in done]
    if on_start is not None:
        on_start(sum(len(shards[i]) for i in done), len(items))
    lock = threading.Lock()

    def finished(meta: dict) -> None:
        nonlocal n_embd
        with lock:
            done[meta["index"]] = meta
            n_embd = meta["n_embd"] if meta["n_embd"] is not None else n_embd
            save_manifest(out, fp, done, len(shards), n_embd)

    save_manifest(out, fp, done, len(shards), n_embd)
    tick = progress or (lambda n: None)
    if ray:
        from .ray_runner import run_ray
        run_ray(pending, cfg, ray_actors, None if ray is True else ray, finished, tick)
    elif workers == 0 and pending:
        fe = load_embedder(cfg)
        for index, its, dest, how in pending:
            finished(embed_shard(fe, index, its, dest, tick=tick, on_error=how))
    elif pending:
        from .pool import run_pool
        try:
            run_pool(pending, cfg, workers, finished, tick)
        except BaseException:  # the workers are dead: nothing the manifest does not list may stay
            _tidy(out)
            raise
    return {"n_items": len(items), "n_shards": len(shards), "skipped_shards": skipped, "n_embd": n_embd,
            "n_failed": sum(len(e.get("failed", ())) for e in done.values())}


@contextlib.contextmanager
def _only_run(out: Path):
    """One run at a time in `out`: a second one would delete the first one's files as strays.
    The lock is on the folder itself (no lock file to leave behind), released when this process exits."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        yield
        return
    fd = os.open(out, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ValueError(f"{out} is being written by another embed-dataset run; wait for it to end, "
                             "or use another folder") from None
        yield
    finally:
        os.close(fd)


def _tidy(out: Path) -> None:
    try:
        listed = {e["file"] for e in json.loads((out / MANIFEST).read_text(encoding="utf-8"))["shards"]}
    except (OSError, ValueError, KeyError, TypeError):
        return  # no manifest we can read: leave the folder to the next run's checks
    integrity.remove_strays(out, listed)


def main_progress(desc: str = "embed-dataset"):
    """(progress, on_start, close): a tqdm bar with items/s and ETA on a terminal; no-ops when piped."""
    state: dict = {}

    def on_start(done: int, total: int) -> None:
        if sys.stderr.isatty():
            try:
                from tqdm import tqdm
            except ImportError:
                return
            state["bar"] = tqdm(total=total, initial=done, desc=desc, unit="item", file=sys.stderr,
                                smoothing=0.1, dynamic_ncols=True)

    def progress(n: int) -> None:
        bar = state.get("bar")
        if bar is not None:
            bar.update(n)

    def close() -> None:
        bar = state.pop("bar", None)
        if bar is not None:
            bar.close()
    return progress, on_start, close


def progress_note(out) -> str:
    """Where a stopped run stands, for the command line's last line."""
    try:
        doc = json.loads((Path(out) / MANIFEST).read_text(encoding="utf-8"))
        n = sum(s["n_items"] for s in doc["shards"])
        return (f"{len(doc['shards'])} of {doc['n_shards']} shard(s) ({n} item(s)) are finished and listed in "
                f"{Path(out) / MANIFEST}; rerun the same command to resume")
    except (OSError, ValueError, KeyError, TypeError):
        return "no shard was finished"


@contextlib.contextmanager
def warnings_as_lines(prog: str = "graphdsl embed-dataset"):
    """Show the run's warnings (a damaged shard redone) as one line each, without source lines."""
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"{prog}: warning: {message}", file=file or sys.stderr)
    with warnings.catch_warnings():
        warnings.simplefilter("always", integrity.DamagedShardWarning)
        warnings.showwarning = show
        yield
