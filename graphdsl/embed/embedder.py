"""``Embedder``: runs mixed batches, one compiled graph per batch layout, cached."""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..cross import CrossMemory, cross_spans
from ..graph import Graph
from ..options import RunOptions
from . import batch
from .result import Embeddings, Span


class Embedder:
    """Runs mixed batches; one compiled graph per batch layout (kinds and shapes), cached.

    Args:
        text: text model (or None for media-only batches).
        media: kind -> media model (``models.base.Block``).
        options: a ``RunOptions`` (backend, precision, n_threads, strict, max_programs as
            ``graphdsl.compile``); ``backend``, ``precision``, ``n_threads``: shorthands for its fields.
        weights: gguf-named weights of all the models (strictly checked), or call load_weights.
        cache_size: compiled layouts kept.
        cross: media kinds whose outputs are cross-attention memories (``Embeddings.cross``)
            rather than rows of the sequence; None: the models whose ``output`` is "cross".
    """

    def __init__(self, text=None, media: Mapping[str, Any] | None = None, *, options: RunOptions | None = None,
                 backend: str | None = None, precision: str | None = None, n_threads: int | None = None,
                 weights=None, cache_size: int = 8, cross=None):
        self.text, self.media = text, batch.check_media(media)
        self.cross = batch.cross_kinds(self.media, cross)
        self.options = RunOptions.of(options, backend=backend, precision=precision, n_threads=n_threads)
        self.cache_size = cache_size
        self._exes: OrderedDict[tuple, Any] = OrderedDict()
        self._weights: dict[str, np.ndarray] | None = None
        if weights is not None:
            self.load_weights(weights)

    backend = property(lambda self: self.options.backend)
    precision = property(lambda self: self.options.precision)
    n_threads = property(lambda self: self.options.n_threads)

    def weight_graph(self) -> Graph:
        """A graph that declares the weights of every model (built on each model's example input)."""
        g = Graph("embedder_weights")
        models = ([self.text] if self.text is not None else []) + list(self.media.values())
        for i, m in enumerate(models):
            shape, dtype = m.example
            out = m(g.input(f"example.{i}", shape, dtype))
            g.output(f"out.{i}", out)
        return g

    def load_weights(self, weights: Mapping[str, Any]) -> None:
        """Bind the weights of all models; missing, extra and mis-shaped ones are listed in one error."""
        from ..backends.weights import check_weights
        self._weights = check_weights(self.weight_graph(), weights)
        for exe in self._exes.values():
            exe.load_weights({k: self._weights[k] for k in exe.graph.weights})

    def plan(self, items: Sequence[Any]) -> list[Span]:
        """The spans a batch will occupy, without running it."""
        return batch.build_mixed(items, self.text, self.media, self.cross)[2]

    def __call__(self, items: Sequence[Any], *, capture: Sequence[str] = ()) -> Embeddings:
        if self._weights is None:
            raise ValueError("[embed] no weights bound: call load_weights() first")
        g, feeds, spans, layout = batch._build(items, self.text, self.media, self.cross)
        key = (tuple((k, v.shape, str(v.dtype)) for k, v in feeds.items()), layout)
        exe = self._exes.get(key)
        if exe is None:
            from .. import compile as _compile
            exe = _compile(g, options=self.options)
            exe.load_weights({k: self._weights[k] for k in g.weights})
            self._exes[key] = exe
            while len(self._exes) > self.cache_size:
                self._exes.popitem(last=False)
        else:
            self._exes.move_to_end(key)
        out = exe(feeds, capture=capture)
        return self._embeddings(out, items, spans)

    def _embeddings(self, out: Mapping[str, np.ndarray], items: Sequence[Any], spans: list[Span]) -> Embeddings:
        mems = [s for s in spans if s.kind in self.cross]
        n = sum(s.n_tokens for s in spans)
        width = out[f"cross.{mems[0].index}"].shape[-1] if mems else 0
        embd = out["embd"] if "embd" in out else np.zeros((0, width), np.float32)
        cross = []
        for kind in sorted({s.kind for s in mems}):
            ss = [s for s in mems if s.kind == kind]
            for s, (a, b) in zip(ss, cross_spans([s.start for s in ss], n)):
                e = out[f"cross.{s.index}"]
                k = self.media[kind].valid_rows(batch.as_item(items[s.index])[1])
                cross.append(CrossMemory(s.index, kind, e, e.shape[0] if k is None else k, a, b))
        return Embeddings(embd, spans, cross=sorted(cross, key=lambda m: m.index),
                          positions=batch.mrope_positions(items, spans, self.media),
                          per_layer=self._per_layer(out, spans, embd))

    def _per_layer(self, out: Mapping[str, np.ndarray], spans: list[Span], embd: np.ndarray) -> np.ndarray | None:
        """(n_per_layer, n_tokens, n_embd): each per-layer model's ``per_layer.{i}`` outputs at its
        rows, zero elsewhere (HF adds deepstack features at the visual positions only)."""
        n_layer = max((m.n_per_layer for k, m in self.media.items() if k not in self.cross), default=0)
        if n_layer == 0:
            return None
        res = np.zeros((n_layer, embd.shape[0], embd.shape[1]), np.float32)
        for s in spans:
            extra = out.get(f"per_layer.{s.index}")
            if extra is not None:
                layers = extra.reshape(s.n_tokens, -1, embd.shape[1]).transpose(1, 0, 2)
                res[:layers.shape[0], s.start:s.start + s.n_tokens] = layers
        return res
