"""Sweep entries for Whisper encoders (bare, or with Voxtral's projector), Phi-4-multimodal's audio
(Conformer + speech projector) and BERT-style text embeddings (tokenizer -> ids -> embeddings)."""
from __future__ import annotations

import numpy as np
from hf_refs import randomize, tiny_llama

from .clip_siglip import _no_grad
from .core import Entry, eps, ffn, pick, width


def _clips(rng, n=None, longest=3.0):
    return [("audio", round(float(rng.uniform(0.3, longest)), 3)) for _ in range(n or int(rng.integers(1, 3)))]


def _pcm(path):
    import soundfile
    return soundfile.read(path, dtype="float32")[0]


def _shift_audio(c):
    return {"padding_value": 0.5}  # what the feature extractor pads the clip with up to its window


# -- Whisper / Voxtral ------------------------------------------------------------------------------
def whisper_generate(rng):
    d, h = width(rng, head_dims=(4, 8, 12, 16))
    n_mel = pick(rng, (80, 128))
    n_layer = int(rng.integers(1, 4))
    if rng.random() < 0.5:
        cfg = dict(num_mel_bins=n_mel, max_source_positions=1500, d_model=d, encoder_attention_heads=h,
                   encoder_layers=n_layer, encoder_ffn_dim=ffn(rng, d), activation_function=pick(rng, ["gelu", "gelu_new"]))
        family = "whisper"
    else:
        # HF's projector reads 4 stacked frames as audio_config.intermediate_size: it must be 4 d
        cfg = dict(num_mel_bins=n_mel, max_source_positions=1500, hidden_size=d, num_attention_heads=h,
                   num_hidden_layers=n_layer, intermediate_size=4 * d, text_hidden=4 * int(rng.integers(4, 15)),
                   projector_act=pick(rng, ["gelu", "gelu_new"]))
        family = "voxtral"
    return family, cfg, {"feature_size": n_mel}, _clips(rng)


def whisper_model(c):
    from transformers import VoxtralConfig, VoxtralEncoderConfig, VoxtralForConditionalGeneration, WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder
    k = dict(c.config)
    if c.family == "whisper":
        return randomize(WhisperEncoder(WhisperConfig(**k, attn_implementation="eager")), c.seed)
    text_hidden, act = k.pop("text_hidden"), k.pop("projector_act")
    cfg = VoxtralConfig(audio_config=VoxtralEncoderConfig(**k), text_config=tiny_llama(text_hidden),
                        projector_hidden_act=act, attn_implementation="eager")
    return randomize(VoxtralForConditionalGeneration(cfg), c.seed)


def whisper_processor(c):
    from transformers import WhisperFeatureExtractor
    return WhisperFeatureExtractor(**c.processor)


@_no_grad
def whisper_reference(model, proc, c, paths):
    """Per clip, HF's log-mel (one 30 s window) through the encoder (+ projector)."""
    import torch
    out = []
    for p in paths:
        mel = torch.from_numpy(proc(_pcm(p), sampling_rate=16000, return_tensors="np")["input_features"])
        if c.family == "whisper":
            out.append(model(mel).last_hidden_state[0].numpy())
        else:
            f = model.get_audio_features(mel)
            f = f.pooler_output if hasattr(f, "pooler_output") else f
            out.append(f.reshape(-1, f.shape[-1]).numpy())
    return np.concatenate(out)


WHISPER = Entry("whisper_enc", whisper_generate, whisper_model, whisper_reference, processor=whisper_processor,
                wrong=_shift_audio)


# -- Phi-4-multimodal audio -------------------------------------------------------------------------
def phi4_config(rng, audio: bool):
    """A small Phi4MultimodalConfig: both towers (the checkpoint has both; convert writes both)."""
    d, h = width(rng, heads=(2, 4), head_dims=(4, 8))
    p = pick(rng, (2, 4, 7))
    # HF's projector merges 2 x 2 patches; its processor refuses crops resized below 10 px (20 px at least)
    s = p * 2 * pick(rng, [k for k in (2, 3, 4, 5, 6) if p * 2 * k >= 20][:3])
    vis = dict(hidden_size=d, intermediate_size=ffn(rng, d), num_attention_heads=h, num_hidden_layers=int(rng.integers(2, 4)),
               image_size=s, patch_size=p, crop_size=s, layer_norm_eps=eps(rng))
    ad, ah = width(rng, heads=(2, 4), head_dims=(4, 8))
    n_mel = pick(rng, (16, 32, 80))
    aud = dict(hidden_size=ad, intermediate_size=ffn(rng, ad), num_blocks=int(rng.integers(1, 4)), num_attention_heads=ah,
               ext_pw_out_channel=ad, depthwise_separable_out_channel=ad, nemo_conv_channels=pick(rng, (8, 16)),
               input_size=n_mel, time_reduction=8, bias_max_distance=pick(rng, (20, 50)), kernel_size=pick(rng, (3, 5)))
    return dict(vision=vis, audio=aud, text_hidden=4 * int(rng.integers(4, 15)))


def phi4_model(c):
    import torch
    from phi4_hf import randomize_audio_buffers
    from transformers import Phi4MultimodalConfig, Phi4MultimodalForCausalLM
    k = c.config
    cfg = Phi4MultimodalConfig(vocab_size=64, hidden_size=k["text_hidden"], intermediate_size=64, num_hidden_layers=1,
                               num_attention_heads=2, num_key_value_heads=2, vision_config=k["vision"],
                               audio_config=k["audio"], pad_token_id=0, bos_token_id=1, eos_token_id=2)
    cfg._attn_implementation = "eager"
    cfg.vision_config._attn_implementation = "eager"
    model = randomize(Phi4MultimodalForCausalLM(cfg), c.seed)
    emb = model.model.embed_tokens_extend.image_embed
    gen = torch.Generator().manual_seed(c.seed + 1)
    with torch.no_grad():  # separators are zero at init (as tests/phi4_hf.tiny_phi4 does)
        for prm in (emb.sub_img_feature_extensor, emb.global_img_feature_extensor):
            prm.copy_(torch.randn(prm.shape, generator=gen))
    return randomize_audio_buffers(model, c.seed)


def phi4_audio_generate(rng):
    k = phi4_config(rng, audio=True)
    return "phi4_multimodal", k, {"feature_size": k["audio"]["input_size"]}, _clips(rng, longest=4.0)


def phi4_audio_processor(c):
    from transformers.models.phi4_multimodal.feature_extraction_phi4_multimodal import Phi4MultimodalFeatureExtractor
    return Phi4MultimodalFeatureExtractor(**c.processor)


@_no_grad
def phi4_audio_reference(model, proc, c, paths):
    from phi4_hf import hf_audio_embeds
    out = []
    for p in paths:
        o = proc([_pcm(p)], sampling_rate=16000, return_tensors="np")
        out.append(hf_audio_embeds(model, o["audio_input_features"][0]))
    return np.concatenate(out)


PHI4_AUDIO = Entry("phi4_audio", phi4_audio_generate, phi4_model, phi4_audio_reference, processor=phi4_audio_processor,
                   wrong=lambda c: {"mel_max_frequency": 4000.0, "preemphasis": 0.5})


# -- BERT text embeddings ----------------------------------------------------------------------------
def text_generate(rng):
    d, h = width(rng)
    n_words = int(rng.integers(10, 60))
    cfg = dict(vocab_size=5 + n_words + 12 + int(rng.integers(0, 20)), hidden_size=d, num_attention_heads=h,
               num_hidden_layers=int(rng.integers(1, 4)), intermediate_size=ffn(rng, d),
               max_position_embeddings=int(rng.integers(24, 80)), type_vocab_size=int(rng.integers(1, 4)),
               layer_norm_eps=eps(rng), n_words=n_words)
    return "bert", cfg, {"do_lower_case": bool(rng.random() < 0.5)}, [("text", int(rng.integers(3, 16)))]


def _vocab(c):
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(c.config["n_words"])] + \
        [f"##s{i}" for i in range(12)]


def text_model(c):
    from transformers import BertConfig, BertModel
    k = {key: v for key, v in c.config.items() if key != "n_words"}
    return randomize(BertModel(BertConfig(**k)), c.seed)


def text_processor(c):
    import tempfile
    from pathlib import Path
    from transformers import BertTokenizer
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "vocab.txt").write_text("\n".join(_vocab(c)) + "\n")
        return BertTokenizer(str(Path(d) / "vocab.txt"), **c.processor)


def text_prompt(c):
    """Words of the vocabulary, some with a suffix piece (WordPiece splits them), some upper case."""
    rng = np.random.default_rng(c.seed + 2)
    words = []
    for k in range(c.media[0][1]):
        w = f"w{int(rng.integers(c.config['n_words']))}"
        if rng.random() < 0.3:
            w += f"s{int(rng.integers(12))}"
        words.append(w.upper() if k == 0 or rng.random() < 0.2 else w)  # one at least: casing counts
    return " ".join(words)


@_no_grad
def text_reference(model, proc, c, paths):
    import torch
    ids = proc(text_prompt(c))["input_ids"]
    return model.embeddings(input_ids=torch.tensor([ids]))[0].numpy()


def text_args(gguf, paths, work):
    return ["--text-model", gguf, "--prompt", text_prompt(_case_of(work))]


def _case_of(work):
    from .core import case
    from .table import ENTRIES
    arch, i = work.name.rsplit("-", 1)
    return case(ENTRIES[arch], int(i))


TEXT = Entry("text", text_generate, text_model, text_reference, processor=text_processor, embed_args=text_args,
             wrong=lambda c: {"do_lower_case": not c.processor["do_lower_case"]})
