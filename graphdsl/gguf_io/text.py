"""Text-model GGUFs: the token embedding table and the tokenizer.ggml.* vocabulary."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gguf import (
    MODEL_TENSOR,
    Keys,
)


from .mmproj import MMPROJ_ARCH, tn
from .reader import GGUFFile, GGUFTensor, TensorTable, metadata_value, read_gguf


# -- text models: token embeddings and the tokenizer.ggml.* vocabulary ---------------------------------
@dataclass
class TextInfo:
    architecture: str
    n_embd: int
    n_vocab: int
    tokenizer_model: str  # tokenizer.ggml.model: "llama", "gpt2", "bert", ...
    tokens: list[str]
    token_type: np.ndarray | None = None
    scores: np.ndarray | None = None
    merges: list[str] | None = None
    special: dict[str, int] = field(default_factory=dict)  # "bos", "eos", "unk", "sep", "pad", "mask"
    pre: str = ""  # tokenizer.ggml.pre
    hparams: dict[str, Any] = field(default_factory=dict)  # "{arch}.*" keys without the prefix
    hf_json: str = ""  # tokenizer.huggingface.json, when the file embeds one
    add_bos: bool | None = None  # tokenizer.ggml.add_bos_token / add_eos_token (None: not said)
    add_eos: bool | None = None
    path: str = ""  # the file it was read from, for errors
    file: GGUFFile | None = field(default=None, repr=False)  # the file itself, for carried settings


def load_text(path: str | os.PathLike | GGUFFile) -> tuple[TextInfo, GGUFTensor]:
    """A text model's vocabulary and `token_embd.weight` (any ggml type graphdsl runs, quantized too).

    Checks that the table has one row per token and `{arch}.embedding_length` columns. `path` may
    be a file already read with `read_gguf` (its other tensors are then at hand, not re-parsed).
    """
    f = path if isinstance(path, GGUFFile) else read_gguf(path)
    arch = f.architecture
    if not arch or arch == MMPROJ_ARCH:
        raise f.error(f"general.architecture is {arch!r}: not a text model")
    T = Keys.Tokenizer
    tokens = metadata_value(f, T.LIST, "strs")
    if not tokens:
        raise f.error(f"{T.LIST} is empty")
    emb = TensorTable(f.tensors, f.path, (((), f"text model {arch!r}"),))[tn(MODEL_TENSOR.TOKEN_EMBD)]
    n_embd = metadata_value(f, Keys.LLM.EMBEDDING_LENGTH.format(arch=arch), int, emb.shape[-1])
    if len(emb.shape) != 2 or emb.shape != (len(tokens), n_embd):
        raise f.error(f"token_embd.weight {emb.shape} disagrees with the metadata: "
                      f"({len(tokens)} tokens, embedding_length {n_embd})")
    if not emb.supported:
        raise f.error(f"token_embd.weight has type {emb.dtype}, which graphdsl cannot run")
    opt = {k: metadata_value(f, k, kind, None)
           for k, kind in ((T.TOKEN_TYPE, "ints"), (T.SCORES, "floats"), (T.MERGES, "strs"))}
    for key in (T.TOKEN_TYPE, T.SCORES):
        if opt[key] is not None:
            if len(opt[key]) != len(tokens):
                raise f.error(f"{key} has {len(opt[key])} entries for {len(tokens)} tokens")
            opt[key] = np.asarray(opt[key], np.int32 if key == T.TOKEN_TYPE else np.float32)
    special = {}
    for name, key in (("bos", T.BOS_ID), ("eos", T.EOS_ID), ("unk", T.UNK_ID), ("sep", T.SEP_ID),
                      ("pad", T.PAD_ID), ("mask", T.MASK_ID)):
        if key in f.metadata:
            v = metadata_value(f, key, int)
            if v < len(tokens):  # llama.cpp too ignores an out-of-range id (with a warning)
                special[name] = v
    info = TextInfo(arch, n_embd, len(tokens), metadata_value(f, T.MODEL, str, ""), tokens, opt[T.TOKEN_TYPE],
                    opt[T.SCORES], opt[T.MERGES], special, metadata_value(f, T.PRE, str, ""),
                    {k[len(arch) + 1:]: v for k, v in f.metadata.items() if k.startswith(arch + ".")},
                    metadata_value(f, T.HF_JSON, str, ""), metadata_value(f, T.ADD_BOS, bool, None),
                    metadata_value(f, T.ADD_EOS, bool, None), f.path, f)
    return info, emb
