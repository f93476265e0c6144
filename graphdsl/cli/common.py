"""What every command shares: the missing-part error, progress bars on a terminal, saving an array,
showing a table."""
from __future__ import annotations

import importlib
import sys

import numpy as np

from ..fileio import atomic_open


class Unavailable(Exception):
    """A part of graphdsl that this command needs is not installed/written yet."""


def need(module: str):
    """Import `module`, or raise Unavailable where it (not something it imports) is missing."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and (e.name == module or module.startswith(e.name + ".")):
            raise Unavailable(f"not available yet: {module} is missing from this graphdsl") from None
        raise


def bar(total: int, desc: str):
    """A tqdm progress bar on a terminal (stderr), else None."""
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, file=sys.stderr, leave=False)


def progress(desc: str, total: int):
    """(progress(done, total), close) over one bar; no-ops when piped."""
    b = bar(total, desc)
    if b is None:
        return None, lambda: None

    def cb(done, _total):
        b.n = done
        b.refresh()
    return cb, b.close


def stages(desc: str):
    """(progress(stage, done, total), close) drawing a tqdm bar on a terminal; no-ops when piped."""
    held = [None]

    def cb(stage, done, total):
        if held[0] is None:
            held[0] = bar(total, desc) or False
        b = held[0]
        if b:
            if b.total != total:  # a new stage with its own count (convert: folders, then tensors)
                b.reset(total=total)
            b.set_description(f"{desc}: {stage}", refresh=False)
            b.n = done
            b.refresh()

    return cb, lambda: held[0] and held[0].close()


def save(path: str, arr: np.ndarray) -> None:
    # a file object, so np.save writes exactly `path` (given a name it would append ".npy")
    with atomic_open(path) as fh:
        np.save(fh, arr)


def show(obj, out=None) -> None:
    """A rich table on a terminal, plain text otherwise."""
    from ..inspect.table import show as show_table
    show_table(obj, out)


def seconds(args) -> dict:
    """--max-seconds as the keyword the library takes (absent: the library's default)."""
    return {} if args.max_seconds is None else {"max_seconds": args.max_seconds}
