"""WordPiece (BERT) vocabularies as llama.cpp's convert_hf_to_gguf.py writes them (tokenizer.ggml.*).

llama.cpp stores BERT tokens in "phantom space" form: a word-initial piece gets a leading
U+2581, a continuation piece loses its "##", and [SPECIAL] tokens stay as they are.
"""
from __future__ import annotations

import json
import os

import numpy as np
from gguf import Keys, TokenType


def phantom(tok: str) -> str:
    if tok.startswith("[") and tok.endswith("]"):
        return tok
    return tok[2:] if tok.startswith("##") else "\u2581" + tok


def _read_vocab(hf_dir: str) -> list[str]:
    txt = os.path.join(hf_dir, "vocab.txt")
    if os.path.exists(txt):
        with open(txt, encoding="utf-8") as fh:
            return [line.rstrip("\n") for line in fh]
    tj = os.path.join(hf_dir, "tokenizer.json")
    if os.path.exists(tj):
        with open(tj, encoding="utf-8") as fh:
            vocab = json.load(fh).get("model", {}).get("vocab")
        if isinstance(vocab, dict):
            return [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    raise ValueError(f"{hf_dir}: no vocab.txt or WordPiece tokenizer.json for the text model")


def bert_vocab(hf_dir: str, n_vocab: int) -> list[tuple[str, object]]:
    """tokenizer.ggml.* metadata for a BERT folder; the list is padded to the embedding's rows."""
    T = Keys.Tokenizer
    raw = _read_vocab(hf_dir)
    if len(raw) > n_vocab:
        raise ValueError(f"{hf_dir}: {len(raw)} tokens but token_embd has only {n_vocab} rows")
    raw += [f"[PAD{i}]" for i in range(len(raw), n_vocab)]
    index = {t: i for i, t in enumerate(raw)}
    types = [TokenType.CONTROL if t.startswith("[") and t.endswith("]") else TokenType.NORMAL for t in raw]
    for i in range(len(_read_vocab(hf_dir)), n_vocab):
        types[i] = TokenType.UNUSED
    kv: list[tuple[str, object]] = [(T.MODEL, "bert"), (T.LIST, [phantom(t) for t in raw]),
                                    (T.TOKEN_TYPE, np.array(types, np.int32))]
    cfg_path = os.path.join(hf_dir, "config.json")
    with open(cfg_path, encoding="utf-8") as fh:
        kv.append((T.TOKEN_TYPE_COUNT, json.load(fh).get("type_vocab_size", 2)))
    for key, tok in ((T.BOS_ID, "[CLS]"), (T.EOS_ID, "[SEP]"), (T.UNK_ID, "[UNK]"), (T.SEP_ID, "[SEP]"),
                     (T.PAD_ID, "[PAD]"), (T.MASK_ID, "[MASK]")):
        if tok in index:
            kv.append((key, index[tok]))
    kv += [(T.ADD_BOS, True), (T.ADD_EOS, True)]
    return kv
