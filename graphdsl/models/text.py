"""Text embedding stage: the token table of a decoder, or BERT's full embedding stage.

    x = token_embd[ids]                                    (any table type: f32, f16, q8_0 ...)
    x = x + token_types[0] + position_embd[0:n]            (BERT only)
    x = LayerNorm(token_embd_norm)(x)                      (BERT only)

From a text-model GGUF (``from_gguf``): the table as the file stores it (any type, quantized
too), BERT's extras when the file has them, and a tokenizer for the file's vocabulary
(``tokenizer_of``: the embedded tokenizer.json, else WordPiece rebuilt from tokenizer.ggml.*).

Example (MiniLM's embedding stage, the shape of BertModel.embeddings):
    >>> cfg = TextConfig(n_vocab=30522, n_embd=384, n_pos=512, n_types=2, norm_eps=1e-12)
    >>> build(cfg, n_tokens=7).outputs["embd"].shape
    (7, 384)
    >>> block, weights, info = from_gguf("minilm.gguf")                  # doctest: +SKIP
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from gguf import MODEL_ARCH, MODEL_ARCH_NAMES, Keys, get_tensor_name_map

from ..graph import Graph, Tensor
from ..inp_embd import build_inp_embd
from .common import file_types, graph_of, select_weights, weight_shapes_of
from .gguf_keys import T, tn
from .hf import as_dict, convert_state, sub
from . import settings
from .registry import Arch, TextConversion, register


@dataclass(frozen=True)
class TextConfig:
    """A token table (n_vocab, n_embd) stored as ``wtype``; n_pos / n_types / norm_eps for BERT."""

    n_vocab: int
    n_embd: int
    wtype: str = "f32"
    n_pos: int = 0
    n_types: int = 0
    norm_eps: float | None = None
    # per-tensor storage by gguf name, overriding wtype and the f32 default (a file's own types)
    wtypes: Mapping[str, str] = field(default_factory=dict, hash=False, repr=False)


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
        with file_types(ids.graph, c.wtypes):
            return build_inp_embd("text", ids, n_vocab=c.n_vocab, n_embd=c.n_embd, wtype=c.wtype,
                                  n_pos=c.n_pos, n_types=c.n_types, norm_eps=c.norm_eps)


def build(cfg: TextConfig, n_tokens: int = 8) -> Graph:
    """A graph with input ``ids`` (n_tokens,) i32 and output ``embd``."""
    return graph_of(TextEmbedding(cfg), (n_tokens,), "text_embd")


def weight_shapes(cfg: TextConfig) -> dict[str, tuple[int, ...]]:
    return weight_shapes_of(TextEmbedding(cfg))


def config_from_hf(hf: Any, wtype: str = "f32") -> TextConfig:
    """TextConfig from an HF config: BERT-like (model_type bert, ...) gets the full embedding
    stage; any other (a decoder, or a multimodal config's text_config) just its token table."""
    d = as_dict(hf)  # any decoder, or a multimodal config's text_config
    if "text_config" in d:
        d = sub(d, "text_config")
    if d.get("model_type") in ("bert", "roberta", "xlm-roberta", "nomic_bert") or "type_vocab_size" in d:
        return TextConfig(d["vocab_size"], d["hidden_size"], wtype, n_pos=d.get("max_position_embeddings", 512),
                          n_types=d.get("type_vocab_size", 2), norm_eps=d.get("layer_norm_eps", 1e-12))
    return TextConfig(d["vocab_size"], d["hidden_size"], wtype)


_RULES = [("embeddings.word_embeddings.weight", tn(T.TOKEN_EMBD)), ("embed_tokens.weight", tn(T.TOKEN_EMBD)),
          ("embeddings.position_embeddings.weight", tn(T.POS_EMBD)),
          ("embeddings.token_type_embeddings.weight", tn(T.TOKEN_TYPES)),
          ("embeddings.LayerNorm.weight", tn(T.TOKEN_EMBD_NORM)),
          ("embeddings.LayerNorm.bias", tn(T.TOKEN_EMBD_NORM, "bias"))]


def hf_to_gguf(state_dict, config) -> dict[str, np.ndarray]:
    """HF BertModel (embeddings.*) or decoder (model.embed_tokens / language_model ...) -> gguf names."""
    cfg = config if isinstance(config, TextConfig) else config_from_hf(config)
    prefixes = ["model.language_model.", "language_model.model.", "language_model.", "bert.", "model."]
    return convert_state(state_dict, prefixes, _RULES, weight_shapes(cfg), "text")


GGUF_ARCH = MODEL_ARCH_NAMES[MODEL_ARCH.BERT]  # the files graphdsl writes are BERT text models


def config_to_gguf(cfg: TextConfig, hf: Any = None) -> list[tuple[str, object]]:
    """The metadata of a BERT text-model file holding ``cfg``; the layer counts and widths it
    does not hold (graphdsl builds the embedding stage only) come from the HF config ``hf``,
    so that llama.cpp can load the file."""
    d = as_dict(hf) if hf is not None else {}
    L, A, arch = Keys.LLM, Keys.Attention, GGUF_ARCH
    return [(L.CONTEXT_LENGTH.format(arch=arch), cfg.n_pos or d.get("max_position_embeddings", 512)),
            (L.EMBEDDING_LENGTH.format(arch=arch), cfg.n_embd),
            (L.FEED_FORWARD_LENGTH.format(arch=arch), d.get("intermediate_size", 4 * cfg.n_embd)),
            (L.BLOCK_COUNT.format(arch=arch), d.get("num_hidden_layers", 0)),
            (A.HEAD_COUNT.format(arch=arch), d.get("num_attention_heads", 12)),
            (A.LAYERNORM_EPS.format(arch=arch), float(cfg.norm_eps if cfg.norm_eps is not None else 1e-12)),
            (A.CAUSAL.format(arch=arch), False)]


def bert_layers(sd: Mapping, config: Any, have: Mapping) -> dict[str, np.ndarray]:
    """The transformer layers of a BERT checkpoint, named by the gguf package's own HF map
    (graphdsl's text model builds only the embedding stage; the file stays loadable by llama.cpp)."""
    names = get_tensor_name_map(MODEL_ARCH.BERT, as_dict(config).get("num_hidden_layers", 12))
    out = {}
    for key, value in sd.items():
        name = names.get_name(key.removeprefix("bert."), try_suffixes=(".weight", ".bias"))
        if name is not None and name.startswith("blk.") and name not in have:
            out[name] = np.asarray(value, dtype=np.float32)
    return out


def _vocab(hf_dir: str, n_vocab: int) -> list:
    from ..gguf_io.vocab import bert_vocab
    return bert_vocab(hf_dir, n_vocab=n_vocab)


# -- GGUF text models --------------------------------------------------------------------------------
class TextModel(NamedTuple):
    """What ``from_gguf`` reads: the block, its weights (memory-mapped views) and the vocabulary."""

    block: TextEmbedding
    weights: dict[str, np.ndarray]
    info: Any  # gguf_io.TextInfo


def config_from_gguf(src: Any) -> TextConfig:
    """TextConfig from a text-model GGUF (a path or a ``read_gguf`` result): the token table at
    its stored type; BERT's position / token-type tables and LayerNorm when the file has them."""
    from ..gguf_io import GGUFFile, load_text, read_gguf
    f = src if isinstance(src, GGUFFile) else read_gguf(src)
    info, emb = load_text(f)
    t = f.tensors
    kw: dict[str, Any] = {}
    if tn(T.POS_EMBD) in t and tn(T.TOKEN_TYPES) in t:
        kw = dict(n_pos=t[tn(T.POS_EMBD)].shape[0], n_types=t[tn(T.TOKEN_TYPES)].shape[0])
        if tn(T.TOKEN_EMBD_NORM) in t:
            kw["norm_eps"] = float(info.hparams.get("attention.layer_norm_epsilon", 1e-12))
    return TextConfig(info.n_vocab, info.n_embd, emb.dtype, wtypes={n: x.dtype for n, x in t.items()}, **kw)


def from_gguf(path: str | os.PathLike, *, check_finite: bool = True) -> TextModel:
    """(TextEmbedding, weights, TextInfo) of a text-model GGUF; the weights are the file's arrays
    (no copy), only those the block uses. Errors name the file. check_finite: refuse weights
    holding NaN or inf (ValueError listing them; see ``gguf_io.finite`` for what is checked)."""
    from ..gguf_io import check_finite as refuse_nonfinite
    from ..gguf_io import load_text, read_gguf
    f = read_gguf(path)
    block = TextEmbedding(config_from_gguf(f))
    eps = block.cfg.norm_eps
    if eps is not None and not (np.isfinite(eps) and eps > 0):  # a NaN eps makes every row NaN
        raise ValueError(f"{f.path}: {f.architecture}.attention.layer_norm_epsilon must be finite and > 0, got {eps}")
    weights = select_weights(block, f.tensors, f.path)
    if check_finite:
        refuse_nonfinite({n: f.tensors[n] for n in weights}, f.path)
    return TextModel(block, weights, load_text(f)[0])


def tokenizer_of(info) -> Any:
    """A ``preprocess.TextTokenizer`` for a text GGUF's vocabulary (``gguf_io.TextInfo``).

    The embedded ``tokenizer.huggingface.json`` when there is one; else, for
    tokenizer.ggml.model "bert", WordPiece rebuilt from llama.cpp's phantom-space token list
    (``\u2581w`` -> ``w``, ``s`` -> ``##s``, [CONTROL] tokens as they are), with BERT's
    normaliser and pre-tokenizer and ``[CLS] $A [SEP]`` around the text, as HF's BertTokenizer
    builds them. The normaliser takes the file's carried tokenizer_config.json settings
    (do_lower_case, strip_accents, tokenize_chinese_chars: ``TOKENIZER``); a file without them
    (one llama.cpp wrote) gets HF's defaults, lower-casing as llama.cpp's WPM tokenizer does.
    Other vocabularies (SentencePiece, BPE) need their tokenizer.json.
    """
    from ..preprocess.text import TextTokenizer
    if info.hf_json:
        return TextTokenizer.from_str(info.hf_json, f"{info.path}: tokenizer.huggingface.json")
    if info.tokenizer_model != "bert":
        raise ValueError(f"[text] a {info.tokenizer_model or 'unknown'!r} vocabulary without an embedded "
                         "tokenizer.huggingface.json: pass a tokenizer.json (or token ids)")
    from gguf import TokenType
    from tokenizers import (
        AddedToken,
        Tokenizer,
        normalizers,
        pre_tokenizers,
        processors,
    )
    from tokenizers.models import WordPiece
    types = info.token_type if info.token_type is not None else np.full(info.n_vocab, TokenType.NORMAL)
    control = [t for t, k in zip(info.tokens, types) if k in (TokenType.CONTROL, TokenType.UNUSED)]
    vocab = {}
    for i, (tok, kind) in enumerate(zip(info.tokens, types)):
        word = tok if kind in (TokenType.CONTROL, TokenType.UNUSED) else (
            tok[1:] if tok.startswith("\u2581") else "##" + tok)
        vocab.setdefault(word, i)
    unk = info.tokens[info.special["unk"]] if "unk" in info.special else "[UNK]"
    tok = Tokenizer(WordPiece(vocab, unk_token=unk))
    norm = settings.read(ARCH, info.file)
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=bool(norm["tokenize_chinese_chars"]),
        strip_accents=norm["strip_accents"], lowercase=bool(norm["do_lower_case"]))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls, sep = info.special.get("bos"), info.special.get("sep", info.special.get("eos"))
    if cls is not None and sep is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{info.tokens[cls]} $A {info.tokens[sep]}",
            special_tokens=[(info.tokens[cls], cls), (info.tokens[sep], sep)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    return TextTokenizer(tok)


_L, _A = Keys.LLM, Keys.Attention
_K = "graphdsl.text."
# strip_accents is True, False or None (None: strip when lower-casing); stored as a string
_ACCENTS = {None: "none", True: "true", False: "false"}
TOKENIZER = (  # BertTokenizer's normaliser (HF's defaults), carried from tokenizer_config.json
    settings.carried("tokenizer", "do_lower_case", _K + "do_lower_case", True),
    settings.carried("tokenizer", "strip_accents", _K + "strip_accents", None,
                     to_gguf=lambda v: _ACCENTS[None if v is None else bool(v)],
                     from_gguf=lambda s: {v: k for k, v in _ACCENTS.items()}[s]),
    settings.carried("tokenizer", "tokenize_chinese_chars", _K + "tokenize_chinese_chars", True),
    settings.unless("tokenizer", "do_basic_tokenize", True, "graphdsl always splits on whitespace and "
                    "punctuation first (BERT's pre-tokenizer)"),
    settings.unless("tokenizer", "never_split", None, "graphdsl's BERT normaliser has no list of words kept whole"),
)
_LAYERS = "BERT's layers after the embedding stage graphdsl builds; their tensors are stored for llama.cpp"
SETTINGS = (
    settings.carried("config", "vocab_size", "tensor token_embd.weight"),
    settings.carried("config", "hidden_size", _L.EMBEDDING_LENGTH.format(arch=GGUF_ARCH)),
    settings.carried("config", "max_position_embeddings", _L.CONTEXT_LENGTH.format(arch=GGUF_ARCH)),
    settings.carried("config", "type_vocab_size", "tensor token_types.weight"),
    settings.carried("config", "layer_norm_eps", _A.LAYERNORM_EPS.format(arch=GGUF_ARCH)),
    settings.carried("config", "num_hidden_layers", _L.BLOCK_COUNT.format(arch=GGUF_ARCH)),
    settings.carried("config", "num_attention_heads", _A.HEAD_COUNT.format(arch=GGUF_ARCH)),
    settings.carried("config", "intermediate_size", _L.FEED_FORWARD_LENGTH.format(arch=GGUF_ARCH)),
    settings.irrelevant("config", "hidden_act", _LAYERS),
    settings.irrelevant("config", "classifier_dropout", "a classification head's, at training"),
    settings.unless("config", "position_embedding_type", "absolute", "graphdsl's BERT embedding adds absolute "
                    "positions"),
    *TOKENIZER,
)


ARCH = register(Arch(
    "text", "text", TextEmbedding, TextConfig, config_from_hf, config_from_gguf, config_to_gguf, hf_to_gguf,
    hf_model_types=("bert",), settings=SETTINGS, text_conversion=TextConversion(bert_layers, _vocab, GGUF_ARCH)))
