"""What a resume may trust: the models by content, the finished shards by size, footer and ids.

A run's fingerprint names each model file by the sha256 of its bytes, not by its path, size and
mtime: a different model with the same size and timestamp (a copy with `cp -p`, `touch -r`) would
otherwise resume into an output that mixes two models' rows. Hashing reads the whole file once
(about 1 GB/s); a resume against an unchanged file reuses the hash its manifest recorded, keyed
by (device, inode, size, mtime_ns, ctime_ns): ctime cannot be set from user space, so a file
rewritten in place and touched back to its old mtime is hashed again.

A finished shard is checked on resume against its manifest entry (byte size, Parquet footer,
row count, first and last id): a truncated or damaged file is redone with a warning naming it,
instead of a rerun that exits 0 and a `read_output` that fails later.
"""
from __future__ import annotations

import hashlib
import os
import re
import warnings
from pathlib import Path

MODEL_KEYS = ("mmproj", "text_model", "tokenizer")
# fileio's temporary names for a shard, the manifest and the failure list while they are written (a
# run killed then leaves one behind; the folder's lock says no live run is writing it now)
_TEMP = re.compile(r"^\.(part-\d{5,}\.parquet|_manifest\.json|_failed\.jsonl)\.[0-9a-f]{8}\.tmp\.(parquet|json|jsonl)$")


class DamagedShardWarning(UserWarning):
    """A shard listed as finished failed its check on resume and is being redone."""


def _stat_key(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def file_sha256(path: str, known: dict | None = None) -> dict:
    """{"path", "sha256", "stat"} of a model file; `known` (a previous record) saves the read if
    its stat key still matches."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError as e:
        raise type(e)(f"{path}: cannot read the model file ({e.strerror})") from None
    key = _stat_key(st)
    if known and known.get("stat") == key and known.get("path") == real and known.get("sha256"):
        return {"path": real, "sha256": known["sha256"], "stat": key}
    h = hashlib.sha256()
    with open(real, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return {"path": real, "sha256": h.hexdigest(), "stat": key}


def model_files(cfg: dict, known: dict | None = None) -> dict[str, dict]:
    known = known or {}
    return {k: file_sha256(cfg[k], known.get(k)) for k in MODEL_KEYS if cfg.get(k) is not None}


def differences(out: Path, old: dict, new: dict) -> list[str]:
    """Why fingerprint `old` (the manifest's) is another run than `new`, one phrase each."""
    why = []
    of, nf = old.get("files", {}), new.get("files", {})
    for k in MODEL_KEYS:
        a, b = of.get(k), nf.get(k)
        if a is None and b is None:
            continue
        if a is None or b is None:
            why.append(f"--{k.replace('_', '-')}: {out} was made {'without one' if a is None else 'with ' + a['path']}"
                       f", this run has {'none' if b is None else b['path']}")
        elif a.get("sha256") != b["sha256"]:
            why.append(f"--{k.replace('_', '-')}: {out} was made with {a.get('path')} "
                       f"(sha256 {str(a.get('sha256'))[:12]}), this run has {b['path']} (sha256 {b['sha256'][:12]}): "
                       "another model")
    for k, what in (("settings", "settings"), ("shard_size", "--shard-size"), ("n_items", "number of items"),
                    ("items_sha256", "items")):
        if old.get(k) != new.get(k):
            why.append(f"{what}: {old.get(k)!r} then, {new.get(k)!r} now" if k != "items_sha256"
                       else "the items (ids, prompts or paths) differ")
    return why


def check_shard(out: Path, entry: dict) -> str | None:
    """None if the shard file matches its manifest entry, else what is wrong with it."""
    import pyarrow.parquet as pq
    if entry.get("file") is None:
        return None if entry.get("failed") else "listed without a file"
    p = out / entry["file"]
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        return "missing"
    if "bytes" in entry and size != entry["bytes"]:
        return f"{size} bytes, its manifest entry says {entry['bytes']} (truncated or replaced)"
    try:
        n = pq.read_metadata(p).num_rows
        ids = pq.read_table(p, columns=["id"], page_checksum_verification=True)["id"].to_pylist()
    except Exception as e:  # noqa: BLE001 - any reader error means the file cannot be trusted
        return f"unreadable ({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''})"
    if n != entry["n_items"] or not ids or (ids[0], ids[-1]) != (entry["first_id"], entry["last_id"]):
        got = f"{n} rows" + (f" ({ids[0]!r}..{ids[-1]!r})" if ids else "")
        return f"{got}, its manifest entry says {entry['n_items']} ({entry['first_id']!r}..{entry['last_id']!r})"
    return None


def verified(out: Path, entries: list[dict]) -> dict[int, dict]:
    """The entries whose files pass check_shard; a warning names each other one (it will be redone)."""
    good = {}
    for e in entries:
        why = check_shard(out, e)
        if why is None:
            good[int(e["index"])] = e
        else:
            where = out / e["file"] if e.get("file") else f"{out}: shard {e['index']}"
            warnings.warn(f"{where}: listed as finished but {why}; embedding shard {e['index']} again",
                          DamagedShardWarning, stacklevel=3)
    return good


def remove_strays(out: Path, keep: set[str]) -> list[str]:
    """Delete what a stopped or killed run left in `out`: temporary files (shards, manifest, failure
    list), and shard files the manifest does not list (`keep`). Only names this package writes are touched."""
    gone = []
    for name in os.listdir(out):
        if _TEMP.match(name) or (re.fullmatch(r"part-\d{5,}\.parquet", name) and name not in keep):
            try:
                os.unlink(out / name)
                gone.append(name)
            except FileNotFoundError:
                pass
    return gone
