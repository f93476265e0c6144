"""Writing output files without losing data: never over an input, never half-written.

Every file graphdsl writes (GGUF, .npy, .npz, drawings, charts, the demo's cache) goes through
`atomic_path` / `atomic_open`: the bytes go to a temporary file in the destination's folder,
are fsync'ed, and only then `os.replace` puts them at the destination. So

- a failed write (disk full, an exception, Ctrl-C) leaves the previous file as it was and no
  temporary file behind;
- a process that has the previous file memory-mapped (a GGUF being read) keeps reading the old
  bytes: the replacement is a new inode, the old one lives until it is unmapped.

`check_output` is the policy the command line applies before any work starts: an output may
never be one of the command's inputs (by resolved path or same inode, including files inside
input folders), and an existing output is replaced only when asked (`--force`).

    >>> with atomic_open("out.npy") as fh:            # doctest: +SKIP
    ...     np.save(fh, arr)                           # writes exactly "out.npy"
"""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = ["OutputExists", "OutputIsInput", "WriteFailed", "atomic_open", "atomic_path", "check_output"]


class OutputExists(FileExistsError):
    """The output file exists and replacing it was not asked for."""


class OutputIsInput(ValueError):
    """The output would overwrite one of the inputs."""


class WriteFailed(OSError):
    """Writing an output failed (disk full, file too large, ...); nothing partial was left. `errno`
    is the cause's where known; str() is one sentence naming the file."""

    def __init__(self, message: str, code: int | None, filename: str):
        super().__init__(message)
        self.message, self.errno, self.filename = message, code, filename

    def __str__(self) -> str:  # OSError's would be "[Errno 28] None: 'path'"
        return self.message


# the causes a write has of its own (a reader's error inside the block keeps its own type and message)
_WRITE_ERRORS = {getattr(errno, n) for n in ("ENOSPC", "EFBIG", "EDQUOT", "EIO", "EROFS") if hasattr(errno, n)}


def _cause(e: OSError, tmp: str) -> tuple[int | None, str]:
    """(errno, words) for a failed write. numpy's tofile (np.save to a file) says only "2048
    requested and 912 written", without errno: one more byte written to the same file tells."""
    code = e.errno
    if code is None:
        try:
            with open(tmp, "ab") as fh:
                fh.write(b"\0")
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as probe:
            code = probe.errno
    detail = e.strerror if e.errno is not None and e.strerror else str(e)
    if code is None:
        return None, f"{detail} (the cause is unknown: a further write succeeded)"
    why = f"{os.strerror(code)} ({errno.errorcode.get(code, code)})"
    return code, why if detail.strip() in ("", os.strerror(code)) else f"{why}: {detail}"


def _create_temp(folder: str, name: str) -> str:
    # not mkstemp: its 0600 would need os.umask() to undo, which is process-wide and races with threads;
    # O_CREAT with 0666 lets the kernel apply the umask, as open(path, "w") would
    for _ in range(100):
        tmp = os.path.join(folder, f".{name[:200]}.{secrets.token_hex(4)}.tmp{Path(name).suffix[:20]}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{folder}: no free temporary name for {name}")


def _fsync_dir(folder: str) -> None:
    # the rename itself is durable only once the folder's entry is on disk (POSIX; not on Windows)
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success fsync it and move it to `path`.

    The temporary name keeps `path`'s suffix (writers that pick a format by suffix still work).
    On any exception, KeyboardInterrupt included, the temporary file is removed and `path` is
    untouched. A symlink at `path` is written through (its target is replaced, the link stays).
    The new file gets the old file's permission bits, or 0666 less the umask as a new file would.
    """
    final = os.path.realpath(os.fspath(path))
    if os.path.isdir(final):
        raise IsADirectoryError(f"{path}: is a directory")
    folder, name = os.path.split(final)
    tmp = _create_temp(folder, name)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.chmod(tmp, os.stat(final).st_mode & 0o7777)
        yield Path(tmp)
        with open(tmp, "rb+") as fh:  # the writer may have closed its handle: fsync through a new one
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except OSError as e:  # the writers' own messages rarely say which file, or why ("2048 requested and 912 written")
        code, why = (None, "") if isinstance(e, WriteFailed) else _cause(e, tmp)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, WriteFailed) or (e.errno is not None and code not in _WRITE_ERRORS):
            raise
        left = "the previous file is unchanged" if os.path.exists(final) else "no file was created"
        raise WriteFailed(f"{path}: writing failed: {why}; nothing partial was left ({left})", code,
                          os.fspath(path)) from e
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", **kw):
    """`open(path, mode)` that replaces `path` only when the `with` block succeeds (see atomic_path)."""
    if not mode.startswith(("w", "x")):
        raise ValueError(f"atomic_open writes a new file: mode {mode!r} must start with 'w'")
    with atomic_path(path) as tmp, open(tmp, mode.replace("x", "w"), **kw) as fh:
        yield fh
        fh.flush()


def _inside(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


def check_output(path: str | os.PathLike, inputs: Iterable[str | os.PathLike | None] = (), *,
                 force: bool = False, what: str = "output") -> Path:
    """Refuse an output that is an input, a folder, in a missing folder, or exists without `force`.

    inputs: files and folders the command reads (None entries are skipped). A folder protects
    every existing file inside it; `force` never lifts the input check.

    Raises:
        OutputIsInput: `path` is (or is inside a folder that is) one of the inputs.
        OutputExists: `path` exists and `force` is false.
        ValueError: `path` is a folder, or its folder does not exist.
    """
    p = Path(path)
    real = os.path.realpath(p)
    exists = os.path.exists(real)
    for src in inputs:
        if src is None:
            continue
        s = os.path.realpath(src)
        if real == s or (exists and os.path.exists(s) and os.path.samefile(real, s)):
            raise OutputIsInput(f"{what} {p} is an input ({src}); refusing to write over it")
        if exists and os.path.isdir(s) and _inside(real, s):
            raise OutputIsInput(f"{what} {p} is a file inside the input folder {src}; "
                                "refusing to write over it (choose a new name)")
    if os.path.isdir(real):
        raise ValueError(f"{what} {p} is a folder, not a file")
    if not os.path.isdir(os.path.dirname(real)):
        raise ValueError(f"{what} {p}: folder {os.path.dirname(p) or '.'} does not exist")
    if exists and not force:
        raise OutputExists(f"{what} {p} exists; pass --force (-f) to replace it")
    return p
