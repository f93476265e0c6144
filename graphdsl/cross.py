"""Cross-attention memories: media a decoder attends to instead of reading inline.

Llama 3.2 Vision's decoder reads an image through cross-attention layers, and Whisper's decoder
reads the audio encoder's output the same way (the shape llama.cpp's discussion sketched as
``cparams_dec.ctx_cross[0] = ctx_enc``). In a mixed batch such an item adds no rows to the
decoder's input sequence; it becomes a ``CrossMemory``: its rows, and the rows of the inline
sequence that may attend to it.

Which rows may attend (HF mllama's ``get_cross_attention_token_mask``, on positions): a memory
sits at the inline row where its item is in the batch (the number of inline rows before it); the
rows from there up to the next memory of the same kind may attend to it, the last one's up to
the end. Memories at most one row apart (HF's consecutive ``<|image|>`` tokens) share the span
after the last of them. For mllama the item goes right before its ``<|image|>`` token (see
``preprocess.mllama.mllama_items``), so the span starts at that token, as in HF.

    >>> cross_spans([2, 5], 8)                # image at row 2, image at row 5, 8 inline rows
    [(2, 5), (5, 8)]
    >>> cross_spans([2, 3], 8)                # consecutive (one row apart): both up to the end
    [(2, 8), (3, 8)]
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class CrossMemory:
    """One cross-attended batch item.

    Attributes:
        index: the item's index in the batch.
        kind: its kind ("image", "audio").
        embd: (n_rows, width) f32, the rows a decoder's cross-attention takes keys/values from.
        n_valid: the first n_valid rows are real; the rest are padding that must be masked (mllama:
            the empty tiles HF pads every image with, kept so the rows match HF's layout).
        start, end: the inline rows [start, end) that may attend to it.
    """

    index: int
    kind: str
    embd: np.ndarray
    n_valid: int
    start: int
    end: int

    @property
    def n_rows(self) -> int:
        return int(self.embd.shape[0])


def cross_spans(positions: Sequence[int], length: int) -> list[tuple[int, int]]:
    """The inline rows [start, end) that may attend to memories at ``positions`` (non-decreasing
    rows in 0..length), by the rule in the module doc."""
    pos = [int(p) for p in positions]
    if any(b < a for a, b in zip(pos, pos[1:])) or any(not 0 <= p <= length for p in pos):
        raise ValueError(f"[cross_spans] positions {pos} must be non-decreasing in 0..{length}")
    ends, end = [0] * len(pos), length
    for i in range(len(pos) - 1, -1, -1):
        if i + 1 == len(pos) or pos[i + 1] - pos[i] > 1:
            end = pos[i + 1] if i + 1 < len(pos) else length
        ends[i] = end
    return list(zip(pos, ends))


def cross_mask(memories: Sequence[CrossMemory], n_tokens: int) -> np.ndarray:
    """(n_tokens, total memory rows) f32 with 1 where inline row t may attend to memory row r
    (the memories' rows concatenated in batch order, as a decoder stacks them): HF mllama's
    ``cross_attention_mask`` with its tiles expanded to rows, for one prompt."""
    out = np.zeros((n_tokens, sum(m.n_rows for m in memories)), np.float32)
    r = 0
    for m in memories:
        out[m.start:m.end, r:r + m.n_valid] = 1
        r += m.n_rows
    return out
