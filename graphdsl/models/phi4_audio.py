"""Phi-4-multimodal audio: a Conformer encoder and the speech projector (clip.audio.projector_type
"phi4": llama.cpp's name for the model, whose mtmd builds only its vision; a new type name would
be refused by every reader that checks llama.cpp's list, this one reads as "Phi-4's audio").

Per clip (``preprocess.phi4_audio.phi4_audio_features``: log-mel (T, n_mel)):

    x = (mel - a.global_mean) * a.global_invstd
    x = relu(conv2d.0(x))  [3x3, stride 2, pad 1, 1 -> C channels]             (NeMo subsampling)
    x = relu(conv2d.{3k}(dwconv2d.{3k-1}(x)))  for k = 1 .. log2(time_reduction) - 1  [dw 3x3 s2, then 1x1]
    x = a.conv_out(x as (T', C * F'))                                            (T' = ceil(T / 8), d)
    bias[h, i, j] = a.attn_rel_bias[clip(j - i, -D, D - 1) + D, h]               (relative position bias)
    per block (a.blk.N):
      x = x + 0.5 * ffn(x)              ffn: ln -> ffn_up (2 n_ff: up | gate) -> up * silu(gate) -> ffn_down
      x = x + attn(ln1(x), + bias)      q, k, v, out with biases; softmax(QK^T / sqrt(dh) + bias)
      x = x + conv(x)                   norm_conv -> conv_pw1 (GLU: (a + b1) * silu(b + b2)) ->
                                        causal depthwise conv over time (conv_dw, k taps) -> conv_dw_pw ->
                                        silu -> conv_pw2
      x = x + 0.5 * ffn_1(x)
      x = ln2(x)
    y = mm.a.mlp.2(gelu_erf(mm.a.mlp.0(x)))          (HF's speech projector; mm.a.mlp_vision.N: the
                                                      one HF uses when the batch holds an image)

Every op is an existing registry op: the depthwise convolutions are sums of shifted (strided)
views times per-channel weights, exact f32 on every backend; the GLU is views, add and mul; the
relative position bias is get_rows of a constant index table. HF adds its boolean attention
mask (all true for one clip) to the bias as +1.0, which softmax cancels.

llama.cpp's mtmd has no Phi-4 audio: the names follow its Conformer-style audio tensors where
a role exists (``a.blk.N.ffn_up`` / ``ffn_up_1``, ``norm_conv``, ``conv_dw``, ``conv_pw1`` /
``conv_pw2``, ``a.conv_out``, ``mm.a.mlp.N``); ``conv_dw`` is stored (k, C). Clips longer than
500 encoder rows (40 s), which HF cuts into 500-row chunks, are refused.

Example:
    >>> cfg = Phi4AudioConfig(n_mel=16, n_embd=32, n_ff=48, n_head=4, n_layer=2, n_conv=16, n_mm_embd=48)
    >>> build(cfg, n_frames=300).outputs["embd"].shape
    (38, 48)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import Keys

from .. import blocks, ops
from ..graph import Graph, Tensor
from .common import Block, EncoderHparams, weight_shapes_of
from .gguf_keys import T, gguf_audio, tn
from .hf import as_dict, convert_state, sub
from . import settings
from .registry import Arch, register

HF_PREFIXES = ("model.embed_tokens_extend.audio_embed.", "embed_tokens_extend.audio_embed.", "audio_embed.")
MAX_ROWS = 500  # HF unfolds longer encodings into chunks of 500 rows


@dataclass(frozen=True)
class Phi4AudioConfig(EncoderHparams):
    """Conformer hyperparameters (n_ff: HF's intermediate_size) and the projector's width."""

    n_mel: int = 80
    n_conv: int = 1024  # NeMo subsampling channels
    time_reduction: int = 8
    kernel: int = 3  # depthwise conv taps
    max_distance: int = 1000  # relative bias buckets per side
    n_mm_embd: int = 3072
    eps: float = 1e-5  # torch's LayerNorm default, as HF builds them
    act: str = "silu"

    @property
    def n_out(self) -> int:
        return self.n_mm_embd

    @property
    def n_sub(self) -> int:
        """Stride-2 stages of the subsampling."""
        return int(math.log2(self.time_reduction))

    def rows(self, n_frames: int) -> int:
        for _ in range(self.n_sub):
            n_frames = (n_frames - 1) // 2 + 1
        return n_frames


def _check(c: Phi4AudioConfig) -> None:
    if c.time_reduction < 2 or c.time_reduction & (c.time_reduction - 1):
        raise ValueError(f"[phi4_audio] time_reduction must be a power of two >= 2, got {c.time_reduction}")
    if c.n_embd % c.n_head or c.kernel < 1 or c.max_distance < 1:
        raise ValueError(f"[phi4_audio] bad config: n_embd {c.n_embd}, n_head {c.n_head}, kernel {c.kernel}, "
                         f"max_distance {c.max_distance}")


def rel_index(n: int, max_distance: int) -> np.ndarray:
    """HF's bucket of each (query i, key j): clip(j - i, -D, D - 1) + D (non-symmetric), (n * n,) int32."""
    r = np.arange(n)[None, :] - np.arange(n)[:, None]
    return (np.clip(r, -max_distance, max_distance - 1) + max_distance).astype(np.int32).reshape(-1)


def _dw2d(x: Tensor, name: str, c: int) -> Tensor:
    """Depthwise 3x3 conv, stride 2, padding 1, with bias: x (C, H, W) -> (C, H', W'), as 9 strided views."""
    g = x.graph
    _, h, w = x.shape
    ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    wt = g.weight(f"{name}.weight", (c, 1, 3, 3))
    taps = ops.reshape(wt, (c, 9), name=f"{name}.taps")
    # ggml views cannot stride the last axis: pad the width to 2 (wo + 1) and read it as (wo + 1, 2) pairs
    xp = ops.pad(x, ((0, 0), (1, 1), (1, 2 * (wo + 1) - 1 - w)), name=f"{name}.pad")
    acc = None
    for i in range(3):
        r = ops.cont(ops.view(xp, 1, i, i + 2 * ho - 1, 2, name=f"{name}.r{i}"), name=f"{name}.rc{i}")
        r = ops.reshape(r, (c, ho, wo + 1, 2), name=f"{name}.pairs{i}")
        for j in range(3):
            v = ops.view(ops.view(r, 3, j % 2, j % 2 + 1, name=f"{name}.p{i}{j}"), 2, j // 2, j // 2 + wo,
                         name=f"{name}.v{i}{j}")
            v = ops.reshape(ops.cont(v, name=f"{name}.c{i}{j}"), (c, ho, wo), name=f"{name}.x{i}{j}")
            k = ops.reshape(ops.view(taps, 1, 3 * i + j, 3 * i + j + 1, name=f"{name}.k{i}{j}.col"), (c, 1, 1),
                            name=f"{name}.k{i}{j}")
            t = ops.mul(v, k, name=f"{name}.t{i}{j}")
            acc = t if acc is None else ops.add(acc, t, name=f"{name}.s{i}{j}")
    return ops.add(acc, ops.reshape(g.weight(f"{name}.bias", (c,)), (c, 1, 1), name=f"{name}.b"), name=name)


def _conv2d(x: Tensor, name: str, c_out: int, k: int, stride: int, pad: int) -> Tensor:
    g = x.graph
    y = ops.conv_2d(g.weight(f"{name}.weight", (c_out, x.shape[0], k, k)), x, stride=stride, padding=pad,
                    name=f"{name}.conv")
    return ops.add(y, ops.reshape(g.weight(f"{name}.bias", (c_out,)), (c_out, 1, 1), name=f"{name}.b"), name=name)


def _ffn(x: Tensor, c: Phi4AudioConfig, s: str) -> Tensor:
    h = blocks.norm(x, f"ffn_norm{s}", eps=c.eps)
    h = blocks.linear(h, f"ffn_up{s}", 2 * c.n_ff, wtype=c.wtype)
    up = ops.cont(ops.view(h, -1, 0, c.n_ff, name=f"ffn_up{s}.up"), name=f"ffn_up{s}.upc")
    gate = ops.cont(ops.view(h, -1, c.n_ff, 2 * c.n_ff, name=f"ffn_up{s}.gate"), name=f"ffn_up{s}.gatec")
    h = ops.mul(up, ops.silu(gate, name=f"ffn_act{s}"), name=f"ffn_gated{s}")
    return blocks.linear(h, f"ffn_down{s}", c.n_embd, wtype=c.wtype)


def _conv_module(x: Tensor, c: Phi4AudioConfig) -> Tensor:
    g, d, k = x.graph, c.n_embd, c.kernel
    n = x.shape[0]
    h = blocks.norm(x, "norm_conv", eps=c.eps)
    h = blocks.linear(h, "conv_pw1", 2 * d, wtype=c.wtype)
    a = ops.add(ops.cont(ops.view(h, -1, 0, d, name="conv_glu.a")), g.weight("conv_glu_b1", (d,)), name="conv_glu.a_b")
    b = ops.add(ops.cont(ops.view(h, -1, d, 2 * d, name="conv_glu.b")), g.weight("conv_glu_b2", (d,)), name="conv_glu.b_b")
    h = ops.mul(a, ops.silu(b, name="conv_glu.act"), name="conv_glu")
    # causal depthwise conv over time: out[t] = sum_i w[i] * h[t + i - (k - 1)] (HF pads k-1 both sides, drops the tail)
    w = g.weight("conv_dw.weight", (k, d))
    hp = ops.pad(h, ((k - 1, 0), (0, 0)), name="conv_dw.pad") if k > 1 else h
    acc = None
    for i in range(k):
        t = ops.mul(ops.cont(ops.view(hp, 0, i, i + n, name=f"conv_dw.v{i}")), ops.view(w, 0, i, i + 1, name=f"conv_dw.k{i}"),
                    name=f"conv_dw.t{i}")
        acc = t if acc is None else ops.add(acc, t, name=f"conv_dw.s{i}")
    h = ops.add(acc, g.weight("conv_dw.bias", (d,)), name="conv_dw")
    h = blocks.linear(h, "conv_dw_pw", d, wtype=c.wtype)
    h = ops.silu(h, name="conv_act")
    return blocks.linear(h, "conv_pw2", d, wtype=c.wtype)


PROJECTORS = {"speech": "mm.a.mlp", "vision": "mm.a.mlp_vision"}


class Phi4Audio(Block):
    """Log-mel (T, n_mel) f32 of one clip -> (ceil(T / 8), n_mm_embd); several clips: ``build_items``.

    mode: which of HF's two projectors runs: "speech", "vision" (HF's choice when the batch holds
    an image), or "auto": "vision" when the mixed batch has an image item, else "speech", as HF
    sets ``audio_projection_mode`` (embed.build_mixed passes the batch's kinds). A bare call
    (``build``) runs "speech" unless mode says "vision". Both projectors are declared either way:
    one file serves both modes.
    """

    kind = "audio"
    example = property(lambda self: ((64, self.cfg.n_mel), "f32"))

    def __init__(self, cfg, mode: str = "auto"):
        if mode not in ("auto", *PROJECTORS):
            raise ValueError(f"[phi4_audio] mode must be 'auto', 'speech' or 'vision', got {mode!r}")
        super().__init__(cfg)
        self.mode = mode

    def n_tokens(self, n_frames: int) -> int:
        return self.cfg.rows(n_frames)

    def build_items(self, g: Graph, prefix: str, datas, batch_kinds=()):
        mode = self.mode if self.mode != "auto" else "vision" if "image" in batch_kinds else "speech"
        feeds, outs = {}, []
        with g.weight_types(getattr(self.cfg, "wtypes", None)):
            for i, d in enumerate(datas):
                mel = self.features(d)
                feeds[f"{prefix}.{i}"] = mel
                outs.append(self._build(g.input(f"{prefix}.{i}", mel.shape), mode))
        return feeds, outs, mode

    def features(self, data) -> np.ndarray:
        a = np.asarray(data)
        c = self.cfg
        if a.ndim != 2 or a.shape[1] != c.n_mel or not np.issubdtype(a.dtype, np.floating):
            raise ValueError(f"[phi4_audio] a clip must be log-mel features f32 (T, {c.n_mel}) "
                             f"(preprocess.phi4_audio.phi4_audio_features), got {a.dtype} {a.shape}")
        if c.rows(a.shape[0]) > MAX_ROWS:
            raise ValueError(f"[phi4_audio] {a.shape[0]} frames give {c.rows(a.shape[0])} rows; HF cuts more than "
                             f"{MAX_ROWS} into chunks, which graphdsl does not build (split the clip)")
        if not np.isfinite(a).all():
            raise ValueError("[phi4_audio] features hold NaN or inf")
        return np.ascontiguousarray(a, np.float32)

    def _build(self, mel: Tensor, mode: str | None = None) -> Tensor:
        c, g = self.cfg, mel.graph
        mode = mode or ("vision" if self.mode == "vision" else "speech")
        _check(c)
        n_t, n_mel = mel.shape
        if c.rows(n_t) > MAX_ROWS:
            raise ValueError(f"[phi4_audio] {n_t} frames give {c.rows(n_t)} rows, more than {MAX_ROWS}")
        with g.scope("a"):
            x = ops.mul(ops.sub(mel, g.weight("global_mean", (n_mel,)), name="mvn.center"),
                        g.weight("global_invstd", (n_mel,)), name="mvn")
            x = ops.reshape(x, (1, n_t, n_mel), name="sub.in")
            x = ops.relu(_conv2d(x, "conv2d.0", c.n_conv, 3, 2, 1), name="sub.act.0")
            for s in range(1, c.n_sub):
                x = _dw2d(x, f"conv2d.{3 * s - 1}", c.n_conv)
                x = ops.relu(_conv2d(x, f"conv2d.{3 * s}", c.n_conv, 1, 1, 0), name=f"sub.act.{s}")
            ch, n, f = x.shape
            x = ops.reshape(ops.cont(ops.permute(x, (1, 0, 2), name="sub.t")), (n, ch * f), name="sub.flat")
            x = blocks.linear(x, "conv_out", c.n_embd, wtype=c.wtype)
            idx = g.const("rel_idx", rel_index(n, c.max_distance), dtype="i32")
            table = g.weight("attn_rel_bias.weight", (2 * c.max_distance, c.n_head))
            bias = ops.reshape(ops.get_rows(table, idx, name="rel_bias.rows"), (n, n, c.n_head), name="rel_bias.grid")
            bias = ops.cont(ops.permute(bias, (2, 0, 1), name="rel_bias.heads"), name="rel_bias")  # (H, n, n)
            for il in range(c.n_layer):
                with g.scope(f"blk.{il}"):
                    x = ops.add(x, ops.scale(_ffn(x, c, ""), 0.5), name="ffn_in_out")
                    h = blocks.norm(x, "ln1", eps=c.eps)
                    x = ops.add(x, blocks.attention(h, c.n_head, impl="softmax", mask=bias, wtype=c.wtype),
                                name="attn_res")
                    x = ops.add(x, _conv_module(x, c), name="conv_res")
                    x = ops.add(x, ops.scale(_ffn(x, c, "_1"), 0.5), name="ffn_out_out")
                    x = blocks.norm(x, "ln2", eps=c.eps)
        for m, scope in PROJECTORS.items():
            if m != mode:  # declared, unused: one set of weights serves both modes
                with g.scope(scope):
                    for i, n_in in ((0, c.n_embd), (2, c.n_mm_embd)):
                        g.weight(f"{i}.weight", (c.n_mm_embd, n_in), c.wtype)
                        g.weight(f"{i}.bias", (c.n_mm_embd,))
        with g.scope(PROJECTORS[mode]):
            y = blocks.linear(x, "0", c.n_mm_embd, wtype=c.wtype)
            y = ops.gelu_erf(y, name="act")
            return blocks.linear(y, "2", c.n_mm_embd, wtype=c.wtype)


def build(cfg: Phi4AudioConfig, n_frames: int = 64, mode: str = "speech") -> Graph:
    """A graph with input ``mel`` (n_frames, n_mel) and output ``embd`` (ceil(n_frames / 8), n_mm_embd)."""
    g = Graph("phi4_audio")
    g.output("embd", Phi4Audio(cfg, mode)(g.input("mel", (n_frames, cfg.n_mel))))
    return g


def weight_shapes(cfg: Phi4AudioConfig) -> dict[str, tuple[int, ...]]:
    return weight_shapes_of(Phi4Audio(cfg))


def config_from_hf(hf: Any) -> Phi4AudioConfig:
    """From an HF Phi4MultimodalConfig (audio_config, hidden_size)."""
    d = as_dict(hf)  # the same HF config as phi4_vision's (model_type phi4_multimodal), read for its audio part
    if "audio_config" not in d:
        raise ValueError(f"[phi4_audio.config_from_hf] needs the whole Phi4MultimodalConfig (audio_config and the "
                         f"text hidden_size the projector maps to), got model_type {d.get('model_type')!r}")
    a = sub(d, "audio_config")
    n = a.get("hidden_size", 1024)
    for key in ("ext_pw_out_channel", "depthwise_separable_out_channel"):
        if a.get(key, 1024) != n:
            raise ValueError(f"[phi4_audio.config_from_hf] {key} {a.get(key)} != hidden_size {n} (the residuals need it)")
    if a.get("depthwise_multiplier", 1) != 1 or a.get("bias_symmetric", False) or a.get("chunk_size", -1) > 0:
        raise ValueError("[phi4_audio.config_from_hf] only depthwise_multiplier 1, bias_symmetric False and "
                         "chunk_size -1 (no streaming mask) are built")
    if a.get("downsample_rate", 1) != 1:
        raise ValueError(f"[phi4_audio.config_from_hf] downsample_rate {a.get('downsample_rate')} is not built")
    if (a.get("activation", "swish"), a.get("conv_activation", "swish"), a.get("conv_glu_type", "swish"),
            a.get("nemo_activation", "relu")) != ("swish", "swish", "swish", "relu"):
        raise ValueError("[phi4_audio.config_from_hf] only swish FFN/conv/GLU and relu subsampling are built")
    return Phi4AudioConfig(n_mel=a.get("input_size", 80), n_embd=n, n_ff=a.get("intermediate_size", 1536),
                           n_head=a.get("num_attention_heads", 16), n_layer=a.get("num_blocks", 24),
                           n_conv=a.get("nemo_conv_channels", 1024), time_reduction=a.get("time_reduction", 8),
                           kernel=a.get("kernel_size", 3), max_distance=a.get("bias_max_distance", 1000),
                           n_mm_embd=d.get("hidden_size", 3072))


def config_from_gguf(src: Any) -> Phi4AudioConfig:
    m, a, kw = gguf_audio(src, ("phi4",), "Phi-4")
    need = {"conv2d.0": tn(T.A_ENC_CONV2D, "weight", 0), "dw": tn(T.A_ENC_CONV_DW, "weight", 0),
            "bias": "a.attn_rel_bias.weight", "out": tn(T.A_MMPROJ, "weight", 2)}
    missing = [v for v in need.values() if v not in m.shapes]
    if missing:
        raise m.error(f"phi4_audio tensors missing: {missing}")
    n_conv = sum(1 for k in m.shapes if k.startswith("a.conv2d.") and k.endswith(".weight"))  # 1 + 2 per extra stage
    return Phi4AudioConfig(**kw, n_conv=m.shapes[need["conv2d.0"]][0], time_reduction=2 ** ((n_conv + 1) // 2),
                           kernel=m.shapes[need["dw"]][0], max_distance=m.shapes[need["bias"]][0] // 2,
                           n_mm_embd=m.shapes[need["out"]][0])


def config_to_gguf(cfg: Phi4AudioConfig) -> list[tuple[str, object]]:
    A = Keys.ClipAudio
    return [(Keys.Clip.HAS_AUDIO_ENCODER, True), (Keys.Clip.PROJECTOR_TYPE, "phi4"), (A.NUM_MEL_BINS, cfg.n_mel),
            (A.EMBEDDING_LENGTH, cfg.n_embd), (A.FEED_FORWARD_LENGTH, cfg.n_ff), (A.BLOCK_COUNT, cfg.n_layer),
            (A.Attention.HEAD_COUNT, cfg.n_head), (A.Attention.LAYERNORM_EPS, float(cfg.eps)),
            (A.PROJECTION_DIM, int(cfg.n_mm_embd))]


def _rules(cfg: Phi4AudioConfig):
    e = "encoder."
    r = [(e + "encoder_embedding.global_mean", "a.global_mean"), (e + "encoder_embedding.global_invstd", "a.global_invstd"),
         (e + "relative_attention_bias_layer.bias_values.weight", "a.attn_rel_bias.weight")]
    for s in ("weight", "bias"):
        r.append((f"{e}embed.out.{s}", tn(T.A_ENC_CONV_OUT, s)))
        for i in [0] + [j for k in range(1, cfg.n_sub) for j in (3 * k - 1, 3 * k)]:
            r.append((f"{e}embed.conv.{i}.{s}", tn(T.A_ENC_CONV2D, s, i)))
        per = {"feed_forward_in.layer_norm": "ffn_norm", "feed_forward_in.gate_up_proj": "ffn_up",
               "feed_forward_in.down_proj": "ffn_down", "feed_forward_out.layer_norm": "ffn_norm_1",
               "feed_forward_out.gate_up_proj": "ffn_up_1", "feed_forward_out.down_proj": "ffn_down_1",
               "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
               "self_attn.o_proj": "attn_out", "layer_norm_att": "ln1", "layer_norm": "ln2",
               "conv.layer_norm": "norm_conv", "conv.glu.ext_pw_conv_1d": "conv_pw1",
               "conv.dw_sep_conv_1d.dw_conv": "conv_dw", "conv.dw_sep_conv_1d.pw_conv": "conv_dw_pw",
               "conv.ext_pw_conv_1d": "conv_pw2"}
        r += [(f"{e}encoders.{{bid}}.{hf}.{s}", f"a.blk.{{bid}}.{gg}.{s}") for hf, gg in per.items()]
        r += [(f"{hf}_for_{mode}.{s}", f"{PROJECTORS[m]}.{i}.{s}") for m, mode in (("speech", "speech"), ("vision", "vision_speech"))
              for hf, i in (("up_proj", 0), ("down_proj", 2))]
    r += [(f"{e}encoders.{{bid}}.conv.glu.b{i}", f"a.blk.{{bid}}.conv_glu_b{i}") for i in (1, 2)]
    return r


def hf_to_gguf(state_dict, config) -> dict[str, np.ndarray]:
    """HF Phi4MultimodalForCausalLM tensors (its audio embedding, speech projector) -> gguf names (f32):
    1-D convolutions become matrices, the depthwise kernels (C, 1, k) become (k, C), the GLU biases (C,)."""
    cfg = config if isinstance(config, Phi4AudioConfig) else config_from_hf(config)

    def fix(out):
        for k, v in list(out.items()):
            if k.endswith(("conv_pw1.weight", "conv_dw_pw.weight", "conv_pw2.weight")):
                out[k] = v.reshape(v.shape[0], -1)
            elif k.endswith("conv_dw.weight"):
                out[k] = np.ascontiguousarray(v.reshape(v.shape[0], -1).T)
            elif "conv_glu_b" in k:
                out[k] = v.reshape(-1)
        return out
    return convert_state(state_dict, HF_PREFIXES, _rules(cfg), weight_shapes(cfg), "phi4_audio", fix)


def features_of(src: Any, mmproj, text_info=None, max_seconds: float | None = None) -> np.ndarray:
    """``embed_files``' pre-processing: a path or 16 kHz PCM -> the log-mel this encoder reads."""
    from ..preprocess.audio import load_audio
    from ..preprocess.phi4_audio import phi4_audio_features
    pcm = load_audio(src, **({} if max_seconds is None else {"max_seconds": max_seconds}))
    return phi4_audio_features(pcm, n_mel=mmproj.audio.cfg.n_mel)


_A, _P = Keys.ClipAudio, "audio_config."
_BUILT = "graphdsl builds Phi-4's own encoder only (config_from_hf lists what it builds)"
_MEL = "graphdsl's log-mel is Phi-4's: 16 kHz, 400-sample windows every 160, 512-point FFT, pre-emphasis 0.97"
SETTINGS = (
    *(settings.carried("config", _P + k, key) for k, key in (
        ("hidden_size", _A.EMBEDDING_LENGTH), ("intermediate_size", _A.FEED_FORWARD_LENGTH),
        ("num_blocks", _A.BLOCK_COUNT), ("num_attention_heads", _A.Attention.HEAD_COUNT),
        ("input_size", _A.NUM_MEL_BINS), ("nemo_conv_channels", "tensor a.conv2d.0.weight"),
        ("time_reduction", "tensor a.conv2d.* (one stride-2 stage per factor 2)"),
        ("kernel_size", "tensor a.conv_dw.*.weight"), ("bias_max_distance", "tensor a.attn_rel_bias.weight"),
        ("nemo_final_size", "tensor a.conv_out.weight (its input width)"))),
    *(settings.Setting("config", _P + k, refuse=settings.other_than(_P + "hidden_size", 1024), reason="the residuals need "
                       "it equal to hidden_size") for k in ("ext_pw_out_channel", "depthwise_separable_out_channel")),
    *(settings.unless("config", _P + k, v, _BUILT) for k, v in (
        ("depthwise_multiplier", 1), ("bias_symmetric", False), ("chunk_size", -1), ("downsample_rate", 1),
        ("activation", "swish"), ("conv_activation", "swish"), ("conv_glu_type", "swish"), ("nemo_activation", "relu"))),
    settings.irrelevant("config", _P + "left_chunk", "the streaming mask's, used only with chunk_size > 0 (refused)"),
    settings.irrelevant("config", _P + "dropout_rate", "training only"),
    settings.irrelevant("config", _P + "feature_layer", "HF's audio embedding stores it but never reads it"),
    settings.Setting("processor", "feature_size", refuse=settings.other_than(_P + "input_size", 80),
                     reason="the log-mel has the encoder's audio_config.input_size bands"),
    *(settings.unless("processor", k, v, _MEL) for k, v in (
        ("sampling_rate", 16000), ("hop_length", 160), ("n_fft", 512), ("win_length", 400), ("preemphasis", 0.97))),
    settings.Setting("processor", "audio_compression_rate", refuse=settings.other_than(_P + "time_reduction", 8),
                     reason="HF keeps ceil(frames / audio_compression_rate) rows, graphdsl the encoder's "
                            "audio_config.time_reduction"),
    settings.unless("processor", "audio_downsample_rate", 1, "the projector does not downsample in graphdsl"),
    settings.unless("processor", "audio_feat_stride", 1, "graphdsl's rows count every feature frame"),
)


ARCH = register(Arch(
    "phi4_audio", "audio", Phi4Audio, Phi4AudioConfig, config_from_hf, config_from_gguf, config_to_gguf, hf_to_gguf,
    projectors=("phi4",), hf_model_types=("phi4_multimodal_audio",), prepare=features_of,
    settings=SETTINGS,
    examples=(Phi4AudioConfig(n_mel=16, n_embd=32, n_ff=48, n_head=4, n_layer=2, n_conv=16, max_distance=50,
                              n_mm_embd=48),)))
