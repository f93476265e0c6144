"""What a mixed batch gives: ``Embeddings`` (the decoder's input and where each chunk lies) and
the per-row modality codes HF's decoders read beside it."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..cross import CrossMemory, cross_mask


@dataclass(frozen=True)
class Span:
    """Where chunk ``index`` of the batch lies in the output: rows [start, start + n_tokens)."""

    index: int
    kind: str
    start: int
    n_tokens: int


# Per-row modality codes (Embeddings.modality) and Phi-4-multimodal's InputMode values
# (Embeddings.input_mode: which LoRA its decoder applies, and which audio projector it uses).
MODALITIES = ("text", "image", "audio", "embeddings")
INPUT_MODES = {"language": 0, "vision": 1, "speech": 2, "vision_speech": 3}


@dataclass
class Embeddings:
    """The decoder input (n_tokens_total, n_embd) and one Span per chunk, in batch order.

    ``positions``: for media models with M-RoPE decoders (Qwen2-VL), the (3, n_tokens_total) int32
    (t, h, w) position ids of every row (``mrope_positions``); None otherwise.
    ``per_layer``: for media models with per-layer outputs (``Block.n_per_layer``: Qwen3-VL's
    deepstack features), f32 (n_per_layer, n_tokens_total, n_embd): what the decoder adds to its
    hidden states after layer l at each row, zero on the rows of other chunks; None when no
    model of the batch has them.
    """

    embd: np.ndarray
    spans: list[Span]
    cross: list[CrossMemory] = field(default_factory=list)  # cross-attention memories, in batch order
    notes: list[str] = field(default_factory=list)  # per image, how its arch laid it out (slice grids)
    positions: np.ndarray | None = None
    per_layer: np.ndarray | None = None

    def cross_mask(self, kind: str | None = None) -> np.ndarray:
        """(n_tokens, rows of the memories of ``kind`` (all: None)) 0/1: which memory rows each
        sequence row may attend to (``cross.cross_mask``)."""
        return cross_mask([m for m in self.cross if kind in (None, m.kind)], self.embd.shape[0])

    @property
    def modality(self) -> np.ndarray:
        """(n_tokens_total,) int8: each row's ``MODALITIES`` index (0 text, 1 image, 2 audio, 3
        embeddings; another media kind gets 1 + its position after those)."""
        out = np.zeros(sum(s.n_tokens for s in self.spans), np.int8)
        for s in self.spans:
            out[s.start:s.start + s.n_tokens] = MODALITIES.index(s.kind) if s.kind in MODALITIES else len(MODALITIES)
        return out

    @property
    def input_mode(self) -> int:
        """Phi-4-multimodal's ``input_mode`` for the batch (its processor's rule): 3 with images
        and audio, 1 with images, 2 with audio, 0 for text alone."""
        kinds = {s.kind for s in self.spans}
        return INPUT_MODES[{(True, True): "vision_speech", (True, False): "vision", (False, True): "speech",
                            (False, False): "language"}["image" in kinds, "audio" in kinds]]
