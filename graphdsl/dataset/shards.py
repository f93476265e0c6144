"""Shards: the unit of work, of output and of resumption.

Items are cut in manifest order into shards of `shard_size`; shard k is written by whoever embeds
it (the serial loop, a pool worker or a Ray actor) to OUT/part-0000k.parquet through
`fileio.atomic_path`, so a shard file is whole or absent. OUT/_manifest.json lists the finished
shards (with each file's size, row count and first / last id) and the run's fingerprint (the
models' sha256, the settings, a hash of the items); it is rewritten atomically after each shard.
A rerun skips the listed shards that pass their check (`integrity`) and redoes the rest; a file
not listed (written just before a crash, or a killed run's temporary file) is removed first. A
rerun with another fingerprint is refused, naming what differs, unless asked to start over.
With on_error="skip", an item that fails is left out of its shard and listed (id, shard, error)
in the shard's entry and in OUT/_failed.jsonl; a shard whose items all failed has no file.

Parquet columns: id (string), n_tokens (int32), spans (list of struct index/kind/start/n_tokens),
embeddings (list of fixed_size_list<float32, n_embd>: one row of n_embd per token).
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..fileio import atomic_open, atomic_path
from . import integrity

MANIFEST = "_manifest.json"
FAILED = "_failed.jsonl"  # with on_error="skip": the items that failed, one JSON object a line
ON_ERROR = ("stop", "skip")
VERSION = 2  # 2: models by sha256, shard entries with their size in bytes


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def plan(items: list, shard_size: int) -> list[list]:
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    return [items[i:i + shard_size] for i in range(0, len(items), shard_size)]


def fingerprint(items: list, model_cfg: dict, shard_size: int, known: dict | None = None) -> dict:
    """What must match for a rerun to continue a run: the models' content, settings, items.

    known: the previous manifest's "files" (their hashes are reused for unchanged files)."""
    h = hashlib.sha256()
    for it in items:
        h.update(json.dumps(it.as_dict(), sort_keys=True).encode())
    settings = {k: model_cfg.get(k) for k in ("precision", "max_seconds", "markers")}
    return {"files": integrity.model_files(model_cfg, known), "settings": settings, "shard_size": shard_size,
            "n_items": len(items), "items_sha256": h.hexdigest()}


def previous(out: Path, restart: bool) -> dict | None:
    """The manifest a previous run left in `out` (None when there is none or we start over)."""
    m = out / MANIFEST
    if restart or not m.exists():
        return None
    try:
        doc = json.loads(m.read_text(encoding="utf-8"))
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise ValueError(f"{m}: unreadable ({e}); pass --force to start over") from None
    if doc.get("version") != VERSION:
        raise ValueError(f"{m}: written by another version of embed-dataset (manifest version "
                         f"{doc.get('version')!r}, this one writes {VERSION}); use a new folder, "
                         "or --force to start over")
    return doc


def load_done(out: Path, prev: dict | None, fp: dict) -> dict[int, dict]:
    """Finished shards (index -> entry) of the previous run, if it had fingerprint `fp`; each file is
    checked, and a damaged one left out (with a warning) to be redone. Then every file the
    result does not list is removed, so that `out` holds nothing its manifest does not list."""
    done = {}
    if prev is not None:
        why = integrity.differences(out, prev.get("fingerprint") or {}, fp)
        if why:
            raise ValueError(f"{out} holds shards of another run ({'; '.join(why)}); "
                             "use a new folder, or --force to start over")
        done = integrity.verified(out, prev.get("shards", []))
    integrity.remove_strays(out, {e["file"] for e in done.values() if e["file"]})
    return done


def save_manifest(out: Path, fp: dict, done: dict[int, dict], n_shards: int, n_embd: int | None) -> None:
    """OUT/_manifest.json, and OUT/_failed.jsonl (id, shard, error per line) while items failed."""
    shards = [done[k] for k in sorted(done)]
    failed = [{"id": f["id"], "shard": s["index"], "error": f["error"]} for s in shards for f in s.get("failed", ())]
    doc = {"version": VERSION, "fingerprint": fp, "n_shards": n_shards, "complete": len(done) == n_shards,
           "n_embd": n_embd, "n_failed": len(failed), "shards": shards}
    if failed:  # first: a manifest that counts failures always has their list beside it
        with atomic_open(out / FAILED, "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(f) + "\n" for f in failed)
    with atomic_open(out / MANIFEST, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=1)
        fh.write("\n")
    if not failed and (out / FAILED).exists():  # a run started over
        os.unlink(out / FAILED)


def embed_shard(fe, index: int, items: list, out: str | os.PathLike, tick=None, on_error: str = "stop") -> dict:
    """Embed one shard's items with a FileEmbedder and write its Parquet file atomically.

    Pre-processing of item i+1 (a thread: decoding, resizing, log-mel) overlaps the graph run of
    item i (ggml releases the GIL while it computes). tick(1) after each item. on_error: "stop"
    raises ValueError naming the first item that fails; "skip" leaves it out of the file and lists
    it, with its error, in the entry's "failed" (no file when all fail)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    def prep(it):
        return fe.items(it.images, it.audios, it.prompt, it.tokens)

    if on_error not in ON_ERROR:
        raise ValueError(f"[embed-dataset] on_error must be one of {ON_ERROR}, got {on_error!r}")
    ids, n_tok, spans, embs, pos, notes, failed = [], [], [], [], [], [], []
    with ThreadPoolExecutor(1, thread_name_prefix="graphdsl-prep") as pool:
        nxt = pool.submit(prep, items[0]) if items else None
        for k, it in enumerate(items):
            cur, nxt = nxt, (pool.submit(prep, items[k + 1]) if k + 1 < len(items) else None)
            try:
                res = fe.embedder(cur.result())
                if res.cross:  # never dropped silently: the Parquet rows hold inline embeddings only
                    raise ValueError(f"its {', '.join(sorted({m.kind for m in res.cross}))} encoder gives "
                                     "cross-attention memories, which embed-dataset does not store; use "
                                     "graphdsl embed --cross-output or Embedder from Python")
            except Exception as e:  # which item, for a dataset of thousands
                if on_error == "stop":
                    raise ValueError(f"item {it.id!r}: {e}") from e
                failed.append({"id": it.id, "error": " ".join(str(e).split()) or type(e).__name__})
                if tick is not None:
                    tick(1)
                continue
            e = np.ascontiguousarray(res.embd, dtype=np.float32)
            pos.append(None if res.positions is None else np.ascontiguousarray(res.positions.T, dtype=np.int32))
            notes.append(list(res.notes))
            ids.append(it.id)
            n_tok.append(e.shape[0])
            spans.append([{"index": s.index, "kind": s.kind, "start": s.start, "n_tokens": s.n_tokens}
                          for s in res.spans])
            embs.append(e)
            if tick is not None:
                tick(1)
    entry = {"index": index, "file": None, "n_items": 0, "first_id": None, "last_id": None, "n_tokens": 0,
             "n_embd": None, "bytes": 0, "failed": failed}
    if not ids:  # every item failed (on_error="skip"): no file, the entry lists them
        return entry
    n_embd = embs[0].shape[1]
    flat = pa.array(np.concatenate(embs).reshape(-1), pa.float32())
    rows = pa.FixedSizeListArray.from_arrays(flat, n_embd)
    offsets = pa.array(np.concatenate([[0], np.cumsum(n_tok)]).astype(np.int32), pa.int32())
    span_t = pa.list_(pa.struct([("index", pa.int32()), ("kind", pa.string()), ("start", pa.int32()),
                                 ("n_tokens", pa.int32())]))
    columns = {"id": pa.array(ids, pa.string()), "n_tokens": pa.array(n_tok, pa.int32()),
               "spans": pa.array(spans, span_t), "embeddings": pa.ListArray.from_arrays(offsets, rows)}
    if any(p is not None for p in pos):  # M-RoPE decoders (Qwen-VL): (t, h, w) ids of every row
        if any(p is None for p in pos):
            have = [i for i, p in zip(ids, pos) if p is not None][:3]
            lack = [i for i, p in zip(ids, pos) if p is None][:3]
            raise ValueError(f"[embed-dataset] {Path(out) / shard_name(index)}: items {have} have decoder positions "
                             f"(M-RoPE) and items {lack} do not; one shard stores one layout")
        ids3 = pa.FixedSizeListArray.from_arrays(pa.array(np.concatenate(pos).reshape(-1), pa.int32()), 3)
        columns["positions"] = pa.ListArray.from_arrays(offsets, ids3)
    if any(notes):  # how an arch laid an image out (MiniCPM-V's slice grid)
        columns["notes"] = pa.array(notes, pa.list_(pa.string()))
    table = pa.table(columns)
    name = shard_name(index)
    with atomic_path(Path(out) / name) as tmp:
        pq.write_table(table, tmp, write_page_checksum=True)  # read_output verifies: a flipped bit is an error
        size = os.path.getsize(tmp)
    return {**entry, "file": name, "n_items": len(ids), "first_id": ids[0], "last_id": ids[-1],
            "n_tokens": int(sum(n_tok)), "n_embd": int(n_embd), "bytes": size}


def read_output(out: str | os.PathLike):
    """The finished shards of OUT as one pyarrow Table, in item order."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    doc = json.loads((Path(out) / MANIFEST).read_text(encoding="utf-8"))
    tables = []
    for s in doc["shards"]:
        if s["file"] is None:  # all its items failed
            continue
        f = Path(out) / s["file"]
        try:
            tables.append(pq.read_table(f, page_checksum_verification=True))
        except (OSError, pa.ArrowException) as e:  # pyarrow's own message may not name the file
            raise ValueError(f"{f}: unreadable ({' '.join(str(e).split())}); delete it and rerun embed-dataset "
                             f"on {out}: a missing shard is redone") from e
    # a shard without notes (text-only items) gets nulls there: columns follow what the items gave
    return pa.concat_tables(tables, promote_options="default")
