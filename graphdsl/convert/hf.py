"""HF checkpoints -> GGUF in llama.cpp's mmproj (or text-model) layout.

Tensor names come from the model files (`graphdsl.models.<arch>.hf_to_gguf`), so one rename
table serves both the converter and the graphs; this module adds what a file needs besides
tensors: the metadata keys (gguf package constants), the per-tensor types (writer.py) and the
tokenizer vocabulary for text models.

Metadata follows llama.cpp (clip.cpp reads it), plus keys llama.cpp ignores that let graphdsl
reproduce HF exactly (llama.cpp's flags cannot say "exact erf GELU" or "keep the class token"):
`graphdsl.{vision,audio}.act`, `graphdsl.vision.projector_act`, `graphdsl.vision.select`.
"""
from __future__ import annotations

import importlib
import math

import numpy as np
from gguf import MODEL_ARCH, MODEL_ARCH_NAMES, Keys, get_tensor_name_map
from gguf import MODEL_TENSOR as T

from ..gguf_io import KEY_ACT, KEY_FEATURE_LAYER, KEY_MM_ACT, KEY_SELECT, MMPROJ_ARCH
from ..gguf_io import tensor_name as tn
from .checkpoint import load_hf

# HF model_type -> graphdsl.models module
MODULES = {"clip": "clip", "clip_vision_model": "clip", "llava": "clip",
           "siglip": "siglip", "siglip_vision_model": "siglip", "gemma3": "siglip",
           "whisper": "whisper_enc", "voxtral": "whisper_enc", "bert": "text"}
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
_GELU_FLAGS = {"gelu": (True, False), "gelu_erf": (True, False), "silu": (False, True), "gelu_quick": (False, False)}


def model_module(model_type: str):
    """The graphdsl.models module that names and builds an HF model_type."""
    name = MODULES.get(model_type)
    if name is None:
        raise ValueError(f"cannot convert HF model_type {model_type!r}; supported: {', '.join(sorted(MODULES))}")
    try:
        mod = importlib.import_module(f"graphdsl.models.{name}")
    except ModuleNotFoundError as e:
        raise ValueError(f"converting {model_type!r} needs graphdsl.models.{name}, which is not available ({e})") from None
    for fn in ("config_from_hf", "hf_to_gguf"):
        if not hasattr(mod, fn):
            raise ValueError(f"graphdsl.models.{name} has no {fn}()")
    return mod


def prepare(hf_dir: str) -> tuple[str, list[tuple[str, object]], dict[str, np.ndarray]]:
    """(architecture, metadata, gguf name -> f32 tensor) for an HF model folder."""
    config, load_weights, pre = load_hf(hf_dir)
    model_type = config.get("model_type", "")
    mod = model_module(model_type)
    sd = load_weights()
    # a two-tower CLIPModel/SiglipModel converts its vision tower only
    model_config = config["vision_config"] if model_type in ("clip", "siglip") and "vision_config" in config else config
    tensors = mod.hf_to_gguf(sd, mod.config_from_hf(model_config))
    tensors = {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()}
    if MODULES[model_type] == "text":
        tensors.update(_bert_layers(sd, config, tensors))
        return _text_meta(hf_dir, config, tensors)
    kv: list[tuple[str, object]] = [(Keys.General.NAME, config.get("_name_or_path") or model_type)]
    if MODULES[model_type] == "whisper_enc":
        kv += _audio_meta(config, tensors)
    else:
        kv += _vision_meta(config, pre, tensors, model_type)
    return MMPROJ_ARCH, kv, tensors


def combine(parts: list[tuple[str, list, dict]], names: list[str]) -> tuple[str, list, dict]:
    """One mmproj from several prepared folders (a vision one and an audio one, as the files of
    omni models): clip.projector_type becomes clip.vision/audio.projector_type, names are joined,
    and any other key written twice must agree."""
    V, A = Keys.ClipVision, Keys.ClipAudio
    kv: dict[str, object] = {}
    tensors: dict[str, np.ndarray] = {}
    seen: dict[str, str] = {}
    for (arch, part_kv, part_tensors), name in zip(parts, names):
        if arch != MMPROJ_ARCH:
            raise ValueError(f"{name}: a {arch!r} text model cannot be combined into an mmproj file")
        d = dict(part_kv)
        modality = "vision" if d.get(Keys.Clip.HAS_VISION_ENCODER) else "audio"
        if modality in seen:
            raise ValueError(f"{name}: a second {modality} encoder (the first is {seen[modality]})")
        seen[modality] = name
        d[V.PROJECTOR_TYPE if modality == "vision" else A.PROJECTOR_TYPE] = d.pop(Keys.Clip.PROJECTOR_TYPE)
        d[Keys.General.NAME] = " + ".join(x for x in (kv.get(Keys.General.NAME), d[Keys.General.NAME]) if x)
        for key, value in d.items():
            if key in kv and key != Keys.General.NAME and not np.array_equal(kv[key], value):
                raise ValueError(f"{name}: metadata {key!r} = {value!r} disagrees with {kv[key]!r}")
            kv[key] = value
        tensors.update(part_tensors)
    return MMPROJ_ARCH, list(kv.items()), tensors


def _blocks(tensors: dict, prefix: str) -> int:
    """Blocks stored (counted by their first norm, v.blk.N.ln1 / a.blk.N.ln1)."""
    ln1 = T.V_ENC_INPUT_NORM if prefix == "v" else T.A_ENC_INPUT_NORM
    return sum(1 for i in range(len(tensors)) if tn(ln1, "weight", i) in tensors)


def _vision_meta(config: dict, pre: dict, tensors: dict, model_type: str) -> list:
    from ..blocks import act_of

    V = Keys.ClipVision
    v = config.get("vision_config", config)
    siglip = MODULES[model_type] == "siglip"
    proj = {"llava": "mlp", "gemma3": "gemma3"}.get(model_type, "none")
    act = act_of(v.get("hidden_act", "gelu_pytorch_tanh" if siglip else "quick_gelu"))
    patch = tensors[tn(T.V_ENC_EMBD_PATCH)]
    n_layer, image_size, p = _blocks(tensors, "v"), v.get("image_size", 224), patch.shape[-1]
    mean = pre.get("image_mean", (0.5,) * 3 if siglip else CLIP_MEAN)
    std = pre.get("image_std", (0.5,) * 3 if siglip else CLIP_STD)
    use_gelu, use_silu = _GELU_FLAGS.get(act, (False, False))
    kv = [(Keys.Clip.HAS_VISION_ENCODER, True), (Keys.Clip.PROJECTOR_TYPE, proj),
          (V.IMAGE_SIZE, image_size), (V.PATCH_SIZE, p), (V.EMBEDDING_LENGTH, patch.shape[0]),
          (V.FEED_FORWARD_LENGTH, tensors[tn(T.V_ENC_FFN_UP, "weight", 0)].shape[0] if n_layer else 0),
          (V.BLOCK_COUNT, n_layer), (V.Attention.HEAD_COUNT, v.get("num_attention_heads", 12)),
          (V.Attention.LAYERNORM_EPS, float(v.get("layer_norm_eps", 1e-6 if siglip else 1e-5))),
          (V.IMAGE_MEAN, [float(x) for x in mean]), (V.IMAGE_STD, [float(x) for x in std]),
          (V.USE_GELU, use_gelu), (V.USE_SILU, use_silu), (KEY_ACT.format(modality="vision"), act)]
    if proj == "mlp":
        fl = config.get("vision_feature_layer", -2)
        n_all = v.get("num_hidden_layers", 12)
        out = tensors.get(tn(T.V_MMPROJ, "weight", 2), tensors[tn(T.V_MMPROJ, "weight", 0)]).shape[0]
        kv += [(KEY_FEATURE_LAYER, np.array([f % (n_all + 1) for f in ([fl] if isinstance(fl, int) else fl)], np.int32)),
               (V.PROJECTION_DIM, int(out)), (KEY_MM_ACT, act_of(config.get("projector_hidden_act", "gelu"))),
               (KEY_SELECT, config.get("vision_feature_select_strategy", "default"))]
    elif proj == "gemma3":
        side = math.isqrt(config.get("mm_tokens_per_image", 256))
        kv += [(V.Projector.SCALE_FACTOR, (image_size // p) // side),  # llama.cpp's n_merge
               (V.PROJECTION_DIM, int(tensors[tn(T.V_MM_INP_PROJ)].shape[-1]))]
    else:
        kv += [(V.PROJECTION_DIM, int(config.get("projection_dim", 0))), (KEY_SELECT, "full")]
    return kv


def _audio_meta(config: dict, tensors: dict) -> list:
    A = Keys.ClipAudio
    a = config.get("audio_config", config)
    conv = tensors[tn(T.A_ENC_CONV1D, "weight", 1)]
    n_embd, n_layer = conv.shape[0], _blocks(tensors, "a")
    proj = "voxtral" if tn(T.A_MMPROJ, "weight", 1) in tensors else "none"
    kv = [(Keys.Clip.HAS_AUDIO_ENCODER, True), (Keys.Clip.PROJECTOR_TYPE, proj),
          (A.NUM_MEL_BINS, conv.shape[1]), (A.EMBEDDING_LENGTH, n_embd),
          (A.FEED_FORWARD_LENGTH, tensors[tn(T.A_ENC_FFN_UP, "weight", 0)].shape[0] if n_layer else 0),
          (A.BLOCK_COUNT, n_layer),
          (A.Attention.HEAD_COUNT, a.get("encoder_attention_heads", a.get("num_attention_heads", 6))),
          (A.Attention.LAYERNORM_EPS, 1e-5), (KEY_ACT.format(modality="audio"), "gelu_erf")]
    if proj == "voxtral":
        kv += [(A.Projector.STACK_FACTOR, tensors[tn(T.A_MMPROJ, "weight", 1)].shape[1] // n_embd),
               (A.PROJECTION_DIM, int(tensors[tn(T.A_MMPROJ, "weight", 2)].shape[0]))]
    return kv


def _bert_layers(sd: dict, config: dict, have: dict) -> dict[str, np.ndarray]:
    """The transformer layers of a BERT checkpoint, named by the gguf package's own HF map
    (graphdsl's text model builds only the embedding stage; the file stays loadable by llama.cpp)."""
    names = get_tensor_name_map(MODEL_ARCH.BERT, config.get("num_hidden_layers", 12))
    out = {}
    for key, value in sd.items():
        name = names.get_name(key.removeprefix("bert."), try_suffixes=(".weight", ".bias"))
        if name is not None and name.startswith("blk.") and name not in have:
            out[name] = np.asarray(value, dtype=np.float32)
    return out


def _text_meta(hf_dir: str, config: dict, tensors: dict) -> tuple[str, list, dict]:
    from .vocab import bert_vocab

    arch = MODEL_ARCH_NAMES[MODEL_ARCH.BERT]
    L = Keys.LLM
    kv = [(Keys.General.NAME, config.get("_name_or_path") or "bert"),
          (L.CONTEXT_LENGTH.format(arch=arch), config.get("max_position_embeddings", 512)),
          (L.EMBEDDING_LENGTH.format(arch=arch), config.get("hidden_size", 768)),
          (L.FEED_FORWARD_LENGTH.format(arch=arch), config.get("intermediate_size", 3072)),
          (L.BLOCK_COUNT.format(arch=arch), sum(1 for k in tensors if k.endswith(".attn_q.weight"))),
          (Keys.Attention.HEAD_COUNT.format(arch=arch), config.get("num_attention_heads", 12)),
          (Keys.Attention.LAYERNORM_EPS.format(arch=arch), float(config.get("layer_norm_eps", 1e-12))),
          (Keys.Attention.CAUSAL.format(arch=arch), False)]
    kv += bert_vocab(hf_dir, n_vocab=tensors["token_embd.weight"].shape[0])
    return arch, kv, tensors
