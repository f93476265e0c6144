"""Qwen2.5-Omni's audio encoder (HF ``Qwen2_5OmniAudioEncoder``; llama.cpp's projector "qwen2.5o",
which its reader takes as "qwen2a" for the audio side).

Per clip (log-mel (n_mel, T), the clip's own frames only: HF's ``feature_attention_mask``):

    chunks = the clip cut every 2 n_window frames (the last one shorter), padded to one length L
    x = GELU(conv1d.1(chunk)) * frame_mask               frames past a chunk's end are zeroed (HF's padded_mask)
    x = GELU(conv1d.2(x)) (stride 2); x = x^T + position_embd[0:L/2]     positions restart in every chunk
    x = blk.0 .. blk.{n-1}(x)            pre-LN Whisper layers; each chunk attends only to its own rows
    x = the chunks' real rows, in order; avg_pool(2) over the clip   (HF's pool_indices: rows 2i, 2i+1)
    y = mm.a.fc(a.post_ln(x))            (HF's ln_post, proj)        -> ((ceil(T/2) - 2) // 2 + 1, n_mm_embd)

All chunks of all clips of a batch run as one (B, n_mel, L) batch; the chunk a clip ends in is
masked as HF masks it. The sinusoid table (HF builds it at load, it is in no checkpoint) is
written into the file as llama.cpp's converter does, in HF's float32 arithmetic.

llama.cpp's mtmd runs this encoder as Qwen2-Audio's, over 30 s windows without the chunked
attention: its rows differ from HF's for clips longer than one chunk (2 s at n_window 100).

Example:
    >>> cfg = Qwen25OmniAudioConfig(n_mel=16, n_embd=32, n_ff=64, n_head=4, n_layer=2, n_window=5, n_mm_embd=48)
    >>> build(cfg, n_frames=37).outputs["embd"].shape     # 19 rows after the stem -> 9 pooled
    (9, 48)
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from gguf import Keys

from .. import blocks, ops
from ..gguf_io import KEY_ACT, metadata_value, tn
from ..graph import Graph, Tensor
from ..inp_embd import f32_table, shape_guard
from .common import LogMelClips, LogMelHparams, weight_shapes_of
from .gguf_keys import mmproj_config, T
from .hf import as_dict, convert_state, sub
from . import settings
from .registry import Arch, register

KEY_N_WINDOW = "graphdsl.qwen2_5omni.n_window"
KEY_CHUNK_LENGTH = "graphdsl.qwen2_5omni.chunk_length"
PREFIXES = ("thinker.model.audio_tower.", "thinker.audio_tower.", "model.audio_tower.", "audio_tower.")
HF_TYPES = ("qwen2_5_omni_thinker", "qwen2_5_omni_audio_encoder")
WHOLE = "qwen2_5_omni"  # Qwen2_5OmniForConditionalGeneration: the thinker's config under thinker_config
# Qwen2_5OmniAudioEncoderConfig's defaults: save_pretrained leaves out the fields equal to them
HF_DEFAULTS = {"num_mel_bins": 128, "encoder_layers": 32, "encoder_attention_heads": 20, "encoder_ffn_dim": 5120,
               "d_model": 1280, "activation_function": "gelu", "max_source_positions": 1500, "n_window": 100,
               "output_dim": 3584}


@dataclass(frozen=True)
class Qwen25OmniAudioConfig(LogMelHparams):
    """Whisper-style encoder hyperparameters, HF's chunk (n_window) and the projection's width."""

    n_mel: int = 128
    n_ctx: int = 1500  # rows of the sinusoid table (HF max_source_positions)
    n_window: int = 100  # chunks of 2 n_window frames
    n_mm_embd: int = 3584  # HF output_dim
    def rows(self, n_frames: int) -> int:
        """Output rows of a clip of n_frames (HF's _get_feat_extract_output_lengths)."""
        return ((n_frames - 1) // 2 + 1 - 2) // 2 + 1


def chunks(lengths: list[int], n_window: int) -> list[tuple[int, int, int]]:
    """(clip, first frame, frames) of every chunk of clips of ``lengths`` frames, in order."""
    step = 2 * n_window
    return [(i, s, min(step, t - s)) for i, t in enumerate(lengths) for s in range(0, t, step)]


def layout(lengths: list[int], n_window: int):
    """What the graph needs besides the mel: the chunk length L, per chunk its frames (B,) and real
    rows after the stem (B,), and the rows each pooled output averages (even, odd: indices into
    the (B * rows(L)) stem rows)."""
    cs = chunks(lengths, n_window)
    size = max(n for _, _, n in cs)
    n_rows = (size - 1) // 2 + 1
    frames = np.array([n for _, _, n in cs])
    real = (frames - 1) // 2 + 1
    even, odd = [], []
    for i in range(len(lengths)):
        rows = np.concatenate([b * n_rows + np.arange(real[b]) for b, (ci, _, _) in enumerate(cs) if ci == i])
        p = len(rows) // 2
        even.append(rows[0:2 * p:2])
        odd.append(rows[1:2 * p:2])
    return size, frames, real, np.concatenate(even).astype(np.int32), np.concatenate(odd).astype(np.int32)


class Qwen25OmniAudio(LogMelClips):
    """Log-mel clips f32 (n_mel, T_i) -> (rows(T_i), n_mm_embd) each; see the module doc."""

    # two chunks, the second one short: declares every weight
    example = property(lambda self: ((self.cfg.n_mel, 3 * self.cfg.n_window), "f32"))

    def features(self, data) -> np.ndarray:
        return self.log_mel(data, "qwen2_5omni_audio", "its own frames: qwen2_5omni_audio.features_of",
                            lambda t: "" if self.cfg.rows(t) >= 1 else f"{t} frames give no output row (HF needs >= 3)")

    def build_items(self, g: Graph, prefix: str, datas, batch_kinds=()):
        """Every clip as an input ``{prefix}.{i}``; one encoder batch for all their chunks."""
        mels = [self.features(d) for d in datas]
        feeds = {f"{prefix}.{i}": m for i, m in enumerate(mels)}
        with g.weight_types(getattr(self.cfg, "wtypes", None)):
            outs = self._clips([g.input(k, v.shape) for k, v in feeds.items()])
        return feeds, outs, tuple(m.shape[1] for m in mels)

    def _build(self, mel: Tensor) -> Tensor:
        return self._clips([mel])[0]

    def _clips(self, mels: list[Tensor]) -> list[Tensor]:
        c, g = self.cfg, mels[0].graph
        if c.n_window < 1 or c.n_window > c.n_ctx or c.n_embd % c.n_head:
            raise ValueError(f"[qwen2_5omni_audio] n_window {c.n_window} must be in 1..n_ctx ({c.n_ctx}) and n_embd "
                             f"{c.n_embd} a multiple of n_head {c.n_head}")
        lengths = [m.shape[-1] for m in mels]
        for i, m in enumerate(mels):  # the chunk layout below is fixed for these lengths
            shape_guard(g, f"a.clip_guard.{i}", m, "[qwen2_5omni_audio] the chunks are cut at build time")
        size, frames, real, even, odd = layout(lengths, c.n_window)
        with g.scope("a"):
            x = self._batch(mels, lengths, size)
            # HF zeroes the stem's first output past a chunk's end (padded_mask)
            keep = (np.arange(size)[None, :] < frames[:, None]).astype(np.float32)[:, None, :]
            x = self._stem(x, g.const("frame_mask", keep) if (frames < size).any() else None)
        # each chunk attends to its own real rows (HF's cu_seqlens)
        return self.pooled(x, real, even, odd, [c.rows(t) for t in lengths])

    def _batch(self, mels: list[Tensor], lengths: list[int], size: int) -> Tensor:
        """The clips' chunks as one (B, n_mel, size) batch, each clip zero-padded to whole chunks."""
        step, parts = 2 * self.cfg.n_window, []
        for i, (m, t) in enumerate(zip(mels, lengths)):
            k = -(-t // step)
            if k == 1:
                p = m if t == size else ops.pad(m, ((0, 0), (0, size - t)), name=f"clip.{i}.pad")
                parts.append(ops.reshape(p, (1, *p.shape), name=f"clip.{i}.chunks"))
                continue
            p = m if t == k * step else ops.pad(m, ((0, 0), (0, k * step - t)), name=f"clip.{i}.pad")
            p = ops.reshape(p, (m.shape[0], k, step), name=f"clip.{i}.split")
            parts.append(ops.cont(ops.permute(p, (1, 0, 2), name=f"clip.{i}.perm"), name=f"clip.{i}.chunks"))
        return ops.concat(parts, axis=0, name="chunks") if len(parts) > 1 else parts[0]

    def _stem(self, x: Tensor, keep: Tensor | None) -> Tensor:
        """Whisper's conv stem with HF's mask between the convolutions: (B, n_mel, L) -> (B, L/2, d) + positions."""
        c, g = self.cfg, x.graph
        for i, (c_in, stride) in enumerate(((c.n_mel, 1), (c.n_embd, 2)), start=1):
            w = g.weight(f"conv1d.{i}.weight", (c.n_embd, c_in, 3))
            x = ops.conv_1d(w, x, stride=stride, padding=1, name=f"conv1d.{i}.conv")
            bias = ops.reshape(g.weight(f"conv1d.{i}.bias", (c.n_embd,)), (c.n_embd, 1), name=f"conv1d.{i}.bias_col")
            x = ops.gelu_erf(ops.add(x, bias, name=f"conv1d.{i}.b"), name=f"conv1d.{i}")
            if i == 1 and keep is not None:
                x = ops.mul(x, keep, name="conv1d.1.masked")
        n = x.shape[-1]
        x = ops.permute(x, (0, 2, 1), name="conv1d.t")
        pos = f32_table(g, "position_embd.weight", (c.n_ctx, c.n_embd))
        return ops.add(x, ops.view(pos, 0, 0, n, name="pos_rows"), name="inp_pos")


def build(cfg: Qwen25OmniAudioConfig, n_frames: int = 300) -> Graph:
    """A graph with input ``mel`` (n_mel, n_frames) and output ``embd`` (rows(n_frames), n_mm_embd)."""
    g = Graph("qwen2_5omni_audio")
    g.output("embd", Qwen25OmniAudio(cfg)(g.input("mel", (cfg.n_mel, n_frames))))
    return g


def weight_shapes(cfg: Qwen25OmniAudioConfig) -> dict[str, tuple[int, ...]]:
    return weight_shapes_of(Qwen25OmniAudio(cfg))


def sinusoids(n_ctx: int, n_embd: int) -> np.ndarray:
    """HF's SinusoidsPositionEmbedding table, in its float32 arithmetic (log step in double, the
    rest float32): [sin(t * inv), cos(t * inv)], inv = exp(-log(10000) / (d/2 - 1) * i)."""
    inc = np.float32(-np.log(10000.0) / (n_embd // 2 - 1))
    inv = np.exp(inc * np.arange(n_embd // 2, dtype=np.float32))
    t = np.arange(n_ctx, dtype=np.float32)[:, None] * inv[None, :]
    return np.concatenate([np.sin(t), np.cos(t)], axis=1).astype(np.float32)


def thinker_of(d: Mapping) -> dict:
    """The thinker's config of a whole Qwen2.5-Omni config (its thinker_config), else ``d``."""
    return sub(d, "thinker_config") if d.get("model_type") == WHOLE else dict(d)


def whole_model(decls) -> tuple:
    """Config declarations as a whole Qwen2.5-Omni config holds the fields (under thinker_config)."""
    return tuple(replace(s, path="thinker_config." + s.path) for s in decls if s.source == "config")


def _audio_config(hf: Any) -> dict:
    d = thinker_of(as_dict(hf))  # the thinker's model type is the vision arch's; its audio_config is read here
    if d.get("model_type") not in (*HF_TYPES, None):
        raise ValueError(f"[qwen2_5omni_audio.config_from_hf] needs a Qwen2.5-Omni thinker or audio encoder "
                         f"config, got model_type {d.get('model_type')!r}")
    return {**HF_DEFAULTS, **(sub(d, "audio_config") or d)}


def config_from_hf(hf: Any) -> Qwen25OmniAudioConfig:
    """From an HF Qwen2_5OmniThinkerConfig (its audio_config) or Qwen2_5OmniAudioEncoderConfig."""
    a = _audio_config(hf)
    return Qwen25OmniAudioConfig(n_mel=a["num_mel_bins"], n_embd=a["d_model"], n_ff=a["encoder_ffn_dim"],
                                 n_head=a["encoder_attention_heads"], n_layer=a["encoder_layers"],
                                 act=blocks.act_of(a["activation_function"]), n_ctx=a["max_source_positions"],
                                 n_window=a["n_window"], n_mm_embd=a["output_dim"])


def omni_file(m) -> bool:
    """Whether an mmproj file names Qwen2.5-Omni's projector ("qwen2.5o"), which the reader takes as
    "qwen2.5vl_merger" for vision and "qwen2a" for audio: the two archs of this family claim it."""
    f = getattr(m, "file", None)
    keys = (Keys.Clip.PROJECTOR_TYPE, Keys.ClipVision.PROJECTOR_TYPE, Keys.ClipAudio.PROJECTOR_TYPE)
    return f is not None and any(metadata_value(f, k, str, "") == "qwen2.5o" for k in keys)


def config_from_gguf(src: Any) -> Qwen25OmniAudioConfig:
    m = mmproj_config(src)
    a = m.audio
    if a is None or not omni_file(m):
        raise m.error("no Qwen2.5-Omni audio encoder (projector type 'qwen2.5o')")
    pos, out = m.shapes.get(tn(T.A_ENC_EMBD_POS)), m.shapes.get(tn(T.A_MMPROJ_FC))
    if pos is None or out is None:
        raise m.error("a Qwen2.5-Omni audio encoder needs a.position_embd.weight and mm.a.fc.weight")
    return Qwen25OmniAudioConfig(n_mel=a.n_mel, n_embd=a.n_embd, n_ff=a.n_ff, n_head=a.n_head, n_layer=a.n_layer,
                                 eps=a.eps, act=a.act, n_ctx=pos[0], n_window=metadata_value(m.file, KEY_N_WINDOW, int, 100),
                                 n_mm_embd=out[0], wtype=m.dtypes.get(tn(T.A_ENC_ATTN_Q, "weight", 0), "f32"),
                                 wtypes=dict(m.dtypes))


def config_to_gguf(cfg: Qwen25OmniAudioConfig) -> list[tuple[str, object]]:
    A = Keys.ClipAudio
    return [(Keys.Clip.HAS_AUDIO_ENCODER, True), (Keys.Clip.PROJECTOR_TYPE, "qwen2.5o"), (A.NUM_MEL_BINS, cfg.n_mel),
            (A.EMBEDDING_LENGTH, cfg.n_embd), (A.FEED_FORWARD_LENGTH, cfg.n_ff), (A.BLOCK_COUNT, cfg.n_layer),
            (A.Attention.HEAD_COUNT, cfg.n_head), (A.Attention.LAYERNORM_EPS, float(cfg.eps)),
            (KEY_ACT.format(modality="audio"), cfg.act), (A.PROJECTION_DIM, int(cfg.n_mm_embd)),
            (KEY_N_WINDOW, int(cfg.n_window))]


def _rules():
    per_layer = {"self_attn.q_proj": T.A_ENC_ATTN_Q, "self_attn.k_proj": T.A_ENC_ATTN_K,
                 "self_attn.v_proj": T.A_ENC_ATTN_V, "self_attn.out_proj": T.A_ENC_OUTPUT,
                 "self_attn_layer_norm": T.A_ENC_INPUT_NORM, "final_layer_norm": T.A_ENC_OUTPUT_NORM,
                 "fc1": T.A_ENC_FFN_UP, "fc2": T.A_ENC_FFN_DOWN}.items()
    rules = []
    for s in ("weight", "bias"):
        rules += [(f"conv{i}.{s}", tn(T.A_ENC_CONV1D, s, i)) for i in (1, 2)]
        rules += [(f"ln_post.{s}", tn(T.A_POST_NORM, s)), (f"proj.{s}", tn(T.A_MMPROJ_FC, s))]
        rules += [(f"layers.{{bid}}.{hf}.{s}", tn(t, s)) for hf, t in per_layer]
    return rules


def hf_to_gguf(state_dict, config) -> dict[str, np.ndarray]:
    """HF Qwen2_5OmniThinkerForConditionalGeneration tensors (``audio_tower.*``) -> gguf names (f32),
    with the sinusoid table HF computes at load (audio_bos_eos_token, unused by HF, is left out)."""
    cfg = config if isinstance(config, Qwen25OmniAudioConfig) else config_from_hf(config)

    def fix(out):
        out.setdefault(tn(T.A_ENC_EMBD_POS), sinusoids(cfg.n_ctx, cfg.n_embd))
        return out
    return convert_state(state_dict, PREFIXES, _rules(), weight_shapes(cfg), "qwen2_5omni_audio", fix)


def features_of(src: Any, mmproj, text_info=None, max_seconds: float | None = None) -> np.ndarray:
    """``embed_files``' pre-processing, HF's WhisperFeatureExtractor as Qwen2.5-Omni's processor calls
    it: the log-mel of the clip padded to chunk_length seconds, cut to the clip's own frames
    (HF's feature_attention_mask). HF truncates a longer clip; graphdsl refuses it."""
    from ..preprocess.audio import HOP_LENGTH, SAMPLE_RATE, load_audio, whisper_chunks
    got = settings.read(ARCH, mmproj.config.file, mmproj.audio.cfg)
    pcm = load_audio(src, **({} if max_seconds is None else {"max_seconds": max_seconds}))
    limit = int(got["chunk_length"]) * SAMPLE_RATE
    if pcm.size > limit:
        raise ValueError(f"[qwen2_5omni_audio] a clip of {pcm.size / SAMPLE_RATE:.1f} s: HF's processor keeps the "
                         f"first {limit // SAMPLE_RATE} s (chunk_length) and drops the rest; split the clip")
    mels, _ = whisper_chunks(pcm, mmproj.audio.cfg.n_mel)
    return np.ascontiguousarray(np.concatenate(mels, axis=1)[:, :-(-pcm.size // HOP_LENGTH)])


def _not_mels(v, checkpoint) -> bool:
    return v != _audio_config(checkpoint.get("config") or {})["num_mel_bins"]


A, _MEL = Keys.ClipAudio, "graphdsl's log-mel is Whisper's: 16 kHz, n_fft 400, hop 160"
_CONFIG = (
    *(x for pre in ("", "audio_config.") for x in (
        *(settings.carried("config", pre + k, key) for k, key in (
            ("num_mel_bins", A.NUM_MEL_BINS), ("d_model", A.EMBEDDING_LENGTH), ("encoder_layers", A.BLOCK_COUNT),
            ("encoder_attention_heads", A.Attention.HEAD_COUNT), ("encoder_ffn_dim", A.FEED_FORWARD_LENGTH),
            ("activation_function", KEY_ACT.format(modality="audio")), ("output_dim", A.PROJECTION_DIM),
            ("max_source_positions", "tensor a.position_embd.weight"), ("n_window", KEY_N_WINDOW))),
        settings.irrelevant("config", pre + "scale_embedding", "HF's audio encoder computes embed_scale and never "
                            "applies it"))),
)
SETTINGS = (
    *_CONFIG, *whole_model(_CONFIG),
    settings.Setting("processor", "feature_size", refuse=_not_mels,
                     reason="the log-mel has the encoder's audio_config.num_mel_bins bands"),
    settings.carried("processor", "chunk_length", KEY_CHUNK_LENGTH, 30, to_gguf=int),
    *(settings.irrelevant("processor", k, "HF's feature extractor recomputes it from chunk_length")
      for k in ("n_samples", "nb_max_frames")),
    *(settings.unless("processor", k, v, _MEL) for k, v in (("sampling_rate", 16000), ("n_fft", 400),
                                                              ("hop_length", 160))),
    settings.unless("processor", "dither", 0.0, "graphdsl's log-mel adds no random noise"),
)


ARCH = register(Arch(
    "qwen2_5omni_audio", "audio", Qwen25OmniAudio, Qwen25OmniAudioConfig, config_from_hf, config_from_gguf,
    config_to_gguf, hf_to_gguf, projectors=("qwen2.5o",), hf_model_types=("qwen2_5_omni_audio_encoder",),
    prepare=features_of, settings=SETTINGS,
    examples=(Qwen25OmniAudioConfig(n_mel=16, n_ctx=40, n_embd=32, n_ff=64, n_head=4, n_layer=2, n_window=5,
                                    n_mm_embd=48),)))
