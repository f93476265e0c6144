"""Pre-processing of many inputs on a thread pool.

Threads rather than processes: Pillow's decode/resize, NumPy's FFT and matmul, soxr and the
``tokenizers`` encoder all release the GIL, so threads scale on the heavy parts without pickling
images or spectrograms between processes. Each item is processed by the same pure function as
in the serial path, so the results are identical to a serial run (tested), only their
completion order varies, and outputs are returned in input order.

Example:
    >>> from graphdsl.preprocess import batch, image
    >>> cfg = image.ImageConfig.from_hf(hf_preprocessor_config)
    >>> pixels = batch.preprocess_images(paths, cfg, progress=lambda done, total: print(done, total))
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import numpy as np

from . import audio as _audio
from . import image as _image

T = TypeVar("T")
R = TypeVar("R")
Progress = Callable[[int, int], None]


def default_workers() -> int:
    """Threads to use: the CPUs this process may run on (CPU-bound work gains nothing beyond)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def parallel_map(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    max_workers: int | None = None,
    progress: Progress | None = None,
) -> list[R]:
    """``[fn(x) for x in items]`` on a thread pool, results in input order.

    Args:
        fn: a function that is safe to call from several threads at once.
        items: the inputs.
        max_workers: threads (None: ``default_workers()``; 1: run serially in this thread).
        progress: called as ``progress(done, total)`` from the calling thread after each item
            finishes (and once with ``done=0`` first), e.g. to drive a tqdm or rich bar.

    Returns:
        list of results, ``len(items)`` long.

    Raises:
        the exception of the first item to fail (in completion order), with a note naming the
        item's index; items not yet started are cancelled.
    """
    items = list(items)
    total = len(items)
    workers = default_workers() if max_workers is None else int(max_workers)
    if workers < 1:
        raise ValueError(f"[parallel_map] max_workers must be >= 1, got {max_workers}")
    if progress is not None:
        progress(0, total)
    results: list[Any] = [None] * total
    if workers == 1 or total <= 1:
        for i, x in enumerate(items):
            results[i] = _call(fn, x, i)
            if progress is not None:
                progress(i + 1, total)
        return results
    with _one_blas_thread(), cf.ThreadPoolExecutor(min(workers, total), thread_name_prefix="graphdsl-pre") as pool:
        futures = {pool.submit(_call, fn, x, i): i for i, x in enumerate(items)}
        done = 0
        try:
            for fut in cf.as_completed(futures):
                results[futures[fut]] = fut.result()
                done += 1
                if progress is not None:
                    progress(done, total)
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    return results


@contextlib.contextmanager
def _one_blas_thread():
    """Single-threaded BLAS while the pool runs, when threadpoolctl is installed.

    The log-mel's mel projection is a BLAS sgemm. Called from several pool threads at once,
    a multi-threaded OpenBLAS serialises the callers on its own thread pool and oversubscribes
    the cores: measured on 2 cores, 16 x 30 s took 156 ms with 2 workers against 112 ms
    serially; with BLAS limited to one thread per caller, 90 ms. The limit is process-wide
    for the duration of the batch."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _call(fn: Callable[[T], R], x: T, i: int) -> R:
    try:
        return fn(x)
    except Exception as e:
        if hasattr(e, "add_note"):  # Python >= 3.11
            e.add_note(f"while pre-processing item {i}")
        raise


def preprocess_images(
    sources: Sequence[_image.ImageSource],
    cfg: _image.ImageConfig,
    *,
    max_workers: int | None = None,
    progress: Progress | None = None,
) -> list[np.ndarray]:
    """``preprocess_image`` over many sources: a list of float32 [3, H, W]."""
    return parallel_map(lambda s: _image.preprocess_image(s, cfg), sources, max_workers=max_workers, progress=progress)


def stack_images(pixels: Sequence[np.ndarray]) -> np.ndarray:
    """Stack equal-shaped [3, H, W] arrays into one float32 [N, 3, H, W] batch."""
    shapes = {p.shape for p in pixels}
    if len(shapes) != 1:
        raise ValueError(f"[stack_images] need one shape to stack, got {sorted(shapes)}")
    return np.stack(pixels).astype(np.float32, copy=False)


def preprocess_audio(
    sources: Sequence[_audio.AudioSource],
    n_mels: int = 80,
    *,
    sample_rate: int | None = None,
    max_workers: int | None = None,
    progress: Progress | None = None,
    max_seconds: float = _audio.DEFAULT_MAX_SECONDS,
) -> list[tuple[list[np.ndarray], list[int]]]:
    """``whisper_chunks`` over many sources: per source, (chunks [n_mels, 3000], n_valid)."""
    fn = lambda s: _audio.whisper_chunks(s, n_mels, sample_rate=sample_rate, max_seconds=max_seconds)
    return parallel_map(fn, sources, max_workers=max_workers, progress=progress)
