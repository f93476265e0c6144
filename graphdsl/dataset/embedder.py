"""The model every runner loads, as plain values: the driver (`run`) builds the config, and each
worker process (`pool`) or Ray actor (`ray_runner`) makes its own FileEmbedder from it. Its own
module so that the runners need not import the driver that starts them."""
from __future__ import annotations

import os

from ..options import RunOptions


def model_config(mmproj=None, text_model=None, *, tokenizer=None, options: RunOptions | None = None,
                 backend: str | None = None, precision: str | None = None, n_threads: int | None = None,
                 check_finite: bool | None = None, max_seconds: float | None = None,
                 markers=("<image>", "<audio>")) -> dict:
    """Keyword arguments of FileEmbedder, as plain values (sent to worker processes and actors): the
    run options (``RunOptions.of(options, backend=..., ...)``) as their fields."""
    o = RunOptions.of(options, backend=backend, precision=precision, n_threads=n_threads, check_finite=check_finite,
                      max_seconds=max_seconds)
    f = lambda p: None if p is None else os.path.abspath(p)  # noqa: E731 - workers may start elsewhere
    return {"mmproj": f(mmproj), "text_model": f(text_model), "tokenizer": f(tokenizer), **o.as_dict(),
            "markers": list(markers)}


def load_embedder(cfg: dict):
    from ..embed import FileEmbedder
    return FileEmbedder(**cfg)
