"""Batch assembly: a mixed batch (text, media, precomputed embeddings) as ONE graph.

Every media model is a ``models.base.Block`` and goes through one path, its ``build_items``
hook (the default stacks items of equal row shape; see ``Block``), called once per kind with all
items of that kind in batch order.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .. import dtypes as dt
from .. import ops
from ..graph import Graph, Tensor
from ..inp_embd import build_inp_embd
from ..models.base import Block
from .result import Span


def as_item(item: Any) -> tuple[str, Any]:
    """Normalise one batch item to (kind, data)."""
    from ..preprocess.text import AudioChunk, ImageChunk, TextChunk
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


def build_mixed(items: Sequence[Any], text=None, media: Mapping[str, Any] | None = None, cross=None
                ) -> tuple[Graph, dict[str, np.ndarray], list[Span]]:
    """Build the one graph of a mixed batch.

    Args:
        items: the batch (see ``graphdsl.embed``).
        text: the text model (``models.text.TextEmbedding``), needed when there are text chunks.
        media: kind -> media model (a ``models.base.Block``: ``ClipVision``, ``WhisperEncoder`` ...).
        cross: kinds whose outputs are cross-attention memories (``cross_kinds``): their items
            give outputs ``cross.{i}`` instead of rows of ``embd``.

    Returns:
        (graph with output ``embd`` (absent when every item is cross) and, for the items of models
        with per-layer outputs, ``per_layer.{i}``; the inputs to feed it; spans).
    """
    return _build(items, text, media, cross)[:3]


def cross_kinds(media: Mapping[str, Any], cross=None) -> frozenset:
    """The kinds whose outputs are cross-attention memories: ``cross``, or (None) the media
    models whose ``output`` is "cross"."""
    if cross is None:
        return frozenset(k for k, m in media.items() if m.output == "cross")
    if isinstance(cross, str) or set(cross) - set(media):
        raise ValueError(f"[embed] cross must be a collection of media kinds ({sorted(media)}), got {cross!r}")
    return frozenset(cross)


def check_media(media: Mapping[str, Any]) -> dict[str, Block]:
    """``media`` as a dict, every model a ``Block`` (TypeError naming the kind otherwise)."""
    media = dict(media or {})
    for kind, m in media.items():
        if not isinstance(m, Block):
            raise TypeError(f"[embed] the {kind!r} model is a {type(m).__name__}, not a graphdsl.models.base.Block "
                            "(the protocol of the hooks embed calls)")
    return media


def _build(items: Sequence[Any], text=None, media: Mapping[str, Any] | None = None, cross=None):
    """build_mixed, plus the layout keys the media models' ``build_items`` return."""
    media = check_media(media)
    g = Graph("mixed_batch")
    feeds: dict[str, np.ndarray] = {}
    pieces: list[Tensor | None] = [None] * len(items)
    per_kind: dict[str, list[tuple[int, Any]]] = {}
    kinds = []
    for i, item in enumerate(items):
        kind, data = as_item(item)
        kinds.append(kind)
        if kind == "text":
            if text is None:
                raise ValueError(f"[embed] item {i} is text but no text model was given")
            ids = dt.as_i32(np.asarray(data), f"[embed] item {i} (text ids)").reshape(-1)
            feeds[f"text.{i}"] = ids
            pieces[i] = text(g.input(f"text.{i}", ids.shape, "i32"))
        elif kind == "embeddings":
            x = np.asarray(data, np.float32)
            feeds[f"embd.{i}"] = x
            pieces[i] = build_inp_embd("embeddings", g.input(f"embd.{i}", x.shape))
        elif kind in media:
            per_kind.setdefault(kind, []).append((i, data))
        else:
            raise ValueError(f"[embed] item {i} has kind {kind!r}; models given for: "
                             f"{sorted(['text', 'embeddings', *media])}")
    xk = cross_kinds(media, cross)
    layout = []
    for kind, members in per_kind.items():
        model = media[kind]
        name = f"{type(model).__name__}.build_items"
        kfeeds, outs, key = model.build_items(g, kind, [d for _, d in members], tuple(kinds))
        if len(outs) != len(members) or any(o.ndim != 2 for o in outs):
            raise RuntimeError(f"[embed] {name} returned {[o.shape for o in outs]} for {len(members)} items; "
                               "want one (n_i, d) tensor each")
        stray = [k for k in kfeeds if not k.startswith(f"{kind}.") or k in feeds]
        if stray:
            raise RuntimeError(f"[embed] {name} feeds {stray}: names must start with {kind + '.'!r} and be new")
        feeds.update(kfeeds)
        for (i, _), out in zip(members, outs):
            pieces[i] = _split_layers(g, model, kind in xk, i, out)
        layout.append((kind, key))
    for i, item in enumerate(items):  # positions reserved by preprocess.text.chunk_prompt must match
        reserved = getattr(item, "n_tokens", None)
        if reserved is not None and reserved != pieces[i].shape[0]:
            raise ValueError(f"[embed] item {i} ({kinds[i]}) reserved {reserved} positions but its encoder "
                             f"gives {pieces[i].shape[0]}")
    inline = [(i, k, p) for i, (k, p) in enumerate(zip(kinds, pieces)) if k not in xk]
    if len({p.shape[-1] for _, _, p in inline}) > 1:
        raise ValueError("[embed] chunks disagree on the embedding width: " +
                         ", ".join(f"{i}:{k}={p.shape[-1]}" for i, k, p in inline))
    if inline:
        ps = [p for _, _, p in inline]
        g.output("embd", ops.concat(ps, axis=0, name="embd") if len(ps) > 1 else ps[0])
    spans, start = [], 0
    for i, (k, p) in enumerate(zip(kinds, pieces)):
        if k in xk:
            g.output(f"cross.{i}", p)
        spans.append(Span(i, k, start, 0 if k in xk else p.shape[0]))
        start += spans[-1].n_tokens
    return g, feeds, spans, tuple(layout)


def _split_layers(g: Graph, model: Block, is_cross: bool, i: int, out: Tensor) -> Tensor:
    """Item ``i``'s rows for the sequence; a model with per-layer outputs (``Block.n_per_layer``)
    gives rows [embedding | layer 0 | layer 1 ...]: the rest goes to the output ``per_layer.{i}``."""
    n_layer = model.n_per_layer
    if n_layer == 0:
        return out
    width = model.n_out * (1 + n_layer)
    if is_cross or out.shape[1] != width:
        raise RuntimeError(f"[embed] {type(model).__name__} has n_per_layer {n_layer}: its rows must be inline and "
                           f"{model.n_out} x {1 + n_layer} = {width} wide, got {out.shape} for item {i}")
    g.output(f"per_layer.{i}", ops.view(out, 1, model.n_out, width, name=f"chunk.{i}.per_layer"))
    return ops.view(out, 1, 0, model.n_out, name=f"chunk.{i}.embd")


def mrope_positions(items: Sequence[Any], spans: Sequence[Span], media: Mapping[str, Any]) -> np.ndarray | None:
    """M-RoPE ids (3, n_tokens_total) int32 as HF's ``get_rope_index`` numbers a sequence: text rows
    count on from the last position (the same id in t, h and w), a media item whose model has
    positions (``Block.has_positions``) takes its own ``positions(data, start) -> (ids (3, n_i),
    next)``. None when no media model has them.

    Each media item is its own run, even next to another (HF's get_rope_index groups adjacent
    image tokens into one run and fails there; Qwen's prompts bracket every image with
    <|vision_start|> / <|vision_end|> text tokens, so the two agree on every prompt HF accepts).
    """
    if not any(m.has_positions for m in media.values()):
        return None
    out = np.zeros((3, sum(s.n_tokens for s in spans)), np.int32)
    pos = 0
    for item, span in zip(items, spans):
        kind, data = as_item(item)
        model = media.get(kind)
        if model is not None and model.has_positions:
            ids, nxt = model.positions(data, pos)
        else:
            ids, nxt = np.arange(pos, pos + span.n_tokens)[None].repeat(3, 0), pos + span.n_tokens
        if ids.shape != (3, span.n_tokens):
            raise RuntimeError(f"[embed] {type(model).__name__}.positions gave {ids.shape} for item {span.index} "
                               f"of {span.n_tokens} rows")
        out[:, span.start:span.start + span.n_tokens] = ids
        pos = nxt
    return out
