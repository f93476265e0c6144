"""graphdsl: declarative multimodal graphs (text, image, audio -> embeddings) on ggml.

    >>> import numpy as np, graphdsl
    >>> from graphdsl import Graph, ops
    >>> g = Graph("mlp")
    >>> x = g.input("x", (3, 8))
    >>> g.output("y", ops.linear(x, g.weight("w", (4, 8))).gelu_erf())
    Tensor(%gelu_erf : f32[3,4])
    >>> run = graphdsl.compile(g, backend="cpu")
    >>> run.load_weights({"w": np.ones((4, 8), np.float32)})
    >>> run(x=np.ones((3, 8), np.float32))["y"].shape
    (3, 4)
"""
from __future__ import annotations

from ._libs import preload_pip_cuda

preload_pip_cuda()

from . import dtypes, ops  # noqa: E402
from .graph import Graph, Node, Tensor  # noqa: E402
from .options import RunOptions  # noqa: E402

__all__ = ["Graph", "Node", "Tensor", "ops", "dtypes", "compile", "devices", "RunOptions"]
__version__ = "0.1.0"


def compile(graph: Graph, backend: str | None = None, *, options: RunOptions | None = None,
            n_threads: int | None = None, precision: str | None = None, weights=None, strict: bool | None = None,
            max_programs: int | None = None):
    """Compile a graph for a backend; calling the result with NumPy inputs returns NumPy outputs.

    Args:
        graph: the Graph to run.
        options: a ``RunOptions`` (default: ``RunOptions()``: backend "auto", precision "f32").
        backend, n_threads, precision, strict, max_programs: shorthands for the ``RunOptions``
            fields of those names (``RunOptions.of``): backend "reference" (NumPy interpreter),
            "cpu", "auto" (accelerators first, CPU last), a backend family ("cuda", "metal",
            "blas") or a device name from devices(); precision "f32" lowers to exact f32 forms
            (with f16/bf16/quantized weights, ggml rounds the activations to the weight's dot
            type first: README, Precision policy), "fast" takes ggml's f16 fast paths; strict
            raises if the scheduler would move any node off the first device (no CPU fallback).
        weights: a mapping name -> array to bind now (or call .load_weights later).
    """
    o = RunOptions.of(options, backend=backend, n_threads=n_threads, precision=precision, strict=strict,
                      max_programs=max_programs)
    if o.backend == "reference":
        from .backends.reference import ReferenceExecutor
        return ReferenceExecutor(graph, weights)
    from .backends.ggml import GGMLExecutor
    kw = {} if o.max_programs is None else {"max_programs": o.max_programs}
    return GGMLExecutor(graph, o.backend, n_threads=o.n_threads, precision=o.precision, weights=weights,
                        strict=o.strict, **kw)


def devices() -> list[dict]:
    """Devices ggml's backend registry reports (name, description, type, memory, backend)."""
    from .backends.ggml import devices as _devices
    return _devices()
