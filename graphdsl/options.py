"""How a graph runs, as one value: ``RunOptions``, with the one set of defaults every layer uses.

``graphdsl.compile``, ``embed.Embedder``, ``embed.FileEmbedder``, ``embed.embed_files`` and
``graphdsl.dataset`` take ``options=``; their individual keywords (``backend=``, ``n_threads=`` ...)
are shorthands that ``RunOptions.of`` folds into it, so no signature carries a default of its own.

    >>> from graphdsl.options import RunOptions
    >>> RunOptions().backend
    'auto'
    >>> RunOptions.of(RunOptions(n_threads=2), precision="fast")
    RunOptions(backend='auto', n_threads=2, precision='fast', check_finite=True, strict=False, max_programs=None, max_seconds=None)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class RunOptions:
    """Where and how graphs run.

    Attributes:
        backend: "auto" (the best devices present: accelerators first, CPU last), "cpu",
            "reference" (the NumPy interpreter), a backend family ("cuda", "metal", "blas") or a
            device name from ``graphdsl.devices()``.
        n_threads: CPU threads for ggml (None: all cores).
        precision: "f32" (exact f32 forms) or "fast" (ggml's f16 fast paths).
        check_finite: refuse GGUF weights holding NaN or inf when loading files.
        strict: refuse a plan that moves any node off the first device (no CPU fallback).
        max_programs: input-shape programs a ggml executor keeps (None: the executor's default).
        max_seconds: refuse longer audio when pre-processing files (None: the pre-processor's default).

    Each value is checked where it is used (the executor, the pre-processor), with the message
    that names it there.
    """

    backend: str = "auto"
    n_threads: int | None = None
    precision: str = "f32"
    check_finite: bool = True
    strict: bool = False
    max_programs: int | None = None
    max_seconds: float | None = None

    @classmethod
    def of(cls, options: RunOptions | None = None, **kw: Any) -> RunOptions:
        """``options`` (default: ``RunOptions()``) with the keywords given (not None) set.

        Raises:
            TypeError: a keyword that is not a field, or options that are not a RunOptions.
            ValueError: a keyword that contradicts a value ``options`` sets to something else.
        """
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(kw) - names)
        if unknown:
            raise TypeError(f"[RunOptions] unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        if options is not None and not isinstance(options, cls):
            raise TypeError(f"[RunOptions] options must be a RunOptions, got {type(options).__name__}")
        given = {k: v for k, v in kw.items() if v is not None}
        if options is None:
            return cls(**given)
        default = cls()
        clash = [k for k, v in given.items() if getattr(options, k) not in (v, getattr(default, k))]
        if clash:
            raise ValueError("[RunOptions] " + "; ".join(f"{k}={given[k]!r} contradicts options.{k}="
                                                         f"{getattr(options, k)!r}" for k in clash))
        return replace(options, **given)

    def as_dict(self) -> dict[str, Any]:
        """The fields as plain values (sent to worker processes)."""
        return asdict(self)
