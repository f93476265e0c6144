"""Qwen2.5-Omni thinker (graphdsl.models.qwen2_5omni + qwen2_5omni_audio) against HF transformers.

Reference: Qwen2_5OmniThinkerForConditionalGeneration from a small random config (eager attention,
weights perturbed by hf_refs.randomize): ``get_image_features`` for the vision tower (Qwen2.5-VL's),
``get_audio_features`` / ``audio_tower`` for the audio encoder, fed by HF's Qwen2VLImageProcessorPil
and WhisperFeatureExtractor (128 mel bins, padded to chunk_length, feature_attention_mask). n_window
is 5 (chunks of 10 frames, 5 rows): clips run over many chunks, the last one short, and the 2-row
average pool straddles chunk boundaries as HF's does. Bound 1e-5 relative L2 (f32).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from cli_run import convert_and_embed, graphdsl
from hf_refs import need_torch, randomize, rel_err
from PIL import Image

import graphdsl as gd
from graphdsl.embed import Embedder
from graphdsl.models import qwen2_5omni as qo
from graphdsl.models import qwen2_5omni_audio as qa
from target import BACKEND

BOUND = 1e-5
N_MEL = 128


def tiny_thinker(seed=0):
    need_torch()
    from transformers import Qwen2_5OmniThinkerConfig, Qwen2_5OmniThinkerForConditionalGeneration
    tc = dict(hidden_size=48, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
              vocab_size=128, rope_parameters={"rope_type": "default", "mrope_section": [2, 2, 2], "rope_theta": 1e4})
    vc = dict(depth=4, hidden_size=32, intermediate_size=48, num_heads=4, out_hidden_size=48, window_size=56,
              fullatt_block_indexes=[1, 3])
    ac = dict(num_mel_bins=N_MEL, d_model=32, encoder_attention_heads=4, encoder_ffn_dim=64, encoder_layers=2,
              n_window=5, output_dim=48, max_source_positions=100)
    cfg = Qwen2_5OmniThinkerConfig(audio_config=ac, vision_config=vc, text_config=tc)
    for c in (cfg, cfg.audio_config, cfg.vision_config, cfg.text_config):
        c._attn_implementation = "eager"
    return cfg, randomize(Qwen2_5OmniThinkerForConditionalGeneration(cfg), seed)


def processors(chunk_length: int = 30):
    from transformers import WhisperFeatureExtractor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    return Qwen2VLImageProcessorPil(), WhisperFeatureExtractor(feature_size=N_MEL, chunk_length=chunk_length)


@pytest.fixture(scope="module")
def tiny():
    cfg, model = tiny_thinker()
    vc, ac = qo.config_from_hf(cfg), qa.config_from_hf(cfg)
    sd = model.state_dict()
    return cfg, model, vc, ac, {"image": qo.hf_to_gguf(sd, vc), "audio": qa.hf_to_gguf(sd, ac)}


def _pcm(seconds, seed):
    return (np.random.default_rng(seed).standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32)


def _hf_audio(model, pcm, chunk_length=30):
    """HF's processor path: features padded to chunk_length s + feature_attention_mask -> get_audio_features."""
    torch = need_torch()
    fa = processors(chunk_length)[1](pcm, sampling_rate=16000, return_attention_mask=True, padding="max_length",
                                     return_tensors="np")
    with torch.no_grad():
        out = model.get_audio_features(torch.from_numpy(fa["input_features"]),
                                       feature_attention_mask=torch.from_numpy(fa["attention_mask"]))
    return out.last_hidden_state.numpy(), fa


def _hf_tower(model, mels):
    torch = need_torch()
    with torch.no_grad():
        return model.model.audio_tower(torch.from_numpy(np.concatenate(mels, axis=1)),
                                       feature_lens=torch.tensor([m.shape[1] for m in mels])).last_hidden_state.numpy()


def _hf_images(model, imgs):
    torch = need_torch()
    hp = processors()[0](images=imgs, return_tensors="np")
    with torch.no_grad():
        out = model.get_image_features(torch.from_numpy(hp["pixel_values"]), torch.tensor(hp["image_grid_thw"]))
    return torch.cat(list(out.pooler_output)).numpy()


def _image(h, w, seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


# frames per clip: one short chunk; 3 chunks (the last 7 frames, 4 rows: pairs straddle chunks);
# several clips of one call, one exactly 2 chunks
@pytest.mark.parametrize("lengths", [[8], [27], [37, 20, 3, 11]], ids=["one_chunk", "three_chunks", "four_clips"])
def test_audio_encoder_matches_hf(tiny, lengths):
    _, model, _, ac, ws = tiny
    w = ws["audio"]
    rng = np.random.default_rng(len(lengths))
    mels = [rng.standard_normal((N_MEL, t)).astype(np.float32) for t in lengths]
    ref = _hf_tower(model, mels)
    for backend in (BACKEND, "reference"):
        out = Embedder(None, {"audio": qa.Qwen25OmniAudio(ac)}, backend=backend, weights=w)(
            [("audio", m) for m in mels])
        assert [s.n_tokens for s in out.spans] == [ac.rows(t) for t in lengths]
        err = rel_err(out.embd, ref)
        print(f"qwen2_5omni_audio {lengths} on {backend}: {err:.2e}")
        assert err <= BOUND


def _mmproj_stub(ac):
    """What features_of reads of a loaded file: no file (HF's processor defaults) and the audio config."""
    from types import SimpleNamespace
    return SimpleNamespace(config=SimpleNamespace(file=None), audio=SimpleNamespace(cfg=ac))


def test_audio_from_pcm_is_hf_processor_and_mask(tiny):
    """A 3.41 s clip (341 frames, 35 chunks) through HF's processor (padded to 30 s, feature_attention_mask):
    graphdsl's features are HF's real frames, and its rows HF's rows for the real length only."""
    _, model, _, ac, ws = tiny
    w = ws["audio"]
    pcm = _pcm(3.41, 1)
    ref, fa = _hf_audio(model, pcm)
    mel = qa.features_of(pcm, _mmproj_stub(ac))
    real = fa["input_features"][0][:, fa["attention_mask"][0].astype(bool)]
    assert mel.shape == real.shape == (N_MEL, 341)
    assert np.abs(mel - real).max() < 1e-5
    g = qa.build(ac, mel.shape[1])
    out = gd.compile(g, BACKEND, weights=w)(mel=mel)["embd"]
    assert out.shape == ref.shape == (ac.rows(341), 48)
    assert rel_err(out, ref) <= BOUND
    # negative control: HF's whole padded window, the mask ignored, is other rows
    padded = gd.compile(qa.build(ac, 3000), BACKEND, weights=w)(mel=fa["input_features"][0])["embd"]
    assert padded.shape != ref.shape


def test_audio_negative_controls_fail(tiny):
    """A wrong variant must fail the same comparison: the clip as one chunk (no n_window windows),
    the frame mask of a short last chunk left out, a swapped q / v."""
    from dataclasses import replace
    _, model, _, ac, ws = tiny
    w = ws["audio"]
    mel = np.random.default_rng(5).standard_normal((N_MEL, 27)).astype(np.float32)
    ref = _hf_tower(model, [mel])

    def run(cfg, weights, m=mel):
        return gd.compile(qa.build(cfg, m.shape[1]), BACKEND, weights=weights)(mel=m)["embd"]
    assert rel_err(run(ac, w), ref) <= BOUND
    assert rel_err(run(replace(ac, n_window=50), w), ref) > 1e-3
    q, v = "a.blk.0.attn_q.weight", "a.blk.0.attn_v.weight"
    swapped = {**w, q: w[v], v: w[q]}
    assert rel_err(run(ac, swapped), ref) > 1e-3
    # the clip zero-padded to whole chunks, as if HF did not mask the stem past its end (7 real frames of 10)
    err = rel_err(run(ac, w, np.pad(mel, ((0, 0), (0, 3)))), ref)
    print(f"unmasked padding: {err:.2e}")
    assert err > BOUND


def test_vision_matches_hf(tiny):
    """Two images of different sizes in one packed call, HF's processor output, vs the thinker's visual."""
    _, model, vc, _, ws = tiny
    w = ws["image"]
    imgs = [_image(50, 90, 1), _image(120, 40, 2)]
    ref = _hf_images(model, imgs)
    hp = processors()[0](images=imgs, return_tensors="np")
    block = qo.ARCH.block(vc)
    sizes = [(int(h) * 14, int(wd) * 14) for _, h, wd in hp["image_grid_thw"]]
    from graphdsl.preprocess.qwen2vl import Qwen2VLImageConfig, qwen2vl_image
    px = [qwen2vl_image(im, Qwen2VLImageConfig()) for im in imgs]
    assert [p.shape[1:] for p in px] == sizes
    x, grids = block.items(px)
    np.testing.assert_allclose(x, hp["pixel_values"], atol=1e-5)
    for backend in (BACKEND, "reference"):
        out = gd.compile(qo.build(vc, grids), backend, weights=w)(pixels=x)["embd"]
        err = rel_err(out, ref)
        print(f"qwen2_5omni vision on {backend}: {err:.2e}")
        assert err <= BOUND
    q, k = "v.blk.0.attn_q.weight", "v.blk.0.attn_k.weight"
    bad = {**w, q: w[k], k: w[q]}
    assert rel_err(gd.compile(qo.build(vc, grids), BACKEND, weights=bad)(pixels=x)["embd"], ref) > 1e-3


def _folder(tmp_path, model, **pre):
    folder = tmp_path / "hf"
    model.save_pretrained(folder)
    ip, fe = processors()
    conf = {**{k: v for k, v in fe.to_dict().items() if k not in ("mel_filters", "window")}, **ip.to_dict(), **pre}
    (folder / "preprocessor_config.json").write_text(json.dumps(conf, default=str))
    return folder


@pytest.mark.children
def test_hf_folder_converts_to_one_file_and_embeds_image_and_audio(tiny, tmp_path):
    """HF thinker folder -> graphdsl convert (ONE mmproj, both encoders, projector "qwen2.5o") ->
    graphdsl embed --image --audio (one mixed batch): the image's rows then the clip's, HF's."""
    import soundfile as sf

    from graphdsl.gguf_io import read_gguf
    from graphdsl.models import from_gguf
    _, model, vc, ac, _ = tiny
    img, wav = tmp_path / "i.png", tmp_path / "a.wav"
    _image(50, 90, 3).save(img)
    pcm = _pcm(2.3, 4)
    sf.write(wav, pcm, 16000, subtype="FLOAT")
    gguf, out = tmp_path / "m.gguf", tmp_path / "e.npy"
    convert_and_embed(_folder(tmp_path, model), gguf, out, "--image", img, "--audio", wav)
    meta = read_gguf(str(gguf)).metadata
    assert (meta["clip.vision.projector_type"], meta["clip.audio.projector_type"]) == ("qwen2.5o", "qwen2.5o")
    m = from_gguf(gguf)
    assert (m.archs["image"], m.archs["audio"]) == (qo.ARCH, qa.ARCH)
    assert m.audio.cfg == qa.Qwen25OmniAudioConfig(**{**ac.__dict__, "wtypes": m.audio.cfg.wtypes})
    ref = np.concatenate([_hf_images(model, [Image.open(img)]), _hf_audio(model, pcm)[0]])
    got = np.load(out)
    err = rel_err(got, ref) if got.shape == ref.shape else float("inf")
    print(f"qwen2_5omni convert + embed image + audio: {ref.shape[0]} rows, {err:.2e}")
    assert err <= BOUND


@pytest.mark.children
def test_whole_omni_folder_converts(tiny, tmp_path):
    """A whole Qwen2.5-Omni folder (Qwen2_5OmniForConditionalGeneration's layout: config.json with
    thinker_config, tensors under thinker.*) converts as its thinker does; here the thinker's folder
    re-laid as the whole model's, the talker left out (graphdsl converts none of it)."""
    import soundfile as sf
    from safetensors.numpy import load_file, save_file
    _, model, *_ = tiny
    folder = _folder(tmp_path, model)
    conf = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2_5_omni", "thinker_config": conf,
                                                    "architectures": ["Qwen2_5OmniForConditionalGeneration"],
                                                    "enable_audio_output": False}))
    sd = load_file(folder / "model.safetensors")
    save_file({f"thinker.{k}": v for k, v in sd.items()}, folder / "model.safetensors")
    img, wav = tmp_path / "i.png", tmp_path / "a.wav"
    _image(60, 40, 7).save(img)
    pcm = _pcm(1.3, 8)
    sf.write(wav, pcm, 16000, subtype="FLOAT")
    convert_and_embed(folder, tmp_path / "m.gguf", tmp_path / "e.npy", "--audio", wav, "--image", img)
    ref = np.concatenate([_hf_images(model, [Image.open(img)]), _hf_audio(model, pcm)[0]])
    assert rel_err(np.load(tmp_path / "e.npy"), ref) <= BOUND


@pytest.mark.children
def test_chunk_length_is_carried(tiny, tmp_path):
    """Qwen2.5-Omni ships chunk_length 300: HF keeps 300 s of a clip, the class default 30. A 31 s clip
    converts and matches HF at 300; the same file without the key (HF's 30) refuses it (HF would cut it)."""
    import soundfile as sf

    from settings_util import rewrite_gguf
    _, model, *_ = tiny
    wav = tmp_path / "a.wav"
    pcm = _pcm(31, 6)
    sf.write(wav, pcm, 16000, subtype="FLOAT")
    gguf = tmp_path / "m.gguf"
    convert_and_embed(_folder(tmp_path, model, chunk_length=300), gguf, tmp_path / "e.npy", "--audio", wav)
    ref = _hf_audio(model, pcm, chunk_length=300)[0]
    assert rel_err(np.load(tmp_path / "e.npy"), ref) <= BOUND
    bad = tmp_path / "bad.gguf"
    rewrite_gguf(gguf, bad, drop=(qa.KEY_CHUNK_LENGTH,))
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "graphdsl.cli", "embed", "--mmproj", str(bad), "--audio", str(wav), "-o",
                        str(tmp_path / "w.npy")], capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode != 0 and "keeps the first 30 s (chunk_length)" in r.stderr, r.stderr[-2000:]


def test_every_hf_field_is_declared():
    """The thinker's config and the two processors its preprocessor_config.json joins (HF's auto
    tables name them under qwen2_5_omni, not the thinker): every field declared."""
    from settings_util import processor_fields

    from graphdsl.models import settings as st
    cfg, _ = tiny_thinker()
    decl = (*qo.ARCH.settings, *qa.ARCH.settings)
    missing = st.undeclared(decl, "config", st.leaves(cfg.to_dict()))
    missing += st.undeclared(decl, "processor", processor_fields(processors()))
    assert not missing, missing
    # and the defaults they declare are HF's (the processors at their class defaults)
    fields = processor_fields(processors())
    for s in decl:
        if s.source == "processor" and s.path in fields and s.default is not st.MISSING and not callable(s.default):
            assert st._same(fields[s.path], s.default), (s.path, fields[s.path], s.default)


@pytest.mark.parametrize("pre,shown,arch", [
    ({"feature_size": 80}, "feature_size=80", "qwen2_5omni_audio"),
    ({"sampling_rate": 8000}, "sampling_rate=8000", "qwen2_5omni_audio"),
    ({"merge_size": 4}, "merge_size=4", "qwen2_5omni"),
])
@pytest.mark.children
def test_refused_settings_stop_convert(tiny, tmp_path, pre, shown, arch):
    from settings_util import convert_refuses
    _, model, *_ = tiny
    err = convert_refuses(_folder(tmp_path, model), tmp_path, pre, shown)
    assert f"is not supported by graphdsl ({arch})" in err


@pytest.mark.children
def test_other_qwen2_5vl_files_are_not_claimed(tmp_path):
    """A Qwen2.5-VL file (projector qwen2.5vl_merger) stays Qwen2.5-VL's; Omni's are Omni's."""
    from graphdsl.convert.writer import write_gguf
    from graphdsl.gguf_io import load_mmproj
    from graphdsl.models import arch_for, qwen2_5vl
    from graphdsl.models.common import weight_shapes_of
    c = qwen2_5vl.ARCH.examples[0]
    w = {k: (np.zeros(s, np.float32), "f32") for k, s in weight_shapes_of(qwen2_5vl.ARCH.block(c)).items()}
    for mod in (qwen2_5vl, qo):
        path = tmp_path / f"{mod.ARCH.name}.gguf"
        write_gguf(str(path), "clip", mod.config_to_gguf(c), w)
        assert arch_for(load_mmproj(path)[0], "vision") is mod.ARCH
    with pytest.raises(ValueError, match="not a Qwen2.5-Omni file"):
        qo.config_from_gguf(tmp_path / "qwen2_5vl.gguf")
    graphdsl("info", tmp_path / "qwen2_5omni.gguf")


@pytest.mark.children
def test_file_as_llama_cpp_writes_it(tiny, tmp_path):
    """llama.cpp's converter names one projector for both encoders (clip.projector_type "qwen2.5o")
    and writes none of graphdsl's keys: both archs still claim the file, the audio one with HF's
    n_window default (100), which is what HF runs for such a checkpoint."""
    from settings_util import rewrite_gguf

    from graphdsl.models import from_gguf
    _, model, _, ac, ws = tiny
    gguf, lcpp = tmp_path / "m.gguf", tmp_path / "lcpp.gguf"
    graphdsl("convert", _folder(tmp_path, model), "-o", gguf)
    rewrite_gguf(gguf, lcpp, drop=("clip.vision.projector_type", "clip.audio.projector_type", qa.KEY_N_WINDOW,
                                   "graphdsl.audio.act", qa.KEY_CHUNK_LENGTH),
                 change={"clip.projector_type": "qwen2.5o"})
    m = from_gguf(lcpp)
    assert (m.archs["image"], m.archs["audio"]) == (qo.ARCH, qa.ARCH)
    assert (m.audio.cfg.n_window, m.audio.cfg.act) == (100, "gelu_erf")
    mel = np.random.default_rng(9).standard_normal((N_MEL, 450)).astype(np.float32)
    tower = model.model.audio_tower
    tower.n_window = 100
    try:
        ref = _hf_tower(model, [mel])
    finally:
        tower.n_window = ac.n_window
    out = Embedder(None, m.media, backend=BACKEND, weights=m.weights)([("audio", mel)]).embd
    assert rel_err(out, ref) <= BOUND
    assert rel_err(out, _hf_tower(model, [mel])) > 1e-3  # the tiny model's own n_window (5) is other rows
