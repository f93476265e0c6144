"""Whisper audio encoder + a Voxtral-style projector (llama.cpp mmproj names, projector "voxtral").

Per 30 s window (mel (n_mel, 2 n_ctx) -> (n_ctx, d)):

    x = GELU(conv1d.1(mel)); x = GELU(conv1d.2(x)) (stride 2); x = x^T + position_embd   (build_inp_embd "audio")
    x = blk.0 .. blk.{n-1}(x)        pre-LN layers; q and v with bias, k without; exact (erf) GELU
    x = LayerNorm(a.post_ln)(x)      (HF WhisperEncoder.last_hidden_state)

Projector (Voxtral, an Ultravox-like frame stacker with a GELU MLP, no bias):

    x = reshape(x, (n_ctx / s, s * d))          stack s = stack_factor consecutive frames
    y = mm.a.mlp.2(GELU(mm.a.mlp.1(x)))         GELU: HF's projector_hidden_act (exact; gelu_new: tanh)

Voxtral was picked among the Ultravox-like projectors because its HF module
(``VoxtralMultiModalProjector``) instantiates from a config; Ultravox's is remote code.

Long audio: a clip is several 3000-frame windows (``preprocess.audio.whisper_chunks``); they run
as one batch (B, n_mel, 3000) through the same weights, and their outputs are concatenated in
order. The position embedding (sinusoidal in Whisper) is a stored weight, as in HF and llama.cpp;
``sinusoids()`` makes it for state dicts that lack it.

Example:
    >>> cfg = WhisperEncConfig(n_mel=16, n_ctx=32, n_embd=64, n_head=4, n_layer=2, n_ff=128, n_mm_embd=96)
    >>> build(cfg, n_windows=3).outputs["embd"].shape     # 3 windows x 32 frames / stack 4
    (24, 96)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from gguf import Keys

from .. import blocks, ops
from ..gguf_io import KEY_ACT, KEY_AUDIO_MM_ACT
from ..graph import Graph, Tensor
from .common import Block, EncoderHparams, post_ln_tower, projector_of, weight_shapes_of
from .gguf_keys import T, gguf_audio, tn
from .hf import convert_state, hf_dict, sub
from . import settings
from .registry import Arch, register


@dataclass(frozen=True)
class WhisperEncConfig(EncoderHparams):
    """Whisper encoder hyperparameters (``EncoderHparams``) and the projector's."""

    n_mel: int = 80
    n_ctx: int = 1500  # positions per window (HF max_source_positions); the window is 2 n_ctx frames
    projector: str | None = "voxtral"  # "voxtral" or None (encoder output only)
    stack_factor: int = 4
    n_mm_embd: int = 3072
    mm_act: str = "gelu_erf"

    @property
    def n_frames(self) -> int:
        return 2 * self.n_ctx

    qkv_bias: ClassVar[tuple[bool, bool, bool]] = (True, False, True)  # Whisper's k_proj has no bias

    @property
    def n_out(self) -> int:
        return self.n_mm_embd if self.projector else self.n_embd


class WhisperEncoder(Block):
    """Whisper encoder + Voxtral projector: mel windows f32 ([B,] n_mel, 2 n_ctx) -> ([B,] n_tokens, n_out)."""

    kind = "audio"

    # an input (shape, dtype) whose graph declares every weight
    example = property(lambda self: ((1, self.cfg.n_mel, self.cfg.n_frames), "f32"))

    def n_tokens(self, n_windows: int = 1) -> int:
        c = self.cfg
        return n_windows * (-(-c.n_ctx // c.stack_factor) if c.projector else c.n_ctx)

    def rows(self, mel) -> np.ndarray:
        """A clip's log-mel (n_mel, k * 2 n_ctx), or a list of windows, as a (k, n_mel, 2 n_ctx) batch."""
        c = self.cfg
        mel = np.stack(mel) if isinstance(mel, (list, tuple)) else np.asarray(mel, np.float32)
        if mel.ndim == 2:
            if mel.shape[0] != c.n_mel or mel.shape[1] % c.n_frames:
                raise ValueError(f"[whisper_enc] log-mel {mel.shape} must be ({c.n_mel}, k * {c.n_frames}); "
                                 "cut and pad audio with graphdsl.preprocess.audio.whisper_chunks")
            mel = mel.reshape(c.n_mel, -1, c.n_frames).transpose(1, 0, 2)
        if mel.shape[1:] != (c.n_mel, c.n_frames):
            raise ValueError(f"[whisper_enc] windows {mel.shape} must be (k, {c.n_mel}, {c.n_frames})")
        return np.ascontiguousarray(mel, np.float32)

    def _build(self, mel: Tensor) -> Tensor:
        c, g = self.cfg, mel.graph
        x = post_ln_tower(mel, c, "audio", "a", n_pos=c.n_ctx)
        if not projector_of(c, "voxtral", "whisper_enc"):
            return x
        *b, n, d = x.shape
        s = c.stack_factor
        if n % s:  # llama.cpp pads the last stack with zeros
            x = ops.pad(x, [(0, 0)] * len(b) + [(0, s - n % s), (0, 0)], name="mm.a.stack_pad")
        x = ops.reshape(x, (*b, -(-n // s), s * d), name="mm.a.stack")
        with g.scope("mm.a.mlp"):
            x = blocks.linear(x, "1", c.n_mm_embd, bias=False, wtype=c.wtype)
            x = blocks.activation(x, c.mm_act, name="act")
            x = blocks.linear(x, "2", c.n_mm_embd, bias=False, wtype=c.wtype)
        return x


def build(cfg: WhisperEncConfig, n_windows: int = 1) -> Graph:
    """A graph with input ``mel`` (n_windows, n_mel, 2 n_ctx) and output ``embd`` (n_windows * n_tokens, n_out)."""
    g = Graph("whisper_enc")
    mel = g.input("mel", (n_windows, cfg.n_mel, cfg.n_frames))
    x = WhisperEncoder(cfg)(mel)
    g.output("embd", ops.reshape(x, (-1, x.shape[-1]), name="embd"))
    return g


def weight_shapes(cfg: WhisperEncConfig) -> dict[str, tuple[int, ...]]:
    return weight_shapes_of(WhisperEncoder(cfg))


def sinusoids(n_ctx: int, n_embd: int, max_timescale: float = 10000.0) -> np.ndarray:
    """Whisper's position table: [sin(t / 10000^(i/(d/2-1))), cos(...)] for i < d/2.

    Computed in float64, then rounded: HF's float32 table differs by up to 1.2e-4 at t ~ 1500
    (float32 rounding of the angle). Real checkpoints store the table; this is only a fallback.
    """
    inc = np.log(max_timescale) / (n_embd // 2 - 1)
    inv = np.exp(-inc * np.arange(n_embd // 2))
    t = np.arange(n_ctx)[:, None] * inv[None, :]
    return np.concatenate([np.sin(t), np.cos(t)], axis=1).astype(np.float32)


def config_from_hf(hf: Any) -> WhisperEncConfig:
    """WhisperEncConfig from an HF WhisperConfig (encoder only) or VoxtralConfig (with projector)."""
    d = hf_dict(hf, "whisper_enc")
    voxtral = "audio_config" in d
    a = sub(d, "audio_config") if voxtral else d
    kw = dict(n_mel=a.get("num_mel_bins", 80), n_ctx=a.get("max_source_positions", 1500),
              n_embd=a.get("d_model", a.get("hidden_size", 384)),
              n_head=a.get("encoder_attention_heads", a.get("num_attention_heads", 6)),
              n_layer=a.get("encoder_layers", a.get("num_hidden_layers", 4)),
              n_ff=a.get("encoder_ffn_dim", a.get("intermediate_size", 1536)),
              eps=1e-5, act=blocks.act_of(a.get("activation_function", "gelu")))  # HF's LayerNorm default eps
    if not voxtral:
        return WhisperEncConfig(**kw, projector=None)
    # Voxtral's audio intermediate_size is the stacked width s * d (HF reshapes to it)
    return WhisperEncConfig(**kw, projector="voxtral", stack_factor=a["intermediate_size"] // kw["n_embd"],
                            n_mm_embd=sub(d, "text_config").get("hidden_size", 3072),
                            mm_act=blocks.act_of(d.get("projector_hidden_act", "gelu")))


def config_from_gguf(src: Any) -> WhisperEncConfig:
    """WhisperEncConfig from an mmproj GGUF (a path, ``load_mmproj``'s result or its ``MmprojConfig``).

    Projector "voxtral" (frame stacking + GELU MLP: graphdsl.audio.projector_act, else exact GELU
    as llama.cpp) or "none" (the encoder alone). n_ctx is the position table's length (the file
    has no key for it); every tensor's stored type becomes ``wtypes``.
    """
    m, a, kw = gguf_audio(src, ("voxtral", "none"), "Whisper")
    kw = dict(kw, n_ctx=m.shapes[tn(T.A_ENC_EMBD_POS)][0], act=a.act)
    if a.projector_type == "none":
        return WhisperEncConfig(**kw, projector=None)
    out = m.shapes.get(tn(T.A_MMPROJ, "weight", 2))
    if out is None:
        raise m.error("projector 'voxtral' without mm.a.mlp.2.weight")
    if a.stack_factor < 1:  # the block stacks that many frames per row
        raise m.error(f"projector 'voxtral' needs clip.audio.projector.stack_factor >= 1, got {a.stack_factor}")
    return WhisperEncConfig(**kw, projector="voxtral", stack_factor=a.stack_factor, n_mm_embd=out[0],
                            mm_act=a.projector_act)


def config_to_gguf(cfg: WhisperEncConfig) -> list[tuple[str, object]]:
    """The metadata of a file holding ``cfg``; ``config_from_gguf`` reads it back with the tensors
    (n_ctx is the position table's length, the projector's width its last matrix's)."""
    A = Keys.ClipAudio
    kv = [(Keys.Clip.HAS_AUDIO_ENCODER, True), (Keys.Clip.PROJECTOR_TYPE, cfg.projector or "none"),
          (A.NUM_MEL_BINS, cfg.n_mel), (A.EMBEDDING_LENGTH, cfg.n_embd), (A.FEED_FORWARD_LENGTH, cfg.n_ff),
          (A.BLOCK_COUNT, cfg.n_layer), (A.Attention.HEAD_COUNT, cfg.n_head),
          (A.Attention.LAYERNORM_EPS, float(cfg.eps)), (KEY_ACT.format(modality="audio"), cfg.act)]
    if cfg.projector:
        kv += [(A.Projector.STACK_FACTOR, cfg.stack_factor), (A.PROJECTION_DIM, int(cfg.n_mm_embd)),
               (KEY_AUDIO_MM_ACT, cfg.mm_act)]
    return kv


def encoder_rules() -> list[tuple[str, str]]:
    """HF WhisperEncoder's names -> llama.cpp's audio tensors (stem, blocks, final LayerNorm): what
    every Whisper-style tower shares (Voxtral, Qwen2-Audio)."""
    per_layer = {"self_attn.q_proj": T.A_ENC_ATTN_Q, "self_attn.k_proj": T.A_ENC_ATTN_K,
                 "self_attn.v_proj": T.A_ENC_ATTN_V, "self_attn.out_proj": T.A_ENC_OUTPUT,
                 "self_attn_layer_norm": T.A_ENC_INPUT_NORM, "final_layer_norm": T.A_ENC_OUTPUT_NORM,
                 "fc1": T.A_ENC_FFN_UP, "fc2": T.A_ENC_FFN_DOWN}.items()
    rules = [("embed_positions.weight", tn(T.A_ENC_EMBD_POS))]
    for s in ("weight", "bias"):
        rules += [(f"conv{i}.{s}", tn(T.A_ENC_CONV1D, s, i)) for i in (1, 2)]
        rules += [(f"layer_norm.{s}", tn(T.A_POST_NORM, s))]
        rules += [(f"layers.{{bid}}.{hf}.{s}", tn(t, s)) for hf, t in per_layer]
    return rules


def _rules():
    return [*encoder_rules(), *((f"multi_modal_projector.linear_{i}.weight", tn(T.A_MMPROJ, "weight", i))
                                for i in (1, 2))]


def hf_to_gguf(state_dict, config) -> dict[str, np.ndarray]:
    """HF WhisperEncoder / WhisperModel / VoxtralForConditionalGeneration tensors -> gguf names (f32).

    Returns exactly the tensors the graph of ``config`` uses; a missing position table is
    filled with ``sinusoids()``.
    """
    cfg = config if isinstance(config, WhisperEncConfig) else config_from_hf(config)
    def fix(out):
        out.setdefault(tn(T.A_ENC_EMBD_POS), sinusoids(cfg.n_ctx, cfg.n_embd))
        return out
    return convert_state(state_dict, ["model.encoder.", "model.audio_tower.", "audio_tower.", "encoder.", "model."],
                         _rules(), weight_shapes(cfg), "whisper_enc", fix)


def _not_mels(v, checkpoint) -> bool:
    c = checkpoint.get("config") or {}
    n = settings.lookup(c, "audio_config.num_mel_bins")
    n = settings.lookup(c, "num_mel_bins") if n is settings.MISSING else n
    return v != (80 if n is settings.MISSING else n)


_DECODER = "Whisper's text decoder / classification head, which graphdsl does not convert"
_TRAIN = "training only (SpecAugment, initialisation)"
_MEL = "graphdsl's log-mel is Whisper's: 16 kHz, n_fft 400, hop 160, 30 s windows of 3000 frames"
A = Keys.ClipAudio
SETTINGS = (
    *(x for pre in ("", "audio_config.") for x in (
        settings.carried("config", pre + "num_mel_bins", A.NUM_MEL_BINS),
        settings.carried("config", pre + "activation_function", "graphdsl.audio.act"),
        settings.carried("config", pre + "max_source_positions", "tensor a.position_embd.weight"),
        settings.unless("config", pre + "scale_embedding", False, "graphdsl's encoder does not scale its input"),
        settings.irrelevant("config", pre + "vocab_size", _DECODER))),
    *(settings.carried("config", k, key) for k, key in (
        ("d_model", A.EMBEDDING_LENGTH), ("encoder_layers", A.BLOCK_COUNT), ("encoder_attention_heads",
         A.Attention.HEAD_COUNT), ("encoder_ffn_dim", A.FEED_FORWARD_LENGTH),
        ("audio_config.hidden_size", A.EMBEDDING_LENGTH), ("audio_config.num_hidden_layers", A.BLOCK_COUNT),
        ("audio_config.num_attention_heads", A.Attention.HEAD_COUNT),
        ("audio_config.intermediate_size", A.Projector.STACK_FACTOR),  # Voxtral's: the stacked width
        ("text_config.hidden_size", A.PROJECTION_DIM))),
    settings.carried("config", "projector_hidden_act", KEY_AUDIO_MM_ACT),
    settings.irrelevant("config", "hidden_size", "Voxtral's: its text_config.hidden_size (the projector's width)"),
    settings.decoder(),
    *(settings.irrelevant("config", k, _DECODER) for k in (
        "decoder_attention_heads", "decoder_ffn_dim", "decoder_layers", "max_target_positions",
        "begin_suppress_tokens", "suppress_tokens", "median_filter_width", "classifier_proj_size",
        "use_weighted_layer_sum")),
    *(settings.irrelevant("config", k, _TRAIN) for k in (
        "apply_spec_augment", "mask_feature_length", "mask_feature_min_masks", "mask_feature_prob",
        "mask_time_length", "mask_time_min_masks", "mask_time_prob", "init_std")),
    settings.Setting("processor", "feature_size", refuse=_not_mels,
                     reason="the log-mel has the encoder's num_mel_bins bands"),
    *(settings.unless("processor", k, v, _MEL) for k, v in (
        ("sampling_rate", 16000), ("n_fft", 400), ("hop_length", 160), ("chunk_length", 30), ("n_samples", 480000),
        ("nb_max_frames", 3000))),
    settings.unless("processor", "dither", 0.0, "graphdsl's log-mel adds no random noise"),
)


ARCH = register(Arch(
    "whisper_enc", "audio", WhisperEncoder, WhisperEncConfig, config_from_hf, config_from_gguf, config_to_gguf,
    hf_to_gguf, projectors=("voxtral", "none"), hf_model_types=("whisper", "voxtral"), settings=SETTINGS,
    examples=(WhisperEncConfig(n_mel=16, n_ctx=20, n_embd=32, n_head=4, n_layer=2, n_ff=64, stack_factor=4,
                               n_mm_embd=48),
              WhisperEncConfig(n_mel=16, n_ctx=20, n_embd=32, n_head=4, n_layer=2, n_ff=64, projector=None))))
