"""Mixed-batch embedding: a batch such as [text, image, text, audio, text] as ONE graph.

Text chunks go through the token table (get_rows), each media chunk through its encoder +
projector, and the results are concatenated in batch order into the decoder's input sequence
``(n_tokens_total, n_embd)``. Encoder outputs feed the concat directly: nothing is copied to the
host between stages. Media of one model and one input shape run as one batch (one set of
weights, batched matrix products): several images of a size, or all the 30 s windows of the
audio clips.

Items of a batch may be given as:

- ``preprocess.text.TextChunk`` or a 1-D integer array: token ids;
- ``preprocess.text.ImageChunk`` / ``AudioChunk`` whose ``ref`` is the pre-processed array
  (pixels f32 [3, H, W]; log-mel f32 [n_mel, k * 3000] or a list of [n_mel, 3000] windows);
- a pair ``(kind, array)``: kind "text", "embeddings" (f32 [n, n_embd], passed through) or a
  key of ``media`` ("image", "audio", ...).

Each text chunk is embedded on its own (a BERT-style table restarts its positions per chunk).
A second group of one model reuses its weights; its node names get a ``_1`` suffix.

Example:
    >>> from graphdsl.models import clip, text, whisper_enc
    >>> emb = Embedder(text.TextEmbedding(text_cfg),
    ...                {"image": clip.ClipVision(clip_cfg), "audio": whisper_enc.WhisperEncoder(wcfg)},
    ...                weights=weights)                       # strict: missing/extra/mis-shaped listed
    >>> out = emb([ids_a, ("image", pixels), ids_b, ("audio", mel), ids_c])
    >>> out.embd.shape, [(s.kind, s.start, s.n_tokens) for s in out.spans]   # doctest: +SKIP
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import ops
from .graph import Graph, Tensor
from .inp_embd import build_inp_embd, constants


@dataclass(frozen=True)
class Span:
    """Where chunk ``index`` of the batch lies in the output: rows [start, start + n_tokens)."""

    index: int
    kind: str
    start: int
    n_tokens: int


@dataclass
class Embeddings:
    """The decoder input (n_tokens_total, n_embd) and one Span per chunk, in batch order."""

    embd: np.ndarray
    spans: list[Span]


def as_item(item: Any) -> tuple[str, Any]:
    """Normalise one batch item to (kind, data)."""
    from .preprocess.text import AudioChunk, ImageChunk, TextChunk
    if isinstance(item, TextChunk):
        return "text", item.ids
    if isinstance(item, ImageChunk):
        return "image", item.ref
    if isinstance(item, AudioChunk):
        return "audio", item.ref
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
        return item
    if isinstance(item, np.ndarray) and item.ndim == 1 and np.issubdtype(item.dtype, np.integer):
        return "text", item
    raise ValueError(f"[embed] cannot tell the kind of batch item {type(item).__name__}; "
                     "pass a chunk from graphdsl.preprocess.text, an id array or a (kind, array) pair")


def build_mixed(items: Sequence[Any], text=None, media: Mapping[str, Any] | None = None
                ) -> tuple[Graph, dict[str, np.ndarray], list[Span]]:
    """Build the one graph of a mixed batch.

    Args:
        items: the batch (see the module docstring).
        text: the text model (``models.text.TextEmbedding``), needed when there are text chunks.
        media: kind -> media model (``ClipVision``, ``SiglipVision``, ``WhisperEncoder`` ...).

    Returns:
        (graph with output ``embd``, the inputs to feed it (constants included), spans).
    """
    media = dict(media or {})
    g = Graph("mixed_batch")
    feeds: dict[str, np.ndarray] = {}
    pieces: list[Tensor | None] = [None] * len(items)
    groups: dict[tuple, list[tuple[int, np.ndarray]]] = {}
    kinds = []
    for i, item in enumerate(items):
        kind, data = as_item(item)
        kinds.append(kind)
        if kind == "text":
            if text is None:
                raise ValueError(f"[embed] item {i} is text but no text model was given")
            ids = np.asarray(data).astype(np.int32).reshape(-1)
            feeds[f"text.{i}"] = ids
            pieces[i] = text(g.input(f"text.{i}", ids.shape, "i32"))
        elif kind == "embeddings":
            x = np.asarray(data, np.float32)
            feeds[f"embd.{i}"] = x
            pieces[i] = build_inp_embd("embeddings", g.input(f"embd.{i}", x.shape))
        elif kind in media:
            rows = media[kind].rows(data)
            groups.setdefault((kind, rows.shape[1:]), []).append((i, rows))
        else:
            raise ValueError(f"[embed] item {i} has kind {kind!r}; models given for: "
                             f"{sorted(['text', 'embeddings', *media])}")
    for gi, ((kind, _), members) in enumerate(groups.items()):
        batch = np.concatenate([rows for _, rows in members])
        name = f"{kind}.{gi}"
        feeds[name] = batch
        out = media[kind](g.input(name, batch.shape))  # (B, n_per_row, d)
        r0 = 0
        for i, rows in members:
            m = len(rows)
            piece = out if m == out.shape[0] else ops.view(out, 0, r0, r0 + m, name=f"chunk.{i}.rows")
            pieces[i] = ops.reshape(piece, (m * out.shape[1], out.shape[2]), name=f"chunk.{i}")
            r0 += m
    for i, item in enumerate(items):  # positions reserved by preprocess.text.chunk_prompt must match
        reserved = getattr(item, "n_tokens", None)
        if reserved is not None and reserved != pieces[i].shape[0]:
            raise ValueError(f"[embed] item {i} ({kinds[i]}) reserved {reserved} positions but its encoder "
                             f"gives {pieces[i].shape[0]}")
    widths = {p.shape[-1] for p in pieces}
    if len(widths) != 1:
        raise ValueError("[embed] chunks disagree on the embedding width: " +
                         ", ".join(f"{i}:{k}={p.shape[-1]}" for i, (k, p) in enumerate(zip(kinds, pieces))))
    g.output("embd", ops.concat(pieces, axis=0, name="embd") if len(pieces) > 1 else pieces[0])
    spans, start = [], 0
    for i, (k, p) in enumerate(zip(kinds, pieces)):
        spans.append(Span(i, k, start, p.shape[0]))
        start += p.shape[0]
    feeds.update(constants(g))
    return g, feeds, spans


class Embedder:
    """Runs mixed batches; one compiled graph per batch layout (kinds and shapes), cached.

    Args:
        text: text model (or None for media-only batches).
        media: kind -> media model.
        backend, precision, n_threads: as ``graphdsl.compile``.
        weights: gguf-named weights of all the models (strictly checked), or call load_weights.
        cache_size: compiled layouts kept.
    """

    def __init__(self, text=None, media: Mapping[str, Any] | None = None, *, backend: str = "cpu",
                 precision: str = "f32", n_threads: int | None = None, weights=None, cache_size: int = 8):
        self.text, self.media = text, dict(media or {})
        self.backend, self.precision, self.n_threads = backend, precision, n_threads
        self.cache_size = cache_size
        self._exes: OrderedDict[tuple, Any] = OrderedDict()
        self._weights: dict[str, np.ndarray] | None = None
        if weights is not None:
            self.load_weights(weights)

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
        from .backends.weights import check_weights
        self._weights = check_weights(self.weight_graph(), weights)
        for exe in self._exes.values():
            exe.load_weights({k: self._weights[k] for k in exe.graph.weights})

    def plan(self, items: Sequence[Any]) -> list[Span]:
        """The spans a batch will occupy, without running it."""
        return build_mixed(items, self.text, self.media)[2]

    def __call__(self, items: Sequence[Any], *, capture: Sequence[str] = ()) -> Embeddings:
        if self._weights is None:
            raise ValueError("[embed] no weights bound: call load_weights() first")
        g, feeds, spans = build_mixed(items, self.text, self.media)
        key = tuple((k, v.shape, str(v.dtype)) for k, v in feeds.items())
        exe = self._exes.get(key)
        if exe is None:
            from . import compile as _compile
            exe = _compile(g, self.backend, precision=self.precision, n_threads=self.n_threads)
            exe.load_weights({k: self._weights[k] for k in g.weights})
            self._exes[key] = exe
            while len(self._exes) > self.cache_size:
                self._exes.popitem(last=False)
        else:
            self._exes.move_to_end(key)
        out = exe(feeds, capture=capture)
        return Embeddings(out["embd"], spans)
