"""Qwen2-Audio's encoder and projector (HF ``Qwen2AudioForConditionalGeneration``; llama.cpp's
projector "qwen2a").

HF runs every clip as one window of 2 n_ctx log-mel frames (30 s), the frames past the clip's
T real ones masked as keys (``feature_attention_mask``), and the decoder reads the first
(L - 2) // 2 + 1 rows, L = ceil(T / 2). Those rows depend on the mel frames 0 .. 2L only, so a
clip is given as those frames (``preprocess.qwen2audio``: 2L + 1 of them, or the whole window):

    x = GELU(conv1d.1(mel)); x = GELU(conv1d.2(x)) (stride 2); x = x^T + position_embd[0:n]
    x = blk.0 .. blk.{n-1}(x)             pre-LN Whisper layers; keys past the clip's L rows masked
    x = avg_pool(2)(x[0:L])               rows 2i, 2i+1 (HF's AvgPool1d; a last odd row is dropped)
    y = mm.a.fc(a.post_ln(x))             (HF's layer_norm, multi_modal_projector.linear)

A mel of F frames has L = F // 2 rows: an odd last frame is only read by the stem. All clips of
a batch run as one (B, n_mel, F_max) batch, each zero-padded past its frames and masked at its
own L, so a short clip costs its frames, not HF's 30 s (the rows are HF's: masked keys weigh
exactly zero). The position table is a checkpoint weight (HF's embed_positions).

llama.cpp's mtmd runs the whole window with no mask: its rows differ from HF's for any clip
shorter than the window (the padding's rows enter every row's attention).

Example:
    >>> cfg = Qwen2AudioConfig(n_mel=16, n_ctx=50, n_embd=32, n_ff=64, n_head=4, n_layer=2, n_mm_embd=48)
    >>> build(cfg, n_frames=37).outputs["embd"].shape     # 18 rows after the stem -> 9 pooled
    (9, 48)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import Keys

from .. import blocks, ops
from ..gguf_io import KEY_ACT
from ..graph import Graph, Tensor
from ..inp_embd import build_inp_embd, shape_guard
from .common import LogMelClips, LogMelHparams, weight_shapes_of
from .gguf_keys import T, gguf_audio, tn
from .hf import convert_state, hf_dict, sub
from .qwen2_5omni_audio import omni_file
from . import settings
from .registry import Arch, register
from .whisper_enc import encoder_rules

HF_TYPE = "qwen2_audio"
# Qwen2AudioConfig's audio_config defaults: save_pretrained leaves out the fields equal to them
HF_DEFAULTS = {"num_mel_bins": 128, "encoder_layers": 32, "encoder_attention_heads": 20, "encoder_ffn_dim": 5120,
               "d_model": 1280, "activation_function": "gelu", "max_source_positions": 1500}


@dataclass(frozen=True)
class Qwen2AudioConfig(LogMelHparams):
    """Whisper-style encoder hyperparameters, the window (2 n_ctx frames) and the projector's width."""

    n_mel: int = 128
    n_ctx: int = 1500  # positions (HF max_source_positions); HF's window is 2 n_ctx frames
    n_mm_embd: int = 4096  # the decoder's hidden size
    def rows(self, n_frames: int) -> int:
        """Output rows of a clip given as ``n_frames`` mel frames (the frames the stem reads)."""
        return max(0, (n_frames // 2 - 2) // 2 + 1)


def pool_rows(rows: list[int], n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """The (even, odd) stem rows each pooled output averages, as indices into the (B * n_rows)
    stem rows of a batch whose clips give ``rows`` outputs each; clips in order."""
    even, odd = [], []
    for b, r in enumerate(rows):
        first = b * n_rows + 2 * np.arange(r)
        even.append(first)
        odd.append(first + 1)
    return np.concatenate(even).astype(np.int32), np.concatenate(odd).astype(np.int32)


class Qwen2AudioEncoder(LogMelClips):
    """Log-mel clips f32 (n_mel, F_i) -> (rows(F_i), n_mm_embd) each; see the module doc."""

    example = property(lambda self: ((self.cfg.n_mel, 2 * self.cfg.n_ctx), "f32"))

    def features(self, data) -> np.ndarray:
        n = 2 * self.cfg.n_ctx
        return self.log_mel(data, "qwen2audio", "the frames its stem reads: preprocess.qwen2audio.qwen2audio_features",
                            lambda f: "" if 5 <= f <= n else f"a clip of {f} mel frames: the encoder takes 5 (one "
                                                             f"output row) to {n} (its window)")

    def build_items(self, g: Graph, prefix: str, datas, batch_kinds=()):
        """All clips as one zero-padded batch ``{prefix}.mel``; the key is each clip's frame count."""
        mels = [self.features(d) for d in datas]
        frames = [m.shape[1] for m in mels]
        n = max(frames)
        batch = np.stack([np.pad(m, ((0, 0), (0, n - m.shape[1]))) for m in mels])
        with g.weight_types(self.cfg.wtypes):
            outs = self._clips(g.input(f"{prefix}.mel", batch.shape), frames)
        return {f"{prefix}.mel": batch}, outs, tuple(frames)

    def _build(self, mel: Tensor) -> Tensor:
        if mel.ndim != 2:
            raise ValueError(f"[qwen2audio] build takes one clip (n_mel, F), got {mel.shape}; "
                             "several clips go through build_items")
        x = ops.reshape(mel, (1, *mel.shape), name="a.clip")
        return self._clips(x, [mel.shape[-1]])[0]

    def _clips(self, x: Tensor, frames: list[int]) -> list[Tensor]:
        c, g = self.cfg, x.graph
        if c.n_embd % c.n_head:
            raise ValueError(f"[qwen2audio] n_embd {c.n_embd} must be a multiple of n_head {c.n_head}")
        # the masks and the pooled rows follow each clip's frames, fixed here
        shape_guard(g, "a.clip_guard", x, "[qwen2audio] the clips' masks are built for their frame counts")
        real = np.array([f // 2 for f in frames])
        with g.scope("a"):
            x = build_inp_embd("audio", x, n_embd=c.n_embd, n_pos=c.n_ctx)
        # HF's bidirectional mask hides the keys past each clip's rows
        rows = [c.rows(f) for f in frames]
        return self.pooled(x, real, *pool_rows(rows, x.shape[1]), rows)


def build(cfg: Qwen2AudioConfig, n_frames: int | None = None) -> Graph:
    """A graph with input ``mel`` (n_mel, n_frames; default the whole window) and output ``embd``."""
    g = Graph("qwen2audio")
    mel = g.input("mel", (cfg.n_mel, 2 * cfg.n_ctx if n_frames is None else n_frames))
    g.output("embd", Qwen2AudioEncoder(cfg)(mel))
    return g


def weight_shapes(cfg: Qwen2AudioConfig) -> dict[str, tuple[int, ...]]:
    return weight_shapes_of(Qwen2AudioEncoder(cfg))


def config_from_hf(hf: Any) -> Qwen2AudioConfig:
    """From an HF Qwen2AudioConfig (its audio_config; the projector's width is text_config.hidden_size)."""
    d = hf_dict(hf, "qwen2audio")
    if d.get("model_type") not in (HF_TYPE, None) or "audio_config" not in d:
        raise ValueError(f"[qwen2audio.config_from_hf] needs a Qwen2AudioConfig (model_type {HF_TYPE!r} with an "
                         f"audio_config), got model_type {d.get('model_type')!r}")
    a = {**HF_DEFAULTS, **sub(d, "audio_config")}
    return Qwen2AudioConfig(n_mel=a["num_mel_bins"], n_embd=a["d_model"], n_ff=a["encoder_ffn_dim"],
                            n_head=a["encoder_attention_heads"], n_layer=a["encoder_layers"],
                            act=blocks.act_of(a["activation_function"]), n_ctx=a["max_source_positions"],
                            n_mm_embd=sub(d, "text_config").get("hidden_size", 4096))


def config_from_gguf(src: Any) -> Qwen2AudioConfig:
    """From an mmproj file with projector "qwen2a" (Qwen2.5-Omni's "qwen2.5o" files are that arch's):
    n_ctx is the position table's length, n_mm_embd mm.a.fc's width."""
    m, a, kw = gguf_audio(src, ("qwen2a",), "Qwen2-Audio")
    if omni_file(m):
        raise m.error("a Qwen2.5-Omni audio encoder (projector 'qwen2.5o'): graphdsl.models.qwen2_5omni_audio's")
    pos, out = m.shapes.get(tn(T.A_ENC_EMBD_POS)), m.shapes.get(tn(T.A_MMPROJ_FC))
    if pos is None or out is None:
        raise m.error("a Qwen2-Audio encoder needs a.position_embd.weight and mm.a.fc.weight")
    return Qwen2AudioConfig(**kw, act=a.act, n_ctx=pos[0], n_mm_embd=out[0])


def config_to_gguf(cfg: Qwen2AudioConfig) -> list[tuple[str, object]]:
    """llama.cpp's keys (its converter's WhisperEncoderModel for Qwen2-Audio) and the exact activation."""
    A = Keys.ClipAudio
    return [(Keys.Clip.HAS_AUDIO_ENCODER, True), (Keys.Clip.PROJECTOR_TYPE, "qwen2a"), (A.NUM_MEL_BINS, cfg.n_mel),
            (A.EMBEDDING_LENGTH, cfg.n_embd), (A.FEED_FORWARD_LENGTH, cfg.n_ff), (A.BLOCK_COUNT, cfg.n_layer),
            (A.Attention.HEAD_COUNT, cfg.n_head), (A.Attention.LAYERNORM_EPS, float(cfg.eps)),
            (KEY_ACT.format(modality="audio"), cfg.act), (A.PROJECTION_DIM, int(cfg.n_mm_embd))]


def _rules():
    return [*encoder_rules(), *((f"multi_modal_projector.linear.{s}", tn(T.A_MMPROJ_FC, s)) for s in ("weight", "bias"))]


def hf_to_gguf(state_dict, config) -> dict[str, np.ndarray]:
    """HF Qwen2AudioForConditionalGeneration tensors (``audio_tower.*``, ``multi_modal_projector.*``,
    with or without ``model.``) -> gguf names (f32); the language model's are left out."""
    cfg = config if isinstance(config, Qwen2AudioConfig) else config_from_hf(config)
    return convert_state(state_dict, ("model.audio_tower.", "audio_tower.", "model."), _rules(), weight_shapes(cfg),
                         "qwen2audio")


def features_of(src: Any, mmproj, text_info=None, max_seconds: float | None = None) -> np.ndarray:
    """``embed_files``' pre-processing: HF's processor's padded window, cut to the frames the
    encoder reads (``preprocess.qwen2audio``); a clip past the window is cut as HF cuts it."""
    from ..preprocess.qwen2audio import qwen2audio_features
    c = mmproj.audio.cfg
    return qwen2audio_features(src, c.n_mel, n_ctx=c.n_ctx, **({} if max_seconds is None else
                                                                {"max_seconds": max_seconds}))[0]


def _config(checkpoint) -> dict:
    return {**HF_DEFAULTS, **sub(checkpoint.get("config") or {}, "audio_config")}


def _not_mels(v, checkpoint) -> bool:
    return v != _config(checkpoint)["num_mel_bins"]


def _not_window(v, checkpoint) -> bool:
    # HF's encoder refuses features of any length but 2 max_source_positions frames (100 per second)
    return v * 100 != 2 * _config(checkpoint)["max_source_positions"]


A, P = Keys.ClipAudio, "audio_config."
_TRAIN = "training only (dropout, layer drop, initialisation)"
_MEL = "graphdsl's log-mel is Whisper's: 16 kHz, n_fft 400, hop 160"
SETTINGS = (
    *(settings.carried("config", P + k, key) for k, key in (
        ("num_mel_bins", A.NUM_MEL_BINS), ("d_model", A.EMBEDDING_LENGTH), ("encoder_layers", A.BLOCK_COUNT),
        ("encoder_attention_heads", A.Attention.HEAD_COUNT), ("encoder_ffn_dim", A.FEED_FORWARD_LENGTH),
        ("activation_function", KEY_ACT.format(modality="audio")),
        ("max_source_positions", "tensor a.position_embd.weight"))),
    settings.irrelevant("config", P + "scale_embedding", "HF's encoder computes embed_scale and never applies it"),
    *(settings.irrelevant("config", P + k, _TRAIN) for k in (
        "encoder_layerdrop", "dropout", "attention_dropout", "activation_dropout", "initializer_range")),
    settings.decoder(),
    settings.irrelevant("config", "audio_token_index", "the decoder's placeholder token id, not the rows"),
    settings.Setting("processor", "feature_size", refuse=_not_mels,
                     reason="the log-mel has the encoder's audio_config.num_mel_bins bands"),
    settings.Setting("processor", "chunk_length", refuse=_not_window,
                     reason="HF's encoder takes windows of 2 max_source_positions frames, the file's position "
                            "table; another chunk_length makes HF raise"),
    *(settings.irrelevant("processor", k, "HF's feature extractor recomputes it from chunk_length")
      for k in ("n_samples", "nb_max_frames")),
    *(settings.unless("processor", k, v, _MEL) for k, v in (("sampling_rate", 16000), ("n_fft", 400),
                                                              ("hop_length", 160))),
    settings.unless("processor", "dither", 0.0, "graphdsl's log-mel adds no random noise"),
    # not COMMON_PROCESSOR's "one input is not padded": every clip is padded to its window, and the
    # last rows read the log-mel frames of that padding
    settings.unless("processor", "padding_value", 0.0, "graphdsl pads a clip to its window with silence (zeros)"),
)


ARCH = register(Arch(
    "qwen2audio", "audio", Qwen2AudioEncoder, Qwen2AudioConfig, config_from_hf, config_from_gguf, config_to_gguf,
    hf_to_gguf, projectors=("qwen2a",), hf_model_types=(HF_TYPE,), prepare=features_of, settings=SETTINGS,
    examples=(Qwen2AudioConfig(n_mel=16, n_ctx=40, n_embd=32, n_ff=64, n_head=4, n_layer=2, n_mm_embd=48),)))
