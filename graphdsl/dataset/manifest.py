"""What to embed: a folder of images / audio files, or a CSV, JSONL or Parquet manifest.

A manifest has one row per item with the columns (all but one of the last three optional):

    id       a unique name (default: the row number)
    prompt   text with <image> / <audio> markers, or
    tokens   token ids with markers, "1,2,<image>,3"
    images   image paths in marker order: a list (JSONL, Parquet), or in CSV a JSON list or
             paths separated by ";"
    audios   audio paths, the same way

Relative paths are relative to the manifest's folder. A folder gives one item per image or audio
file (recursively, sorted), with its relative path as the id and no prompt. Every file is checked
to exist, and ids to be unique, before any work starts.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
AUDIO_EXTS = frozenset({".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a"})


@dataclass(frozen=True)
class Item:
    id: str
    prompt: str | None = None
    tokens: str | None = None
    images: tuple[str, ...] = field(default_factory=tuple)
    audios: tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict:
        return {"id": self.id, "prompt": self.prompt, "tokens": self.tokens, "images": list(self.images),
                "audios": list(self.audios)}


def read_manifest(src: str | os.PathLike) -> list[Item]:
    """The items of a folder or a .csv / .jsonl / .parquet manifest (see the module docstring)."""
    p = Path(src)
    if p.is_dir():
        items = _folder(p)
    elif not p.exists():
        raise FileNotFoundError(f"{src}: no such file or folder")
    else:
        suffix = p.suffix.lower()
        readers = {".csv": _csv, ".jsonl": _jsonl, ".json": _jsonl, ".parquet": _parquet}
        if suffix not in readers:
            raise ValueError(f"{src}: a manifest is .csv, .jsonl or .parquet (or give a folder)")
        try:
            items = [_item(row, i, p.parent, src) for i, row in enumerate(readers[suffix](p))]
        except UnicodeDecodeError:  # its own message names neither the file nor the line
            raise ValueError(f"{src}: {_not_utf8(p)}; save the manifest as UTF-8") from None
    if not items:
        raise ValueError(f"{src}: nothing to embed (no items)")
    _check(items, src)
    return items


def _not_utf8(p: Path) -> str:
    data = p.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        return f"line {line} is not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start}: {e.reason})"
    return "not UTF-8 text"


def _folder(root: Path) -> list[Item]:
    items = []
    for dirpath, dirnames, files in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(files):
            path = Path(dirpath) / f
            ext = path.suffix.lower()
            rel = path.relative_to(root).as_posix()
            if ext in IMAGE_EXTS:
                items.append(Item(rel, images=(str(path),)))
            elif ext in AUDIO_EXTS:
                items.append(Item(rel, audios=(str(path),)))
    return sorted(items, key=lambda it: it.id)


def _csv(p: Path):
    with open(p, newline="", encoding="utf-8") as fh:
        yield from csv.DictReader(fh)


def _jsonl(p: Path):
    with open(p, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{p}:{n}: not JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{p}:{n}: each line must be a JSON object")
                yield row


def _parquet(p: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(f"{p}: reading a Parquet manifest needs pyarrow (pip install 'graphdsl[dataset]')") from None
    yield from pq.read_table(p).to_pylist()


def _paths(value, base: Path, where: str) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        s = value.strip()
        try:
            value = json.loads(s) if s.startswith("[") else [v for v in (x.strip() for x in s.split(";")) if v]
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: paths starting with '[' must be a JSON list ({e.msg} at character "
                             f"{e.pos}): {value!r}") from None
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}: paths must be a list of strings, got {value!r}")
    return tuple(str(base / v) for v in value)  # an absolute v stays absolute


def _item(row: dict, i: int, base: Path, src) -> Item:
    unknown = set(row) - {"id", "prompt", "tokens", "images", "audios"}
    if unknown:
        raise ValueError(f"{src}: row {i}: unknown column(s) {sorted(unknown)} (id, prompt, tokens, images, audios)")
    where = f"{src}: row {i}"
    text = {k: (None if row.get(k) in (None, "") else str(row[k])) for k in ("prompt", "tokens")}
    if text["prompt"] is not None and text["tokens"] is not None:
        raise ValueError(f"{where}: give a prompt or tokens, not both")
    rid = row.get("id")
    return Item(str(i) if rid in (None, "") else str(rid), text["prompt"], text["tokens"],
                _paths(row.get("images"), base, where), _paths(row.get("audios"), base, where))


def _check(items: list[Item], src) -> None:
    seen: dict[str, int] = {}
    dups = []
    for it in items:
        if it.id in seen:
            dups.append(it.id)
        seen[it.id] = 1
    if dups:
        raise ValueError(f"{src}: duplicate ids: {', '.join(dups[:5])}" + (" ..." if len(dups) > 5 else ""))
    empty = [it.id for it in items if not (it.prompt or it.tokens or it.images or it.audios)]
    if empty:
        raise ValueError(f"{src}: item(s) with nothing to embed: {', '.join(empty[:5])}")
    missing = [(it.id, f) for it in items for f in (*it.images, *it.audios) if not os.path.isfile(f)]
    if missing:
        raise FileNotFoundError(f"{src}: {len(missing)} missing file(s): "
                                + ", ".join(f"{f} (item {i})" for i, f in missing[:3]) + (" ..." if len(missing) > 3 else ""))
