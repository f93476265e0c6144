"""Text embedding stage: the token table of a decoder, or BERT's full embedding stage.

    x = token_embd[ids]                                    (any table type: f32, f16, q8_0 ...)
    x = x + token_types[0] + position_embd[0:n]            (BERT only)
    x = LayerNorm(token_embd_norm)(x)                      (BERT only)

Example (MiniLM's embedding stage, the shape of BertModel.embeddings):
    >>> cfg = TextConfig(n_vocab=30522, n_embd=384, n_pos=512, n_types=2, norm_eps=1e-12)
    >>> build(cfg, n_tokens=7).outputs["embd"].shape
    (7, 384)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..graph import Graph, Tensor
from ..inp_embd import build_inp_embd
from .common import T, as_dict, keep_only, rename, strip_prefixes, sub, tn


@dataclass(frozen=True)
class TextConfig:
    """A token table (n_vocab, n_embd) stored as ``wtype``; n_pos / n_types / norm_eps for BERT."""

    n_vocab: int
    n_embd: int
    wtype: str = "f32"
    n_pos: int = 0
    n_types: int = 0
    norm_eps: float | None = None


class TextEmbedding:
    """ids i32 (n,) -> (n, n_embd)."""

    kind = "text"

    def __init__(self, cfg: TextConfig):
        self.cfg = cfg

    n_out = property(lambda self: self.cfg.n_embd)
    # an input (shape, dtype) whose graph declares every weight
    example = property(lambda self: ((1,), "i32"))

    def __call__(self, ids: Tensor) -> Tensor:
        c = self.cfg
        return build_inp_embd("text", ids, n_vocab=c.n_vocab, n_embd=c.n_embd, wtype=c.wtype,
                              n_pos=c.n_pos, n_types=c.n_types, norm_eps=c.norm_eps)


def build(cfg: TextConfig, n_tokens: int = 8) -> Graph:
    """A graph with input ``ids`` (n_tokens,) i32 and output ``embd``."""
    g = Graph("text_embd")
    g.output("embd", TextEmbedding(cfg)(g.input("ids", (n_tokens,), "i32")))
    return g


def weight_shapes(cfg: TextConfig) -> dict[str, tuple[int, ...]]:
    return {k: n.shape for k, n in build(cfg, n_tokens=1).weights.items()}


def config_from_hf(hf: Any, wtype: str = "f32") -> TextConfig:
    """TextConfig from an HF config: BERT-like (model_type bert, ...) gets the full embedding
    stage; any other (a decoder, or a multimodal config's text_config) just its token table."""
    d = as_dict(hf)
    if "text_config" in d:
        d = sub(d, "text_config")
    if d.get("model_type") in ("bert", "roberta", "xlm-roberta", "nomic_bert") or "type_vocab_size" in d:
        return TextConfig(d["vocab_size"], d["hidden_size"], wtype, n_pos=d.get("max_position_embeddings", 512),
                          n_types=d.get("type_vocab_size", 2), norm_eps=d.get("layer_norm_eps", 1e-12))
    return TextConfig(d["vocab_size"], d["hidden_size"], wtype)


def hf_to_gguf(state_dict, config) -> dict[str, np.ndarray]:
    """HF BertModel (embeddings.*) or decoder (model.embed_tokens / language_model ...) -> gguf names."""
    cfg = config if isinstance(config, TextConfig) else config_from_hf(config)
    sd = strip_prefixes(state_dict, ["model.language_model.", "language_model.model.", "language_model.",
                                     "bert.", "model."])
    rules = [("embeddings.word_embeddings.weight", tn(T.TOKEN_EMBD)), ("embed_tokens.weight", tn(T.TOKEN_EMBD)),
             ("embeddings.position_embeddings.weight", tn(T.POS_EMBD)),
             ("embeddings.token_type_embeddings.weight", tn(T.TOKEN_TYPES)),
             ("embeddings.LayerNorm.weight", tn(T.TOKEN_EMBD_NORM)),
             ("embeddings.LayerNorm.bias", tn(T.TOKEN_EMBD_NORM, "bias"))]
    return keep_only(rename(sd, rules), weight_shapes(cfg), "text")
