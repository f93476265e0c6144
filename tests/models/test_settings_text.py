"""BERT tokenizers whose normaliser is not the default: tokenizer_config.json's do_lower_case,
strip_accents and tokenize_chinese_chars are carried into the GGUF (graphdsl.text.*) and the
tokenizer rebuilt from the file honours them. Each is checked through the CLI (convert, then
embed --prompt) against HF's BertTokenizer (the tokenizers one and the legacy Python one agree
first) and BertModel.embeddings, on a cased vocabulary with accents and CJK in the prompt. The
negative control: the same file without the carried keys (as llama.cpp writes it) lower-cases
and misses HF."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hf_refs import BOUND, bert_tiny, need_torch, rel_err
from settings_util import rewrite_gguf

from graphdsl.models import settings as st
from graphdsl.models import text

# a cased vocabulary: case, accents and CJK each change the ids
WORDS = ["the", "The", "THE", "cafe", "café", "Café", "CAFE", "naive", "naïve", "w3", "W3", "paris", "Paris",
         "中", "文", "中文", "e", "é", ",", ".", "##s", "##S", "##é", "##e"]
PROMPT = "The Café naïve W3s 中文 cafe, THE paris. Paris CAFÉ 中 Ünïcödé"
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CASES = {  # tokenizer_config.json fields
    "default": {},
    "cased": {"do_lower_case": False},
    "cased_strip_accents": {"do_lower_case": False, "strip_accents": True},
    "lower_keep_accents": {"do_lower_case": True, "strip_accents": False},
    "cased_no_cjk_split": {"do_lower_case": False, "tokenize_chinese_chars": False},
}
KEYS = [s.carry for s in text.TOKENIZER if s.carry]


def _cli(*args):
    r = subprocess.run([sys.executable, "-m", "graphdsl.cli", *map(str, args)], capture_output=True, text=True,
                       timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]


def _embed(gguf, work):
    out = work / f"{gguf.stem}.npy"
    _cli("embed", "--text-model", gguf, "--prompt", PROMPT, "-o", out, "--backend", "cpu", "--threads", "1", "-f")
    return np.load(out)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    need_torch()
    cfg, m = bert_tiny()
    vocab = SPECIAL + WORDS
    vocab += [f"x{i}" for i in range(cfg.vocab_size - len(vocab))]
    return m, vocab, tmp_path_factory.mktemp("bert_text")


def _hf(model, kw, folder):
    """HF's ids and embeddings for PROMPT, and the folder (model + tokenizer) graphdsl converts."""
    import torch
    from transformers import BertTokenizer
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy
    m, vocab, _ = model
    folder.mkdir(parents=True)
    m.save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizer(str(folder / "vocab.txt"), **kw).save_pretrained(folder)
    ids = BertTokenizer.from_pretrained(str(folder))(PROMPT)["input_ids"]
    assert BertTokenizerLegacy(str(folder / "vocab.txt"), **kw)(PROMPT)["input_ids"] == ids  # slow == fast
    with torch.no_grad():
        ref = m.embeddings(input_ids=torch.tensor([ids]))[0].numpy()
    return ids, ref


@pytest.mark.children
@pytest.mark.parametrize("name", list(CASES))
def test_tokenizer_settings_through_the_cli(model, name):
    work = model[2] / name
    ids, ref = _hf(model, CASES[name], work / "hf")
    gguf = work / "m.gguf"
    _cli("convert", work / "hf", "-o", gguf, "-f")
    from graphdsl.gguf_io import read_gguf
    meta = read_gguf(str(gguf)).metadata
    want = {**{"do_lower_case": True, "strip_accents": None, "tokenize_chinese_chars": True}, **CASES[name]}
    assert meta["graphdsl.text.do_lower_case"] == want["do_lower_case"]
    assert meta["graphdsl.text.tokenize_chinese_chars"] == want["tokenize_chinese_chars"]
    assert meta["graphdsl.text.strip_accents"] == {None: "none", True: "true", False: "false"}[want["strip_accents"]]
    got = _embed(gguf, work)
    assert got.shape == ref.shape and rel_err(got, ref) <= BOUND, (name, got.shape, ref.shape)
    if name != "default":  # negative control: without the carried keys, HF's defaults (lower-case) miss
        rewrite_gguf(gguf, work / "nokeys.gguf", drop=KEYS)
        bad = _embed(work / "nokeys.gguf", work)
        assert bad.shape != ref.shape or rel_err(bad, ref) > 100 * BOUND, name


def test_tokenizer_config_fields_are_declared(tmp_path):
    """Every field HF's BertTokenizer (and the legacy Python one) writes to tokenizer_config.json
    is declared by the text arch (carried, refused or irrelevant)."""
    import json
    need_torch()
    from transformers import BertTokenizer
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy
    (tmp_path / "vocab.txt").write_text("\n".join(SPECIAL + WORDS) + "\n", encoding="utf-8")
    fields = {}
    for i, cls in enumerate((BertTokenizer, BertTokenizerLegacy)):
        cls(str(tmp_path / "vocab.txt")).save_pretrained(tmp_path / str(i))
        fields.update(st.leaves(json.loads((tmp_path / str(i) / "tokenizer_config.json").read_text())))
    assert {"do_lower_case", "strip_accents", "tokenize_chinese_chars"} <= set(fields)
    assert st.undeclared(text.SETTINGS, "tokenizer", fields) == []


@pytest.mark.children
def test_refused_tokenizer_setting_stops_convert(model, tmp_path):
    """A tokenizer_config.json field graphdsl cannot honour stops convert, naming the file and field."""
    import json
    m, vocab, _ = model
    folder = tmp_path / "hf"
    m.save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_basic_tokenize": False}))
    r = subprocess.run([sys.executable, "-m", "graphdsl.cli", "convert", str(folder), "-o", str(tmp_path / "m.gguf")],
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode != 0 and not (tmp_path / "m.gguf").exists()
    assert "tokenizer_config.json: do_basic_tokenize=False is not supported by graphdsl (text)" in r.stderr, r.stderr
