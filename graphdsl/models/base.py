"""The media-model protocol: every hook ``graphdsl.embed`` calls on a model block, with its default.

A model file subclasses ``Block``, sets ``kind`` and ``example``, writes ``_build`` and overrides
only the hooks its architecture needs; embed never probes for a hook.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, ClassVar

import numpy as np

from .. import ops


class Block:
    """A model block: built from its config, called on a graph tensor.

    Calling ``block(x)`` declares every weight with the type its file stores (``cfg.wtypes``) and
    returns ``_build(x)``. The hooks, each with its default:

    - ``kind``: the ``build_inp_embd`` input kind ("image", "audio", "text").
    - ``output``: "inline" (rows of the decoder's input) or "cross" (memories the decoder attends
      to, ``Embeddings.cross``).
    - ``n_out``: the width of each output row (default ``cfg.n_out``).
    - ``n_per_layer``: how many per-layer outputs each row carries besides its embedding (Qwen3-VL's
      deepstack features): the build path returns rows of width ``n_out * (1 + n_per_layer)``, the
      embedding first, then each layer's features (llama.cpp mtmd's layout); embed puts the first
      ``n_out`` columns in ``Embeddings.embd`` and the rest in ``Embeddings.per_layer``.
    - ``example``: ``(shape, dtype)`` of one input the block accepts; ``Embedder`` declares the
      block's weights by calling it there.
    - ``rows(data)``: one item's data as a batch of rows of a fixed shape; the default
      ``build_items`` stacks items of equal row shape into one input and calls the block on it,
      which must return ``(B, n_per_row, width)``.
    - ``build_items(g, prefix, datas, batch_kinds)``: adds the graph of all items of this kind in
      a batch (``datas``, in batch order) to ``g``; returns ``(feeds, outs, key)``: the arrays to
      feed (names starting ``prefix + "."``), one ``(n_i, width)`` Tensor per item and a hashable
      key for what the feeds' shapes do not say (it joins the compiled-graph cache key).
      ``batch_kinds``: the kinds of the whole batch (Phi-4's audio projector follows whether the
      batch has an image). Override it where items do not stack (images of any size packed into
      one sequence, tiles, slices).
    - ``has_positions`` / ``positions(data, start)``: M-RoPE ids ``(3, n_i)`` of one item placed at
      ``start`` and the next text position (Qwen2-VL); blocks without set no flag.
    - ``valid_rows(data)``: for a cross memory, how many of its rows are real (the rest padding);
      None: all.
    - ``image_kw``: ``preprocess.ImageConfig`` fields the block fixes (Pixtral: its patch x merge).
    """

    kind: ClassVar[str] = ""
    output: ClassVar[str] = "inline"
    n_per_layer: ClassVar[int] = 0
    has_positions: ClassVar[bool] = False
    image_kw: Mapping[str, Any] = MappingProxyType({})

    def __init__(self, cfg):
        self.cfg = cfg

    n_out = property(lambda self: self.cfg.n_out)

    @property
    def example(self) -> tuple[tuple[int, ...], str]:
        raise NotImplementedError(f"{type(self).__name__} declares no example input")

    def __call__(self, x):
        # a user's config need not know about per-tensor file types
        with x.graph.weight_types(getattr(self.cfg, "wtypes", None)):
            return self._build(x)

    def _build(self, x):
        raise NotImplementedError

    def rows(self, data: Any) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} takes its items through build_items, not rows")

    def build_items(self, g, prefix: str, datas: Sequence[Any], batch_kinds: Sequence[str] = ()):
        """The stacked path: items of equal row shape as one input ``{prefix}.{j}`` (j: the group)."""
        groups: dict[tuple, list[tuple[int, np.ndarray]]] = {}
        for i, d in enumerate(datas):
            rows = self.rows(d)
            groups.setdefault(rows.shape[1:], []).append((i, rows))
        feeds, outs, where = {}, [None] * len(datas), [0] * len(datas)
        for j, members in enumerate(groups.values()):
            batch = np.concatenate([rows for _, rows in members])
            feeds[f"{prefix}.{j}"] = batch
            out = self(g.input(f"{prefix}.{j}", batch.shape))  # (B, n_per_row, width)
            r0 = 0
            for i, rows in members:
                m = len(rows)
                piece = out if m == out.shape[0] else ops.view(out, 0, r0, r0 + m, name=f"{prefix}.item{i}.rows")
                outs[i] = ops.reshape(piece, (m * out.shape[1], out.shape[2]), name=f"{prefix}.item{i}")
                where[i] = j
                r0 += m
        # which group each item went to: the shapes alone do not say it ([a, b, a] vs [a, a, b])
        return feeds, outs, tuple(where)

    def positions(self, data: Any, start: int) -> tuple[np.ndarray, int]:
        raise NotImplementedError(f"{type(self).__name__} has no M-RoPE positions (has_positions is False)")

    def valid_rows(self, data: Any) -> int | None:
        return None
