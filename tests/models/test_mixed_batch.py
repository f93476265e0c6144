"""Mixed batches as one graph: [text, image, text, audio, text] equals the per-chunk results concatenated."""
import numpy as np
import pytest
from hf_refs import BOUND, llava_tiny, need_torch, rel_err, voxtral_tiny
from target import BACKEND, assert_close

from graphdsl.embed import Embedder, Span, build_mixed
from graphdsl.models import clip, text, whisper_enc
from graphdsl.models.base import Block
from graphdsl.preprocess.text import AudioChunk, ImageChunk, TextChunk


@pytest.fixture(scope="module")
def models():
    """LLaVA (CLIP + projector + its token table, width 48) and Voxtral (Whisper + projector, width 48)."""
    need_torch()
    lcfg, llava = llava_tiny()
    vcfg, vox = voxtral_tiny()
    tc, cc, wc = text.config_from_hf(lcfg), clip.config_from_hf(lcfg), whisper_enc.config_from_hf(vcfg)
    w = {**text.hf_to_gguf(llava.state_dict(), tc), **clip.hf_to_gguf(llava.state_dict(), cc),
         **whisper_enc.hf_to_gguf(vox.state_dict(), wc)}
    emb = Embedder(text.TextEmbedding(tc), {"image": clip.ClipVision(cc), "audio": whisper_enc.WhisperEncoder(wc)},
                   backend=BACKEND, weights=w)
    return emb, llava, vox, wc


def _hf_chunk(kind, data, llava, vox):
    import torch
    with torch.no_grad():
        if kind == "text":
            return llava.model.language_model.embed_tokens(torch.from_numpy(data.astype(np.int64))).numpy()
        if kind == "image":
            return llava.model.get_image_features(torch.from_numpy(data[None]), vision_feature_layer=-2,
                                                  vision_feature_select_strategy="default",
                                                  interpolate_pos_encoding=True).pooler_output[0].numpy()
        return vox.get_audio_features(torch.from_numpy(data)).pooler_output.numpy()


def test_text_image_text_audio_text(models):
    emb, llava, vox, wc = models
    rng = np.random.default_rng(0)
    mel = rng.standard_normal((wc.n_mel, 3 * wc.n_frames)).astype(np.float32)  # 3 windows
    items = [("text", rng.integers(0, 64, 5)), ("image", rng.standard_normal((3, 32, 32)).astype(np.float32)),
             ("text", rng.integers(0, 64, 3)), ("audio", mel), ("text", rng.integers(0, 64, 2))]
    out = emb(items)
    assert [(s.kind, s.start, s.n_tokens) for s in out.spans] == [
        ("text", 0, 5), ("image", 5, 16), ("text", 21, 3), ("audio", 24, 24), ("text", 48, 2)]
    assert out.embd.shape == (50, 48)
    assert emb.plan(items) == out.spans
    refs = [_hf_chunk(k, emb.media["audio"].rows(d) if k == "audio" else d, llava, vox) for k, d in items]
    for s, ref in zip(out.spans, refs):
        assert rel_err(out.embd[s.start:s.start + s.n_tokens], ref) <= BOUND, s
    # each chunk alone gives the same rows
    for s, item in zip(out.spans, items):
        alone = emb([item]).embd
        assert_close(out.embd[s.start:s.start + s.n_tokens], alone, rtol=1e-6, atol=1e-6)


def test_three_images_equal_three_single_runs(models):
    emb, *_ = models
    rng = np.random.default_rng(1)
    imgs = [rng.standard_normal((3, 32, 32)).astype(np.float32) for _ in range(3)]
    _, feeds, _ = build_mixed([("image", x) for x in imgs], emb.text, emb.media)
    assert [k for k in feeds if k.startswith("image")] == ["image.0"] and feeds["image.0"].shape == (3, 3, 32, 32)
    batched = emb([("image", x) for x in imgs]).embd
    singles = np.concatenate([emb([("image", x)]).embd for x in imgs])
    assert_close(batched, singles, rtol=1e-6, atol=1e-6)


def test_mixed_sizes_preprocess_chunks_and_embeddings(models):
    """Images of two sizes (two batches sharing the weights), chunk objects, precomputed embeddings."""
    emb, llava, vox, wc = models
    rng = np.random.default_rng(2)
    a, b, c = (rng.standard_normal((3, *hw)).astype(np.float32) for hw in [(32, 32), (40, 24), (32, 32)])
    pre = rng.standard_normal((4, 48)).astype(np.float32)
    mel = [rng.standard_normal((wc.n_mel, wc.n_frames)).astype(np.float32)]
    items = [TextChunk(np.array([1, 2, 3], np.int32)), ImageChunk(a, 16), ImageChunk(b, 15), ("embeddings", pre),
             ImageChunk(c, 16), AudioChunk(mel, 8)]
    g, feeds, spans = build_mixed(items, emb.text, emb.media)
    assert sorted(k for k in feeds if k.startswith("image")) == ["image.0", "image.1"]
    assert [s.n_tokens for s in spans] == [3, 16, 15, 4, 16, 8]
    assert list(g.outputs) == ["embd"]  # one graph, one output: encoder outputs feed the concat directly
    out = emb(items)
    np.testing.assert_array_equal(out.embd[34:38], pre)
    for s, (k, d) in zip(out.spans, [("text", items[0].ids), ("image", a), ("image", b), (None, None), ("image", c),
                                     ("audio", np.stack(mel))]):
        if k is not None:
            assert rel_err(out.embd[s.start:s.start + s.n_tokens], _hf_chunk(k, d, llava, vox)) <= BOUND


def test_reference_backend_agrees(models):
    emb, *_ = models
    ref = Embedder(emb.text, emb.media, backend="reference", weights=emb._weights)
    items = [np.array([4, 5], np.int32), ("image", np.ones((3, 32, 32), np.float32))]
    assert rel_err(emb(items).embd, ref(items).embd) <= BOUND


def test_errors(models):
    emb, *_ = models
    with pytest.raises(ValueError, match=r"kind 'video'.*models given for"):
        emb.plan([("video", np.zeros(3))])
    with pytest.raises(ValueError, match=r"item 0 \(image\) reserved 15 positions but its encoder gives 16"):
        emb.plan([ImageChunk(np.zeros((3, 32, 32), np.float32), 15)])
    with pytest.raises(ValueError, match=r"\[clip\] an image must be pre-processed pixels"):
        emb.plan([ImageChunk("cat.png", 16)])
    with pytest.raises(ValueError, match="disagree on the embedding width"):
        emb.plan([np.array([1], np.int32), ("embeddings", np.zeros((2, 7), np.float32))])
    with pytest.raises(ValueError, match=r"missing 1: mm\.2\.weight.*unexpected 1: bogus"):
        w = {k: v for k, v in emb._weights.items() if k != "mm.2.weight"}
        Embedder(emb.text, emb.media, weights={**w, "bogus": np.zeros(1, np.float32)})
    with pytest.raises(ValueError, match="no weights bound"):
        Embedder(emb.text, emb.media)([np.array([1], np.int32)])


def test_layout_cache(models):
    emb, *_ = models
    emb._exes.clear()
    for n in (3, 3, 4):
        emb([np.arange(n, dtype=np.int32), ("image", np.zeros((3, 32, 32), np.float32))])
    assert len(emb._exes) == 2
    assert Span(0, "text", 0, 3) == emb.plan([np.arange(3)])[0]


class _PackedRows(Block):
    """A toy media model overriding ``build_items``: items are (n_i, 4) arrays of any n_i, packed into
    ONE input and one matrix product, then split back per item (as Qwen2-VL packs images of any size)."""

    example = ((3, 4), "f32")

    def __init__(self):
        super().__init__(None)

    def _build(self, x):
        from graphdsl import blocks
        return blocks.linear(x, "toy.proj", 6, bias=False)

    def build_items(self, g, prefix, datas, batch_kinds=()):
        from graphdsl import ops
        packed = np.concatenate([np.asarray(d, np.float32) for d in datas])
        y = self(g.input(f"{prefix}.items", packed.shape))
        outs, r0 = [], 0
        for j, d in enumerate(datas):
            outs.append(ops.view(y, 0, r0, r0 + len(d), name=f"toy.{j}"))
            r0 += len(d)
        return {f"{prefix}.items": packed}, outs, tuple(len(d) for d in datas)


def test_build_items_packs_any_sizes_into_one_input_and_keys_the_cache_by_layout():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((6, 4)).astype(np.float32)
    emb = Embedder(None, {"rows": _PackedRows()}, backend=BACKEND, weights={"toy.proj.weight": w})
    a, b = rng.standard_normal((2, 4)).astype(np.float32), rng.standard_normal((3, 4)).astype(np.float32)
    e = rng.standard_normal((1, 6)).astype(np.float32)
    g, feeds, spans = build_mixed([("rows", a), ("embeddings", e), ("rows", b)], None, emb.media)
    assert list(feeds) == ["embd.1", "rows.items"] and feeds["rows.items"].shape == (5, 4)  # one packed input
    for order in ([a, b], [b, a]):  # same packed shape (5, 4), different split: must not reuse the graph
        out = emb([("rows", order[0]), ("embeddings", e), ("rows", order[1])])
        assert [(s.start, s.n_tokens) for s in out.spans] == [(0, len(order[0])), (len(order[0]), 1),
                                                               (len(order[0]) + 1, len(order[1]))]
        assert_close(out.embd, np.concatenate([order[0] @ w.T, e, order[1] @ w.T]), rtol=1e-5, atol=1e-5)
    assert len(emb._exes) == 2


def test_build_items_contract_is_checked():
    class Bad(_PackedRows):
        def build_items(self, g, prefix, datas, batch_kinds=()):
            feeds, outs, key = super().build_items(g, prefix, datas)
            return {"elsewhere": feeds[f"{prefix}.items"]}, outs, key
    with pytest.raises(RuntimeError, match=r"names must start with 'rows\.'"):
        build_mixed([("rows", np.zeros((2, 4), np.float32))], None, {"rows": Bad()})
