"""A Phi-4-multimodal mixed batch [text, image, text, audio, text] as one graph, with the modality
tags a decoder reads (Embeddings.modality per row, Embeddings.input_mode per batch).

Text rows are Phi-4's token table, image rows its image embedding (any crop count, through
build_items), audio rows its Conformer + the projector HF picks for the batch ("vision" when the
batch holds an image, else "speech"). Every chunk is checked against its HF module; bound 1e-5
relative L2 (f32).
"""
from __future__ import annotations

import numpy as np
import pytest
from cli_run import convert_and_embed
from hf_refs import need_torch, rel_err
from phi4_hf import hf_audio_embeds, hf_image_embeds, randomize_audio_buffers, tiny_phi4
from PIL import Image
from graphdsl.embed import INPUT_MODES, Embedder
from graphdsl.models import phi4_audio as pa
from graphdsl.models import phi4_vision as pv
from graphdsl.models import text
from graphdsl.preprocess.phi4 import Phi4ImageConfig, phi4_image
from graphdsl.preprocess.phi4_audio import phi4_audio_features
from target import BACKEND

BOUND = 1e-5


@pytest.fixture(scope="module")
def setup():
    torch = need_torch()
    cfg, phi = tiny_phi4()
    randomize_audio_buffers(phi)
    vc, ac = pv.config_from_hf(cfg), pa.config_from_hf(cfg)
    tc = text.TextConfig(n_vocab=cfg.vocab_size, n_embd=cfg.hidden_size)
    sd = phi.state_dict()
    w = {**pv.hf_to_gguf(sd, vc), **pa.hf_to_gguf(sd, ac),
         "token_embd.weight": phi.model.embed_tokens.weight.detach().numpy().copy()}
    emb = Embedder(text.TextEmbedding(tc), {"image": pv.Phi4Vision(vc), "audio": pa.Phi4Audio(ac)},
                   backend=BACKEND, weights=w)
    return torch, phi, vc, ac, emb


def _image(h, w, seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _mel(ac, seconds, seed):
    pcm = (np.random.default_rng(seed).standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32)
    return phi4_audio_features(pcm, n_mel=ac.n_mel)


def test_text_image_text_audio_text(setup):
    torch, phi, vc, ac, emb = setup
    rng = np.random.default_rng(0)
    im = phi4_image(_image(50, 60, 1), Phi4ImageConfig(crop=vc.image_size, patch=vc.patch_size))
    mel = _mel(ac, 1, 2)
    items = [("text", rng.integers(0, 64, 5)), ("image", im), ("text", rng.integers(0, 64, 3)), ("audio", mel),
             ("text", rng.integers(0, 64, 2))]
    out = emb(items)
    n_img, n_aud = pv.Phi4Vision(vc).n_tokens(im), pa.Phi4Audio(ac).n_tokens(mel.shape[0])
    assert [(s.kind, s.n_tokens) for s in out.spans] == [("text", 5), ("image", n_img), ("text", 3),
                                                         ("audio", n_aud), ("text", 2)]
    with torch.no_grad():
        refs = [phi.model.embed_tokens(torch.from_numpy(d.astype(np.int64))).numpy() if k == "text" else
                hf_image_embeds(phi, im.pixel_values[None], np.asarray([im.image_size]), im.patch_mask[None])
                if k == "image" else hf_audio_embeds(phi, d, "vision") for k, d in items]
    for s, ref in zip(out.spans, refs):
        assert rel_err(out.embd[s.start:s.start + s.n_tokens], ref) <= BOUND, s
    want = np.concatenate([np.full(s.n_tokens, {"text": 0, "image": 1, "audio": 2}[s.kind], np.int8)
                           for s in out.spans])
    assert np.array_equal(out.modality, want) and out.input_mode == INPUT_MODES["vision_speech"] == 3
    # negative controls: the image's rows one row off their span, the audio through the speech projector
    s = out.spans[1]
    assert rel_err(out.embd[s.start + 1:s.start + 1 + s.n_tokens], refs[1]) > 100 * BOUND
    s = out.spans[3]
    assert rel_err(out.embd[s.start:s.start + s.n_tokens], hf_audio_embeds(phi, mel, "speech")) > 100 * BOUND


def test_audio_without_image_uses_the_speech_projector(setup):
    torch, phi, vc, ac, emb = setup
    mel = _mel(ac, 1, 3)
    out = emb([("text", np.arange(4)), ("audio", mel)])
    assert out.input_mode == 2
    assert rel_err(out.embd[4:], hf_audio_embeds(phi, mel, "speech")) <= BOUND


def test_input_mode_follows_the_batch(setup):
    *_, vc, ac, emb = setup
    im = phi4_image(_image(20, 30, 2), Phi4ImageConfig(crop=vc.image_size, patch=vc.patch_size))
    mel, ids = _mel(ac, 0.5, 4), ("text", np.arange(4))
    assert emb([ids]).input_mode == 0
    assert emb([ids, ("image", im)]).input_mode == 1
    assert emb([("audio", mel), ids]).input_mode == 2
    assert emb([("image", im), ("audio", mel)]).input_mode == 3


@pytest.mark.children
def test_hf_folder_converts_and_embeds_image_and_wav(setup, tmp_path):
    """HF dir -> graphdsl convert (one mmproj: vision "phi4" + audio "phi4") -> graphdsl embed
    --image --audio: the image's rows then the clip's, HF's for the same inputs (the audio through
    the vision-speech projector, the batch holding an image)."""

    import soundfile as sf

    from graphdsl.gguf_io import load_mmproj
    torch, phi, vc, ac, _ = setup
    folder = tmp_path / "hf"
    phi.save_pretrained(folder)
    img, wav = tmp_path / "i.png", tmp_path / "a.wav"
    _image(70, 100, 5).save(img)
    pcm = (np.random.default_rng(6).standard_normal(24000) * 0.1).astype(np.float32)
    sf.write(wav, pcm, 16000, subtype="FLOAT")
    gguf, out = tmp_path / "m.gguf", tmp_path / "e.npy"
    convert_and_embed(folder, gguf, out, "--image", img, "--audio", wav)
    m = load_mmproj(gguf)[0]
    assert (m.vision.projector_type, m.audio.projector_type) == ("phi4", "phi4")
    im = phi4_image(img, Phi4ImageConfig(crop=vc.image_size, patch=vc.patch_size))
    ref = np.concatenate([hf_image_embeds(phi, im.pixel_values[None], np.asarray([im.image_size]), im.patch_mask[None]),
                          hf_audio_embeds(phi, phi4_audio_features(pcm, n_mel=ac.n_mel), "vision")])
    assert rel_err(np.load(out), ref) <= BOUND
