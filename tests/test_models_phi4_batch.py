"""A Phi-4-multimodal mixed batch [text, image, text, audio, text] as one graph, with the modality
tags a decoder reads (Embeddings.modality per row, Embeddings.input_mode per batch).

Text rows are Phi-4's token table, image rows Phi-4's image embedding (any crop count, through
build_items). graphdsl has no Phi-4 audio encoder yet: the audio chunk is the Voxtral stand-in
(Whisper encoder + projector, width 48 like the tiny Phi-4), which exercises the same batch
machinery. Every chunk is checked against its HF module; bound 1e-5 relative L2 (f32).
"""
from __future__ import annotations

import numpy as np
import pytest
from hf_refs import need_torch, rel_err, voxtral_tiny
from phi4_hf import hf_image_embeds, tiny_phi4
from PIL import Image

from graphdsl.embed import INPUT_MODES, Embedder
from graphdsl.models import phi4_vision as pv
from graphdsl.models import text, whisper_enc
from graphdsl.preprocess.phi4 import Phi4ImageConfig, phi4_image
from target import BACKEND

BOUND = 1e-5


@pytest.fixture(scope="module")
def setup():
    torch = need_torch()
    cfg, phi = tiny_phi4()
    vcfg, vox = voxtral_tiny()
    vc, wc = pv.config_from_hf(cfg), whisper_enc.config_from_hf(vcfg)
    tc = text.TextConfig(n_vocab=cfg.vocab_size, n_embd=cfg.hidden_size)
    w = {**pv.hf_to_gguf(phi.state_dict(), vc), **whisper_enc.hf_to_gguf(vox.state_dict(), wc),
         "token_embd.weight": phi.model.embed_tokens.weight.detach().numpy().copy()}
    emb = Embedder(text.TextEmbedding(tc), {"image": pv.Phi4Vision(vc), "audio": whisper_enc.WhisperEncoder(wc)},
                   backend=BACKEND, weights=w)
    return torch, phi, vox, vc, wc, emb


def _image(h, w, seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_text_image_text_audio_text(setup):
    torch, phi, vox, vc, wc, emb = setup
    rng = np.random.default_rng(0)
    im = phi4_image(_image(50, 60, 1), Phi4ImageConfig(crop=vc.image_size, patch=vc.patch_size))
    mel = rng.standard_normal((wc.n_mel, wc.n_frames)).astype(np.float32)
    items = [("text", rng.integers(0, 64, 5)), ("image", im), ("text", rng.integers(0, 64, 3)), ("audio", mel),
             ("text", rng.integers(0, 64, 2))]
    out = emb(items)
    n_img = pv.Phi4Vision(vc).n_tokens(im)
    assert [(s.kind, s.n_tokens) for s in out.spans] == [("text", 5), ("image", n_img), ("text", 3), ("audio", 8),
                                                         ("text", 2)]
    with torch.no_grad():
        refs = [phi.model.embed_tokens(torch.from_numpy(d.astype(np.int64))).numpy() if k == "text" else
                hf_image_embeds(phi, im.pixel_values[None], np.asarray([im.image_size]), im.patch_mask[None])
                if k == "image" else vox.get_audio_features(torch.from_numpy(d[None])).pooler_output.numpy()
                for k, d in items]
    for s, ref in zip(out.spans, refs):
        assert rel_err(out.embd[s.start:s.start + s.n_tokens], ref) <= BOUND, s
    want = np.concatenate([np.full(s.n_tokens, {"text": 0, "image": 1, "audio": 2}[s.kind], np.int8)
                           for s in out.spans])
    assert np.array_equal(out.modality, want) and out.input_mode == INPUT_MODES["vision_speech"] == 3
    # negative control: the image's rows one row off its span do not match
    s = out.spans[1]
    assert rel_err(out.embd[s.start + 1:s.start + 1 + s.n_tokens], refs[1]) > 100 * BOUND


def test_input_mode_follows_the_batch(setup):
    *_, emb = setup
    rng = np.random.default_rng(1)
    vc = emb.media["image"].cfg
    im = phi4_image(_image(20, 30, 2), Phi4ImageConfig(crop=vc.image_size, patch=vc.patch_size))
    mel = rng.standard_normal((emb.media["audio"].cfg.n_mel, emb.media["audio"].cfg.n_frames)).astype(np.float32)
    ids = ("text", rng.integers(0, 64, 4))
    assert emb([ids]).input_mode == 0
    assert emb([ids, ("image", im)]).input_mode == 1
    assert emb([("audio", mel), ids]).input_mode == 2
    assert emb([("image", im), ("audio", mel)]).input_mode == 3
