"""mmproj files (llama.cpp's multimodal projector GGUFs): configs, loader quirks, tensor checks.

llama.cpp loader quirks copied here (reference: tools/mtmd/clip.cpp, clip_model_loader::
load_hparams / load_tensors, and models/llava.cpp); each applied one is listed in
`MmprojConfig.quirks`:
- no projector type: clip.projector_type, then clip.vision/audio.projector_type; a vision file
  with neither is "mlp" (LLaVA). "qwen2.5o" means qwen2.5vl_merger for vision, qwen2a for audio.
- swapped FFN: legacy converters named HF's fc1 `ffn_down` and fc2 `ffn_up`; for the projector
  types that had such files, when ffn_down's input width is n_embd the two are swapped back.
  A square FFN (n_ff == n_embd) fits both namings: clip.cpp swaps it always, we ask the writer
  (layouts.py, with the (n, 1) conv biases of llama.cpp's Whisper-family files).
- LLaVA's projector is `mm.0` / `mm.2` (HF linear_1 / linear_2; index 1 was the GELU).
- legacy LLaVA block count: without clip.vision.feature_layer, a file with an mlp/ldp/ldpv2
  projector wrote block_count = num_hidden_layers - 1 (and dropped that block) to mean "the
  penultimate layer". clip.cpp subtracts once more (il_last = n_layer - 1, llama.cpp issue
  #25817); we follow HF: feature_layer = (block_count,), the output of every stored block.
- defaults hard-coded per projector: activation gelu_quick unless clip.use_gelu / use_silu
  (both set is an error); ultravox/qwen2a/voxtral/glma force erf-GELU and Whisper's 16 kHz,
  n_fft 400, hop 160, 30 s windows; stack_factor required for ultravox/voxtral/glma; n_merge 4
  for gemma3, 2 for the qwen-VL mergers and glm4v, 1 for pixtral; image_mean/std required.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
from gguf import (
    MODEL_ARCH,
    MODEL_ARCH_NAMES,
    MODEL_TENSOR,
    TENSOR_NAMES,
    Keys,
    VisionProjectorType,
)

from .. import dtypes as dt

from .layouts import FFN_SWAP_PROJECTORS, batch_axes, column_biases, ffn_width, fix_ffn_swap
from .reader import _REQUIRED, GGUFError, GGUFFile, GGUFTensor, TensorTable, metadata_value, read_gguf


# -- mmproj files (llama.cpp tools/mtmd/clip.cpp: clip_model_loader) -----------------------------------
# Keys llama.cpp reads that the gguf package has no constant for (tools/mtmd/clip-impl.h).
KEY_FEATURE_LAYER = "clip.vision.feature_layer"
# graphdsl's own keys (llama.cpp ignores them): what llama.cpp's flags cannot say, so that a
# file converted from HF reproduces HF exactly. Absent, llama.cpp's meaning applies.
KEY_ACT = "graphdsl.{modality}.act"  # exact activation: "gelu_erf", "gelu" (tanh), "gelu_quick", "silu"
KEY_MM_ACT = "graphdsl.vision.projector_act"  # LLaVA mlp projector (llama.cpp: ggml_gelu, tanh form)
KEY_AUDIO_MM_ACT = "graphdsl.audio.projector_act"  # Voxtral's projector (llama.cpp: ggml_gelu_erf, exact)
KEY_SELECT = "graphdsl.vision.select"  # "default": drop the class token (LLaVA), "full": keep it
MMPROJ_ARCH = MODEL_ARCH_NAMES[MODEL_ARCH.MMPROJ]  # "clip"

# Projector names llama.cpp knows (clip-impl.h PROJECTOR_TYPE_NAMES): the gguf package's
# VisionProjectorType plus the older ones it does not list. "none" is graphdsl's own: an encoder
# file without a projector (a plain CLIP/SigLIP/Whisper encoder), which llama.cpp cannot run.
PROJECTOR_TYPES = frozenset({v for k, v in vars(VisionProjectorType).items() if not k.startswith("_")}
                            | {"mlp", "ldp", "ldpv2", "resampler", "adapter", "yasa2", "parakeet", "none",
                               "mllama"})  # mllama: graphdsl's (llama.cpp has none; ollama's names)
LLAVA_PROJECTORS = ("mlp", "ldp", "ldpv2")  # hparams.has_llava_projector
WHISPER_PROJECTORS = ("ultravox", "qwen2a", "voxtral", "glma")  # FFN_GELU_ERF, whisper preprocessing


@dataclass
class VisionConfig:
    projector_type: str
    image_size: int
    patch_size: int
    n_embd: int
    n_ff: int
    n_head: int
    n_layer: int  # blocks stored in the file (clip.vision.block_count)
    eps: float
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    # Hidden-state indices in HF's convention (0: the embeddings entering block 0, k: the output
    # of block k-1), all <= n_layer; empty: the output of the last block (+ post_ln if present).
    feature_layer: tuple[int, ...] = ()
    projection_dim: int = 0
    act: str = "gelu_quick"  # "gelu" (tanh form, as ggml_gelu), "silu", "gelu_quick" or "gelu_erf"
    projector_act: str = "gelu"  # activation inside the mlp projector
    select: str = "full"  # "default": the class token is dropped before the projector (LLaVA)
    n_merge: int = 0  # patch-merge factor llama.cpp hard-codes for some projectors (0: none)
    written_type: str = ""  # the projector type as the file names it, before llama.cpp's reading (qwen2.5o)

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


@dataclass
class AudioConfig:
    projector_type: str
    n_mel: int
    n_embd: int
    n_ff: int
    n_head: int
    n_layer: int
    eps: float
    projection_dim: int = 0
    stack_factor: int = 0  # frames stacked before the projector (ultravox, voxtral, glma)
    act: str = "gelu_erf"
    projector_act: str = "gelu_erf"  # inside the projector's MLP (voxtral)
    # Pre-processing llama.cpp hard-codes for Whisper-style encoders (not in the file).
    sample_rate: int = 16000
    n_fft: int = 400
    hop_length: int = 160
    chunk_seconds: int = 30
    written_type: str = ""  # the projector type as the file names it, before llama.cpp's reading (qwen2.5o)


@dataclass
class MmprojConfig:
    vision: VisionConfig | None
    audio: AudioConfig | None
    name: str = ""
    quirks: list[str] = field(default_factory=list)  # llama.cpp loader quirks applied to this file
    path: str = ""
    # every tensor of the file (quirk-corrected names): logical shape (NumPy order) and stored type,
    # so that a model config can be derived from the config alone (graphdsl.models.*.config_from_gguf)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict, repr=False)
    dtypes: dict[str, str] = field(default_factory=dict, repr=False)
    # the file itself, for keys only one architecture reads (Qwen2.5-VL's window layers)
    file: GGUFFile | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        # a model reading a tensor the file lacks (m.shapes[name]) gets the file and the tensor named
        where = self.path or self.name
        self.shapes, self.dtypes = (TensorTable(d, where, self.owners) for d in (self.shapes, self.dtypes))

    owners = property(lambda self: TensorTable.owners_of(self.vision, self.audio))

    @property
    def projector_type(self) -> str:
        return (self.vision or self.audio).projector_type

    def error(self, problem: str) -> GGUFError:
        return GGUFError(f"{self.path or self.name or 'mmproj'}: {problem}")


def load_mmproj(path: str | os.PathLike) -> tuple[MmprojConfig, dict[str, GGUFTensor]]:
    """Read an mmproj file: its config, and tensors by (quirk-corrected) name (a TensorTable, as
    cfg.shapes / cfg.dtypes: a name the file lacks raises a ValueError naming the file and it).

    Checks, before anything reaches ggml: architecture "clip", at least one encoder, a known
    projector type, the hyperparameters each encoder needs, every tensor graphdsl's encoders use
    present with the shape the metadata implies, and every tensor of a type graphdsl can run.
    """
    path = os.fspath(path)
    f = read_gguf(path)
    if f.architecture != MMPROJ_ARCH:
        raise f.error(f"general.architecture is {f.architecture!r}, an mmproj file has {MMPROJ_ARCH!r}")
    quirks: list[str] = []
    tensors = TensorTable(f.tensors, path)
    has_v = metadata_value(f, Keys.Clip.HAS_VISION_ENCODER, bool, False)
    has_a = metadata_value(f, Keys.Clip.HAS_AUDIO_ENCODER, bool, False)
    if not has_v and not has_a:
        raise f.error("neither clip.has_vision_encoder nor clip.has_audio_encoder is true")
    bad = [f"{n} ({t.dtype})" for n, t in tensors.items() if not t.supported]
    if bad:
        raise f.error(f"tensor types graphdsl cannot run: {', '.join(bad)}; "
                      f"supported: {', '.join(dt.DTYPES)}")
    column_biases(tensors, quirks)
    batch_axes(tensors, quirks)
    vision = _vision_config(f, tensors, quirks) if has_v else None
    audio = _audio_config(f, tensors, quirks) if has_a else None
    cfg = MmprojConfig(vision, audio, metadata_value(f, Keys.General.NAME, str, ""), quirks, path,
                       {n: t.shape for n, t in tensors.items()}, {n: t.dtype for n, t in tensors.items()}, f)
    tensors.owners = cfg.owners
    return cfg, tensors


def _projector(f: GGUFFile, modality_key: str, modality: str, quirks: list[str]) -> tuple[str, str]:
    """(the projector type as llama.cpp reads it, as the file writes it)."""
    proj = written = metadata_value(f, Keys.Clip.PROJECTOR_TYPE, str, "") or metadata_value(f, modality_key, str, "")
    if not proj and modality == "vision":
        proj = "mlp"
        quirks.append("no projector_type: llama.cpp assumes 'mlp' (LLaVA) for vision")
    if proj == "qwen2.5o":  # legacy omni files name one projector for both encoders
        proj = "qwen2.5vl_merger" if modality == "vision" else "qwen2a"
        quirks.append(f"projector_type 'qwen2.5o' read as {proj!r} for {modality}")
    if proj not in PROJECTOR_TYPES:
        raise f.error(f"unknown {modality} projector type {proj!r}; known: {', '.join(sorted(PROJECTOR_TYPES))}")
    return proj, written or proj


def _act(f: GGUFFile, proj: str, modality: str) -> str:
    exact = metadata_value(f, KEY_ACT.format(modality=modality), str, "")
    if exact:
        if exact not in ("gelu_erf", "gelu", "gelu_quick", "silu", "relu"):
            raise f.error(f"{KEY_ACT.format(modality=modality)} {exact!r} is not an activation graphdsl knows")
        return exact
    gelu = metadata_value(f, Keys.ClipVision.USE_GELU, bool, False)
    silu = metadata_value(f, Keys.ClipVision.USE_SILU, bool, False)
    if gelu and silu:
        raise f.error("both clip.use_gelu and clip.use_silu are true")
    if proj in WHISPER_PROJECTORS:
        return "gelu_erf"  # clip.cpp forces FFN_GELU_ERF for these, whatever the flags say
    return "gelu" if gelu else "silu" if silu else "gelu_quick"


def _encoder_dims(f: GGUFFile, ns: type, prefix: str, quirks: list[str]) -> dict:
    dims = dict(n_embd=metadata_value(f, ns.EMBEDDING_LENGTH, int), n_ff=metadata_value(f, ns.FEED_FORWARD_LENGTH, int),
                n_head=metadata_value(f, ns.Attention.HEAD_COUNT, int), n_layer=metadata_value(f, ns.BLOCK_COUNT, int),
                eps=metadata_value(f, ns.Attention.LAYERNORM_EPS, float),
                projection_dim=metadata_value(f, ns.PROJECTION_DIM, int, 0))
    if dims["n_embd"] == 0 or dims["n_head"] == 0 or dims["n_embd"] % dims["n_head"]:
        raise f.error(f"embedding_length {dims['n_embd']} must be a positive multiple of head_count {dims['n_head']}")
    if not dims["eps"] > 0:
        raise f.error(f"layer_norm_epsilon must be > 0, got {dims['eps']}")
    # Every later loop and graph is sized by these numbers: a count the tensors cannot back
    # (block_count 0xFFFFFFFF in a 3-block file) would loop billions of times, so bound them first.
    stored = _stored_blocks(f, prefix)
    if dims["n_layer"] > stored:
        raise f.error(f"{ns.BLOCK_COUNT} is {dims['n_layer']}, but the file holds tensors for {stored} "
                      f"blocks ({prefix}.blk.N.*)")
    if dims["n_layer"] < stored:  # llama.cpp too runs only block_count blocks; say so rather than hide it
        quirks.append(f"{ns.BLOCK_COUNT} is {dims['n_layer']} but the file stores {stored} blocks: "
                      f"the rest are ignored")
    widest = max((d for t in f.tensors.values() for d in t.shape), default=0)
    # (projection_dim is left alone: informational here, and converters write HF's even when the
    # projection itself is not stored)
    for key, name in ((ns.EMBEDDING_LENGTH, "n_embd"), (ns.FEED_FORWARD_LENGTH, "n_ff")):
        if dims[name] > widest:
            raise f.error(f"{key} is {dims[name]}, wider than any tensor of the file (largest dim {widest})")
    return dims


def _stored_blocks(f: GGUFFile, prefix: str) -> int:
    """How many distinct block indices `{prefix}.blk.N.*` the file's tensors carry."""
    head = f"{prefix}.blk."
    return len({i for i in (n[len(head):].split(".", 1)[0] for n in f.tensors if n.startswith(head)) if i.isdigit()})


def _vision_config(f: GGUFFile, tensors: dict, quirks: list[str]) -> VisionConfig:
    V = Keys.ClipVision
    proj, written = _projector(f, V.PROJECTOR_TYPE, "vision", quirks)
    dims = _encoder_dims(f, V, "v", quirks)
    image_size, patch = metadata_value(f, V.IMAGE_SIZE, int), metadata_value(f, V.PATCH_SIZE, int)
    if patch == 0 or image_size < patch:
        raise f.error(f"clip.vision.patch_size {patch} must be in 1..image_size ({image_size})")
    from ..preprocess.image import MIN_STD
    mean, std = (metadata_value(f, k, "floats") for k in (V.IMAGE_MEAN, V.IMAGE_STD))  # refused if NaN / inf
    if len(mean) != 3 or len(std) != 3 or not all(s >= MIN_STD for s in std):
        raise f.error(f"{V.IMAGE_MEAN} / {V.IMAGE_STD} need 3 finite values each, std >= {MIN_STD:g}, "
                      f"got {mean} / {std}")
    feature_layer = tuple(int(x) for x in metadata_value(f, KEY_FEATURE_LAYER, "ints", []))
    n_layer = dims["n_layer"]
    if feature_layer and not all(0 <= x <= n_layer for x in feature_layer):
        raise f.error(f"{KEY_FEATURE_LAYER} {list(feature_layer)} must lie in 0..block_count ({n_layer})")
    if len(feature_layer) > n_layer + 1:  # each layer is one concatenated copy of the features
        raise f.error(f"{KEY_FEATURE_LAYER} lists {len(feature_layer)} layers; a {n_layer}-block tower has "
                      f"{n_layer + 1} hidden states")
    if not feature_layer and proj in LLAVA_PROJECTORS:
        # Legacy LLaVA files say "penultimate layer" by writing block_count = num_hidden_layers - 1
        # and dropping the last block's tensors, with no feature_layer. clip.cpp then subtracts
        # again (il_last = n_layer - 1, llama.cpp issue #25817); we follow HF and run all stored blocks.
        feature_layer = (n_layer,)
        quirks.append(f"no {KEY_FEATURE_LAYER}: legacy LLaVA file, block_count {n_layer} is already one short "
                      f"of the tower; features = output of all {n_layer} stored blocks (HF's -2)")
    n_merge = {"gemma3": 4, "qwen2vl_merger": 2, "qwen2.5vl_merger": 2, "qwen3vl_merger": 2, "glm4v": 2,
               "pixtral": 1, "lightonocr": 1}.get(proj, 0)
    n_merge = metadata_value(f, V.SPATIAL_MERGE_SIZE, int, metadata_value(f, V.Projector.SCALE_FACTOR, int, n_merge))
    if n_merge > image_size // patch:
        raise f.error(f"patch merge factor {n_merge} ({V.SPATIAL_MERGE_SIZE} / {V.Projector.SCALE_FACTOR}) is "
                      f"more than the {image_size // patch} patches per side")
    select = metadata_value(f, KEY_SELECT, str, "default" if proj in LLAVA_PROJECTORS else "full")
    if select not in ("default", "full"):
        raise f.error(f"{KEY_SELECT} must be 'default' or 'full', got {select!r}")
    cfg = VisionConfig(proj, image_size, patch, image_mean=tuple(map(float, mean)), image_std=tuple(map(float, std)),
                       feature_layer=feature_layer, act=_act(f, proj, "vision"),
                       projector_act=metadata_value(f, KEY_MM_ACT, str, "gelu"), select=select, n_merge=n_merge,
                       written_type=written, **dims)
    fix_ffn_swap(f, tensors, "v", cfg.n_embd, cfg.n_layer, proj, quirks)
    cfg.n_ff = ffn_width(tensors, "v", cfg.n_ff, proj, quirks)
    _check_vision(f, tensors, cfg)
    return cfg


def _audio_config(f: GGUFFile, tensors: dict, quirks: list[str]) -> AudioConfig:
    A = Keys.ClipAudio
    proj, written = _projector(f, A.PROJECTOR_TYPE, "audio", quirks)
    dims = _encoder_dims(f, A, "a", quirks)
    need_stack = proj in ("ultravox", "voxtral", "glma")
    stack = metadata_value(f, A.Projector.STACK_FACTOR, int, _REQUIRED if need_stack else 0)
    cfg = AudioConfig(proj, metadata_value(f, A.NUM_MEL_BINS, int), stack_factor=stack, act=_act(f, proj, "audio"),
                      projector_act=metadata_value(f, KEY_AUDIO_MM_ACT, str, "gelu_erf"), written_type=written, **dims)
    if cfg.n_mel == 0:
        raise f.error("clip.audio.num_mel_bins must be > 0")
    widest = max((d for t in f.tensors.values() for d in t.shape), default=0)
    for key, v in ((A.NUM_MEL_BINS, cfg.n_mel), (A.Projector.STACK_FACTOR, stack)):
        if v > widest:  # both size the encoder's input and the projector's rows
            raise f.error(f"{key} is {v}, wider than any tensor of the file (largest dim {widest})")
    fix_ffn_swap(f, tensors, "a", cfg.n_embd, cfg.n_layer, proj, quirks)
    _check_audio(f, tensors, cfg)
    return cfg


# -- tensor checks: the standard towers, with the shapes the metadata implies ---------------------------
# Files whose tower has llama.cpp's standard blocks (separate q/k/v) are checked here, whatever their
# projector; each projector's own tensors, and towers of other layouts (fused qkv ...), are checked
# by the architecture that builds them (graphdsl.models: from_gguf compares every tensor its block
# declares with the file).


def tn(tensor: MODEL_TENSOR, suffix: str | None = "weight", bid: int | None = None) -> str:
    """The file name of a tensor from the gguf package's table: tn(V_ENC_ATTN_Q, "bias", 3) ==
    "v.blk.3.attn_q.bias". Without bid the "{bid}" placeholder is kept (for rename rules)."""
    base = TENSOR_NAMES[tensor].format(bid=bid) if bid is not None else TENSOR_NAMES[tensor]
    return f"{base}.{suffix}" if suffix else base


class _Checks:
    """Collects missing and mis-shaped tensors, then raises one error listing them all."""

    def __init__(self, f: GGUFFile, tensors: dict[str, GGUFTensor]):
        self.f, self.tensors, self.missing, self.bad = f, tensors, [], []

    def __call__(self, name: str, shape: tuple | None, required: bool = True) -> GGUFTensor | None:
        t = self.tensors.get(name)
        if t is None:
            if required:
                self.missing.append(name)
            return None
        if shape is not None and (t.shape != shape and not (len(shape) == 1 and int(np.prod(t.shape)) == shape[0])):
            self.bad.append(f"{name} {t.shape} != {shape}")
        return t

    def raise_if_any(self, what: str) -> None:
        parts = ([f"missing {len(self.missing)}: {', '.join(self.missing[:12])}"
                  + (" ..." if len(self.missing) > 12 else "")] if self.missing else [])
        parts += [f"shape disagrees with the metadata: {'; '.join(self.bad[:12])}"] if self.bad else []
        if parts:
            raise self.f.error(f"{what}: " + " | ".join(parts))


_BLOCK = {"v": (MODEL_TENSOR.V_ENC_INPUT_NORM, MODEL_TENSOR.V_ENC_ATTN_Q, MODEL_TENSOR.V_ENC_ATTN_K,
                MODEL_TENSOR.V_ENC_ATTN_V, MODEL_TENSOR.V_ENC_ATTN_O, MODEL_TENSOR.V_ENC_POST_ATTN_NORM,
                MODEL_TENSOR.V_ENC_FFN_UP, MODEL_TENSOR.V_ENC_FFN_DOWN),
          "a": (MODEL_TENSOR.A_ENC_INPUT_NORM, MODEL_TENSOR.A_ENC_ATTN_Q, MODEL_TENSOR.A_ENC_ATTN_K,
                MODEL_TENSOR.A_ENC_ATTN_V, MODEL_TENSOR.A_ENC_OUTPUT, MODEL_TENSOR.A_ENC_OUTPUT_NORM,
                MODEL_TENSOR.A_ENC_FFN_UP, MODEL_TENSOR.A_ENC_FFN_DOWN)}


def _check_blocks(check: _Checks, prefix: str, n: int, ff: int, n_layer: int, pre: MODEL_TENSOR,
                  post: MODEL_TENSOR) -> None:
    ln1, q, k, v, o, ln2, up, down = _BLOCK[prefix]
    for i in range(n_layer):
        for t, w, b in ((ln1, (n,), (n,)), (q, (n, n), (n,)), (k, (n, n), (n,)), (v, (n, n), (n,)),
                        (o, (n, n), (n,)), (ln2, (n,), (n,)), (up, (ff, n), (ff,)), (down, (n, ff), (n,))):
            check(tn(t, "weight", i), w)
            check(tn(t, "bias", i), b, required=False)
    for t in (pre, post):
        check(tn(t, "weight"), (n,), required=False)
        check(tn(t, "bias"), (n,), required=False)


def _check_vision(f: GGUFFile, tensors: dict, cfg: VisionConfig) -> None:
    standard = (tn(MODEL_TENSOR.V_ENC_EMBD_PATCH), tn(MODEL_TENSOR.V_ENC_EMBD_POS),
                *([tn(MODEL_TENSOR.V_ENC_ATTN_Q, "weight", 0)] if cfg.n_layer else []))
    if not all(name in tensors for name in standard):
        return  # RoPE towers, fused qkv ...: checked by the architecture that builds them
    check, n, p = _Checks(f, tensors), cfg.n_embd, cfg.patch_size
    check(tn(MODEL_TENSOR.V_ENC_EMBD_PATCH), (n, 3, p, p))
    check(tn(MODEL_TENSOR.V_ENC_EMBD_PATCH, "bias"), (n,), required=False)
    cls = check(tn(MODEL_TENSOR.V_ENC_EMBD_CLS, None), (n,), required=False)
    # "resampler" (MiniCPM-V) buckets any slice into a square table of its own size (models.minicpmv)
    rows = None if cfg.projector_type == "resampler" else cfg.n_patches + (cls is not None)
    check(tn(MODEL_TENSOR.V_ENC_EMBD_POS), (rows, n) if rows else None)
    _check_blocks(check, "v", n, cfg.n_ff, cfg.n_layer, MODEL_TENSOR.V_PRE_NORM, MODEL_TENSOR.V_POST_NORM)
    check.raise_if_any(f"vision encoder ({cfg.projector_type})")


def _check_audio(f: GGUFFile, tensors: dict, cfg: AudioConfig) -> None:
    standard = (tn(MODEL_TENSOR.A_ENC_CONV1D, "weight", 1), tn(MODEL_TENSOR.A_ENC_EMBD_POS),
                *([tn(MODEL_TENSOR.A_ENC_ATTN_Q, "weight", 0)] if cfg.n_layer else []))
    if not all(name in tensors for name in standard):
        return  # not a Whisper-style encoder: checked by the architecture that builds it
    check, n = _Checks(f, tensors), cfg.n_embd
    check(tn(MODEL_TENSOR.A_ENC_CONV1D, "weight", 1), (n, cfg.n_mel, 3))
    check(tn(MODEL_TENSOR.A_ENC_CONV1D, "bias", 1), (n,))
    check(tn(MODEL_TENSOR.A_ENC_CONV1D, "weight", 2), (n, n, 3))
    check(tn(MODEL_TENSOR.A_ENC_CONV1D, "bias", 2), (n,))
    pos = check(tn(MODEL_TENSOR.A_ENC_EMBD_POS), None)
    if pos is not None and (len(pos.shape) != 2 or pos.shape[1] != n):
        check.bad.append(f"a.position_embd.weight {pos.shape} != (n_ctx, {n})")
    _check_blocks(check, "a", n, cfg.n_ff, cfg.n_layer, MODEL_TENSOR.A_PRE_NORM, MODEL_TENSOR.A_POST_NORM)
    check.raise_if_any(f"audio encoder ({cfg.projector_type})")
