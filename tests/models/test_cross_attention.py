"""Cross-attention memories in the mixed batch (graphdsl.cross, embed.Embedder(cross=...)).

- the span rule equals HF mllama's get_cross_attention_token_mask on random token layouts;
- mllama: a prompt [text, image, text, image] through HF's MllamaProcessor (tiny local
  tokenizer) and through graphdsl (preprocess.mllama + Embedder): the cross-attention mask,
  aspect-ratio ids and masks equal the processor's; HF's language model fed graphdsl's inline
  rows, cross_attention_states and mask gives HF's own logits (<= 1e-5 relative L2);
- Whisper's encoder as the memory of Whisper's decoder: the same mechanism, HF's logits again.

Every comparison has a negative control.
"""
from __future__ import annotations

import numpy as np
import pytest
from hf_refs import need_torch, randomize, rel_err
from test_models_mllama import mllama_tiny
from test_preprocess_mllama import TILE, WORDS, _img, tiny_processor

from graphdsl.cross import CrossMemory, cross_mask, cross_spans
from graphdsl.embed import Embedder
from graphdsl.models import mllama, whisper_enc
from graphdsl.models.text import TextConfig, TextEmbedding
from graphdsl.preprocess.mllama import MllamaImageConfig, mllama_image, mllama_items, stack_mllama
from target import BACKEND

BOUND = 1e-5


def test_spans_equal_hf_token_rule_on_random_layouts():
    pytest.importorskip("transformers")
    from transformers.models.mllama.processing_mllama import get_cross_attention_token_mask
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 12))
        ids = rng.choice([0, 0, 1], size=n)  # 1: the image token
        locs = [int(i) for i in np.flatnonzero(ids == 1)]
        if not locs:
            continue
        ref = [(a, n if b == -1 else min(b, n)) for a, b in get_cross_attention_token_mask(list(ids), 1)]
        assert cross_spans(locs, n) == ref, (ids, ref)
    with pytest.raises(ValueError, match="non-decreasing"):
        cross_spans([3, 1], 5)


def test_cross_mask_marks_valid_rows_of_each_span():
    mems = [CrossMemory(1, "image", np.zeros((4, 2)), 2, 1, 3), CrossMemory(3, "image", np.zeros((3, 2)), 3, 3, 5)]
    want = np.zeros((5, 7), np.float32)
    want[1:3, 0:2] = 1
    want[3:5, 4:7] = 1
    np.testing.assert_array_equal(cross_mask(mems, 5), want)


# -- mllama ------------------------------------------------------------------------------------------
PROMPT = "hello <|image|> what is this ? <|image|> hello world"  # [text, image, text, image, text]


@pytest.fixture(scope="module")
def mllama_run():
    """HF's inputs and logits for PROMPT with two images (2 and 3 tiles), and graphdsl's Embeddings."""
    torch = need_torch()
    cfg, model = mllama_tiny(cross_layers=(1,))
    imgs = [_img(20, 40, seed=1), _img(48, 16, seed=2)]
    inputs = tiny_processor()(images=[imgs], text=[PROMPT], return_tensors="pt")
    with torch.no_grad():
        ref = model(**inputs).logits[0].numpy()
    c = mllama.config_from_hf(cfg)
    w = mllama.hf_to_gguf(model.state_dict(), c)
    table = model.model.language_model.embed_tokens.weight.detach().numpy()
    w["token_embd.weight"] = table
    emb = Embedder(TextEmbedding(TextConfig(*table.shape)), {"image": mllama.MllamaVision(c)}, weights=w,
                   backend=BACKEND)
    ims = [mllama_image(i, MllamaImageConfig(tile_size=TILE, max_image_tiles=4)) for i in imgs]
    out = emb(mllama_items(inputs["input_ids"][0].numpy(), WORDS.index("<|image|>"), ims))
    return model, inputs, ref, c, ims, out


def test_mllama_layout_equals_hf_processor(mllama_run):
    _, inputs, _, c, ims, out = mllama_run
    assert [m.n_valid // c.n_pos for m in out.cross] == [2, 3] and out.embd.shape[0] == inputs["input_ids"].shape[1]
    np.testing.assert_array_equal(mllama.hf_cross_attention_mask(out, c), inputs["cross_attention_mask"].numpy())
    st = stack_mllama([ims])
    for k in ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask"):
        np.testing.assert_array_equal(st[k], inputs[k].numpy(), err_msg=k)
    # negative control: the images' spans swapped
    bad = [CrossMemory(m.index, m.kind, m.embd, m.n_valid, o.start, o.end) for m, o in zip(out.cross, out.cross[::-1])]
    assert not np.array_equal(mllama.hf_cross_attention_mask(type(out)(out.embd, out.spans, bad), c),
                              inputs["cross_attention_mask"].numpy())


def _lm_logits(model, inputs, embd, states, mask):
    torch = need_torch()
    with torch.no_grad():
        return model(inputs_embeds=torch.from_numpy(embd)[None], attention_mask=inputs["attention_mask"],
                     cross_attention_states=torch.from_numpy(states), cross_attention_mask=torch.from_numpy(mask)
                     ).logits[0].numpy()


def test_mllama_language_model_on_graphdsl_memories_gives_hf_logits(mllama_run):
    """HF's language model fed graphdsl's inline rows (the token table), cross_attention_states
    (the memories, HF's (images x tiles, P + 1, d) layout) and mask: HF's logits."""
    model, inputs, ref, c, _, out = mllama_run
    states = np.concatenate([m.embd for m in out.cross]).reshape(-1, c.n_pos, c.n_mm_embd)
    mask = mllama.hf_cross_attention_mask(out, c)
    err = rel_err(_lm_logits(model, inputs, out.embd, states, mask), ref)
    print(f"mllama end to end (logits) on {BACKEND}: {err:.2e}")
    assert err <= BOUND
    # negative controls: the two images' memories swapped; the second image's tile count wrong
    m0, m1 = (m.embd.reshape(4, c.n_pos, -1) for m in out.cross)
    assert rel_err(_lm_logits(model, inputs, out.embd, np.concatenate([m1, m0]), mask), ref) > 100 * BOUND
    bad_mask = mask.copy()
    bad_mask[..., 1, 3] = bad_mask[..., 1, 0]
    assert rel_err(_lm_logits(model, inputs, out.embd, states, bad_mask), ref) > 100 * BOUND


# -- Whisper: the encoder as the decoder's memory ----------------------------------------------------
@pytest.fixture(scope="module")
def whisper():
    torch = need_torch()
    from transformers import WhisperConfig, WhisperForConditionalGeneration
    torch.manual_seed(0)
    cfg = WhisperConfig(num_mel_bins=16, max_source_positions=16, max_target_positions=32, d_model=32,
                        encoder_attention_heads=4, decoder_attention_heads=4, encoder_layers=2, decoder_layers=2,
                        encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=50, decoder_start_token_id=1,
                        pad_token_id=0, bos_token_id=1, eos_token_id=2, attn_implementation="eager")
    model = randomize(WhisperForConditionalGeneration(cfg), 0)
    c = whisper_enc.config_from_hf(cfg)
    w = whisper_enc.hf_to_gguf(model.state_dict(), c)
    table = model.model.decoder.embed_tokens.weight.detach().numpy()
    w["token_embd.weight"] = table
    return model, c, w, table


def test_whisper_encoder_as_cross_memory_gives_hf_logits(whisper):
    torch = need_torch()
    model, c, w, table = whisper
    mel = np.random.default_rng(0).standard_normal((c.n_mel, c.n_frames)).astype(np.float32)
    ids = np.array([1, 7, 9, 4, 3], np.int32)
    with torch.no_grad():
        ref = model(input_features=torch.from_numpy(mel)[None], decoder_input_ids=torch.from_numpy(ids[None].astype(
            np.int64))).logits[0].numpy()
    media = {"audio": whisper_enc.WhisperEncoder(c)}
    emb = Embedder(TextEmbedding(TextConfig(*table.shape)), media, cross={"audio"}, weights=w, backend=BACKEND)
    out = emb([("audio", mel), ids])
    (mem,) = out.cross
    assert (mem.start, mem.end, mem.n_valid, out.embd.shape[0]) == (0, len(ids), c.n_ctx, len(ids))
    assert [s.n_tokens for s in out.spans] == [0, len(ids)]

    def logits(memory):
        with torch.no_grad():
            h = model.model.decoder(inputs_embeds=torch.from_numpy(out.embd)[None],
                                    encoder_hidden_states=torch.from_numpy(memory)[None]).last_hidden_state
            return model.proj_out(h)[0].numpy()

    err = rel_err(logits(mem.embd), ref)
    print(f"whisper encoder as cross memory (logits) on {BACKEND}: {err:.2e}")
    assert err <= BOUND
    # negative control: another clip's memory (attention over keys ignores their order, so a
    # permutation of the frames would not show; a mix-up of items does)
    other = emb([("audio", np.roll(mel, 7, axis=1)), ids]).cross[0].embd
    assert rel_err(logits(other), ref) > 100 * BOUND
    # the same model inline (the default for a model without output="cross"): no memories
    inline = Embedder(TextEmbedding(TextConfig(*table.shape)), media, weights=w, backend=BACKEND)([("audio", mel), ids])
    assert not inline.cross and inline.embd.shape[0] == c.n_ctx + len(ids)
    np.testing.assert_allclose(inline.embd[:c.n_ctx], mem.embd, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="media kinds"):
        Embedder(None, media, cross={"image"})
