"""Qwen2-Audio (graphdsl.models.qwen2audio) against HF transformers.

Reference: Qwen2AudioForConditionalGeneration from a small random config (eager attention, weights
perturbed by hf_refs.randomize), fed as its processor feeds it (WhisperFeatureExtractor with
padding="max_length", truncation and return_attention_mask: Qwen2AudioProcessor's call), and read
where the decoder reads it: the rows its forward scatters into the audio tokens' places of the
language model's input (captured by a hook), after HF's key mask, average pool and
feature-length cut. Bound 1e-5 relative L2 (f32).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from hf_refs import need_torch, randomize, rel_err

import graphdsl as gd
from graphdsl.embed import Embedder
from graphdsl.models import qwen2audio as q2a
from graphdsl.preprocess.qwen2audio import frames_read
from target import BACKEND

BOUND = 1e-5
N_MEL = 128
AUDIO_TOKEN = 7


def tiny_qwen2audio(seed=0, n_ctx=1500, act="gelu", layers=2):
    need_torch()
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration
    ac = dict(num_mel_bins=N_MEL, d_model=32, encoder_attention_heads=4, encoder_ffn_dim=64, encoder_layers=layers,
              max_source_positions=n_ctx, activation_function=act)
    tc = dict(hidden_size=48, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
              vocab_size=128)
    cfg = Qwen2AudioConfig(audio_config=ac, text_config=tc, audio_token_index=AUDIO_TOKEN)
    for c in (cfg, cfg.audio_config, cfg.text_config):
        c._attn_implementation = "eager"
    return cfg, randomize(Qwen2AudioForConditionalGeneration(cfg).eval(), seed)


def feature_extractor(chunk_length: int = 30):
    from transformers import WhisperFeatureExtractor
    return WhisperFeatureExtractor(feature_size=N_MEL, chunk_length=chunk_length)


@pytest.fixture(scope="module")
def tiny():
    cfg, model = tiny_qwen2audio()
    c = q2a.config_from_hf(cfg)
    return cfg, model, c, q2a.hf_to_gguf(model.state_dict(), c)


def pcm(seconds, seed):
    return (np.random.default_rng(seed).standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32)


def hf_processor(pcms, chunk_length=30):
    """Qwen2AudioProcessor's audio call: padded to chunk_length s, truncated, with the frame mask."""
    return feature_extractor(chunk_length)(pcms, sampling_rate=16000, return_attention_mask=True,
                                           padding="max_length", return_tensors="np")


def hf_decoder_rows(model, fa):
    """The rows HF's forward puts in the audio tokens' places of the language model's input: a prompt
    with each clip's audio-token run (the processor's count), the inputs_embeds its decoder gets."""
    torch = need_torch()
    lengths = fa["attention_mask"].sum(-1)
    n_tok = [(((int(t) - 1) // 2 + 1) - 2) // 2 + 1 for t in lengths]
    ids = [1]
    for n in n_tok:
        ids += [AUDIO_TOKEN] * n + [2]
    ids = torch.tensor([ids])
    seen = {}

    def grab(_mod, args, kwargs):
        seen["x"] = kwargs["inputs_embeds"]
    h = model.model.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            model.model(input_ids=ids, attention_mask=torch.ones_like(ids),
                        input_features=torch.from_numpy(fa["input_features"]),
                        feature_attention_mask=torch.from_numpy(fa["attention_mask"]))
    finally:
        h.remove()
    return seen["x"][0][ids[0] == AUDIO_TOKEN].numpy()


def read_frames(fa, n_ctx=1500):
    """Each clip of HF's padded batch as the frames its encoder rows read (what features_of gives)."""
    return [x[:, :frames_read(int(t), n_ctx)] for x, t in zip(fa["input_features"], fa["attention_mask"].sum(-1))]


# 0.05 s: 5 frames, one row; 30 s exactly: the whole window, nothing masked; 0.731 s: odd frame count
SECONDS = {"one": [2.3], "short_and_full": [0.05, 30.0], "four_clips": [0.731, 2.3, 1.0, 0.05]}


@pytest.mark.parametrize("seconds", SECONDS.values(), ids=SECONDS.keys())
def test_decoder_rows_match_hf(tiny, seconds):
    """Several clips of different lengths in one call, HF's processor features: HF's decoder rows."""
    _, model, c, w = tiny
    fa = hf_processor([pcm(s, i) for i, s in enumerate(seconds)])
    ref = hf_decoder_rows(model, fa)
    mels = read_frames(fa)
    for backend in (BACKEND, "reference"):
        out = Embedder(None, {"audio": q2a.Qwen2AudioEncoder(c)}, backend=backend, weights=w)(
            [("audio", m) for m in mels])
        assert sum(s.n_tokens for s in out.spans) == ref.shape[0]
        err = rel_err(out.embd, ref)
        print(f"qwen2audio {seconds} s on {backend}: {ref.shape[0]} rows, {err:.2e}")
        assert err <= BOUND


def test_negative_controls_fail(tiny):
    """Wrong variants fail the same comparison: llama.cpp's whole window unmasked, the mel cut at the
    clip's own frames (the stem's padding frames missing), a swapped q / v."""
    _, model, c, w = tiny
    fa = hf_processor([pcm(1.23, 3)])
    ref = hf_decoder_rows(model, fa)
    mel = read_frames(fa)[0]

    def run(m, weights=w):
        return gd.compile(q2a.build(c, m.shape[1]), BACKEND, weights=weights)(mel=m)["embd"]
    assert rel_err(run(mel), ref) <= BOUND
    whole = run(fa["input_features"][0])[:ref.shape[0]]  # every key of the window seen
    assert rel_err(whole, ref) > 1e-3
    own = run(mel[:, :-1])  # the stem's last read frame, HF's padding log-mel, as the conv's zero
    assert own.shape == ref.shape
    print(f"last padding frame zeroed: {rel_err(own, ref):.2e}")
    assert rel_err(own, ref) > BOUND
    q, v = "a.blk.0.attn_q.weight", "a.blk.0.attn_v.weight"
    assert rel_err(run(mel, {**w, q: w[v], v: w[q]}), ref) > 1e-3


def test_node_by_node_with_diff_hf(tiny):
    """The whole window (nothing masked): every layer of the tower against HF's modules."""
    from graphdsl.inspect import diff_hf
    _, model, c, w = tiny
    mel = hf_processor([pcm(30.0, 4)])["input_features"]
    run = gd.compile(q2a.build(c), BACKEND, weights=w)
    mapping = {"audio_tower.layers.{i}.self_attn": "a.blk.{i}.attn_out", "audio_tower.layers.{i}.fc1": "a.blk.{i}.ffn_up",
               "audio_tower.layers.{i}": "a.blk.{i}.layer_out", "audio_tower.layer_norm": "a.post_ln",
               "multi_modal_projector": "mm.a.fc"}
    torch = need_torch()
    rep = diff_hf(run, {"mel": mel[0]}, model, torch.from_numpy(mel), mapping,
                  forward=lambda m, x: m.model.multi_modal_projector(m.model.audio_tower(x).last_hidden_state),
                  rel_l2=BOUND)
    print(rep)
    assert rep.first_bad is None


def _folder(tmp_path, model, chunk_length=30, **pre):
    folder = tmp_path / "hf"
    model.save_pretrained(folder)
    conf = {k: v for k, v in feature_extractor(chunk_length).to_dict().items() if k not in ("mel_filters", "window")}
    (folder / "preprocessor_config.json").write_text(json.dumps({**conf, **pre}, default=str))
    return folder


@pytest.mark.children
def test_hf_folder_convert_and_embed_match_hf(tiny, tmp_path):
    """HF folder -> graphdsl convert (projector "qwen2a") -> graphdsl embed of three clips, one past
    30 s (HF keeps its first 30 s): HF's decoder rows, in order."""
    import soundfile as sf

    from cli_run import convert_and_embed

    from graphdsl.gguf_io import read_gguf
    from graphdsl.models import from_gguf
    _, model, c, _ = tiny
    clips = [pcm(s, 20 + i) for i, s in enumerate((2.3, 0.731, 31.2))]
    wavs = []
    for i, x in enumerate(clips):
        wavs += ["--audio", tmp_path / f"a{i}.wav"]
        sf.write(wavs[-1], x, 16000, subtype="FLOAT")
    gguf, out = tmp_path / "m.gguf", tmp_path / "e.npy"
    convert_and_embed(_folder(tmp_path, model), gguf, out, *wavs)
    assert read_gguf(str(gguf)).metadata["clip.projector_type"] == "qwen2a"
    m = from_gguf(gguf)
    assert m.archs["audio"] is q2a.ARCH
    assert m.audio.cfg == q2a.Qwen2AudioConfig(**{**c.__dict__, "wtypes": m.audio.cfg.wtypes})
    ref = hf_decoder_rows(model, hf_processor(clips))
    got = np.load(out)
    err = rel_err(got, ref) if got.shape == ref.shape else float("inf")
    print(f"qwen2audio convert + embed, 3 clips: {ref.shape[0]} rows, {err:.2e}")
    assert err <= BOUND


@pytest.mark.children
def test_file_as_llama_cpp_writes_it(tiny, tmp_path):
    """llama.cpp's converter writes none of graphdsl's keys: the file still loads as Qwen2-Audio's,
    with the erf GELU llama.cpp forces for qwen2a (HF's "gelu"), and gives HF's rows."""
    from cli_run import graphdsl
    from settings_util import rewrite_gguf

    from graphdsl.models import from_gguf
    _, model, _, _ = tiny
    gguf, lcpp = tmp_path / "m.gguf", tmp_path / "lcpp.gguf"
    graphdsl("convert", _folder(tmp_path, model), "-o", gguf)
    rewrite_gguf(gguf, lcpp, drop=("graphdsl.audio.act",))
    m = from_gguf(lcpp)
    assert m.archs["audio"] is q2a.ARCH and m.audio.cfg.act == "gelu_erf"
    fa = hf_processor([pcm(0.9, 30)])
    out = Embedder(None, m.media, backend=BACKEND, weights=m.weights)([("audio", read_frames(fa)[0])]).embd
    assert rel_err(out, hf_decoder_rows(model, fa)) <= BOUND
    graphdsl("info", lcpp)


def test_omni_files_stay_omni(tmp_path):
    """A Qwen2.5-Omni audio file ("qwen2.5o", read as qwen2a) is that arch's; Qwen2-Audio's is this one's."""
    from graphdsl.convert.writer import write_gguf
    from graphdsl.gguf_io import load_mmproj
    from graphdsl.models import arch_for, qwen2_5omni_audio
    from graphdsl.models.common import weight_shapes_of
    for mod in (q2a, qwen2_5omni_audio):
        c = mod.ARCH.examples[0]
        w = {k: (np.zeros(s, np.float32), "f32") for k, s in weight_shapes_of(mod.ARCH.block(c)).items()}
        path = tmp_path / f"{mod.ARCH.name}.gguf"
        write_gguf(str(path), "clip", mod.config_to_gguf(c), w)
        assert arch_for(load_mmproj(path)[0], "audio") is mod.ARCH
    with pytest.raises(ValueError, match="Qwen2.5-Omni audio encoder"):
        q2a.config_from_gguf(tmp_path / "qwen2_5omni_audio.gguf")


def test_bad_inputs_are_refused(tiny):
    _, _, c, w = tiny
    emb = Embedder(None, {"audio": q2a.Qwen2AudioEncoder(c)}, backend="reference", weights=w)
    for bad, msg in ((np.zeros((N_MEL, 4), np.float32), "5 .one output row"),
                     (np.zeros((N_MEL, 3002), np.float32), "to 3000"),
                     (np.zeros((80, 100), np.float32), r"log-mel f32 \(128, T\)")):
        with pytest.raises(ValueError, match=msg):
            emb([("audio", bad)])
