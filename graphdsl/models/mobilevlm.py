"""MobileVLM v1 / v2: a CLIP tower + the lightweight downsample projectors (projector "ldp", "ldpv2").

    x = patch_embd(pixels) [+ class_embd first] + position_embd; x = LayerNorm(v.pre_ln)(x)
    f = hidden_states[feature_layer], class token dropped          (G x G patch features)
    ldp:   y = mlp.3(GELU(mlp.1(f)))                               (G, G, D), channels last
           y = y + LN(pw(SE(hardswish(LN(dw3x3(y))))))             mb_block.1, stride 1
           y =     LN(pw(SE(hardswish(LN(dw3x3/2(y))))))           mb_block.2, stride 2 -> (G/2)^2 tokens
           SE(h) = h * hardsigmoid(fc2(relu(fc1(mean_hw(h)))))
    ldpv2: y = mlp.2(GELU(mlp.0(f))); y = avgpool2x2(y); y = y + dw3x3(y) + peg.0.bias  -> (G/2)^2 tokens

The depthwise 3x3 convolutions are nine shifted, per-channel-scaled views of the zero-padded
map (exact f32; ggml's conv_2d_dw rounds the map to f16 in im2col, and on the CPU runs only
with f16 kernels, which is how llama.cpp's converter stores them). Activations in
the projector follow llama.cpp's reading of these files: GELU is the tanh form (ggml_gelu)
unless graphdsl.vision.projector_act says otherwise (MobileVLM itself uses nn.GELU, erf).

llama.cpp (tools/mtmd/models/llava.cpp) differs in two places, and graphdsl follows the model:
it hard-codes a 24 x 24 grid (graphdsl takes the tower's grid, any even size), and it appends
the class token *after* the patches while numbering positions as if it came first, then drops
row 0 (a patch) and keeps the class token (upstream issue #25814). For towers without a class
token the two agree (tests/models/test_mtmd_mobilevlm.py compares both cases).

Example:
    >>> cfg = MobileVLMConfig(image_size=48, patch_size=4, n_embd=32, n_ff=64, n_head=4, n_layer=2,
    ...                       feature_layer=1, projector="ldpv2", n_mm_embd=64)
    >>> build(cfg).outputs["embd"].shape      # 12 x 12 patches -> 6 x 6 tokens
    (36, 64)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import Keys

from .. import blocks, ops
from ..gguf_io import KEY_FEATURE_LAYER, KEY_MM_ACT
from ..graph import Graph, Tensor
from ..inp_embd import build_inp_embd
from .clip import CLIP_MEAN, CLIP_STD
from .common import Block, VitHparams, graph_of, image_rows, weight_shapes_of
from .gguf_keys import T, gguf_vision, tn, vit_keys
from .hf import remote_code_only
from .registry import Arch, ImagePreprocess, register


@dataclass(frozen=True)
class MobileVLMConfig(VitHparams):
    """CLIP tower hyperparameters (``VitHparams``), the feature layer and the projector's."""

    feature_layer: int = -2  # an index into HF's hidden_states (n_layer + 1 of them)
    class_token: bool = True
    projector: str = "ldpv2"  # "ldp" (MobileVLM v1) or "ldpv2" (v2)
    n_mm_embd: int = 2048
    mm_act: str = "gelu"
    n_se: int = 0  # LDP's squeeze-excite width (fc1's rows); 0: n_mm_embd // 4
    act: str = "gelu_quick"

    @property
    def layer(self) -> int:
        if not -(self.n_layer + 1) <= self.feature_layer <= self.n_layer:
            raise ValueError(f"[mobilevlm] feature_layer {self.feature_layer} out of range for {self.n_layer} layers")
        return self.feature_layer % (self.n_layer + 1)

    @property
    def n_out(self) -> int:
        return self.n_mm_embd


def _dw3x3(y: Tensor, w: Tensor, stride: int, name: str) -> Tensor:
    """Depthwise 3x3 convolution, padding 1, of y (H, W, D) with w (D, 1, 3, 3): nine shifted views."""
    h, wd, d = y.shape
    oh, ow = (h - 1) // stride + 1, (wd - 1) // stride + 1
    if w.dtype.name != "f32":  # llama.cpp's files store these kernels f16 (its conv_2d_dw needs that)
        w = ops.cast(w, "f32", name=f"{name}.w32")
    p = ops.pad(y, ((1, 1), (1, 1), (0, 0)), name=f"{name}.pad")
    acc = None
    for ky in range(3):
        for kx in range(3):
            tap = ops.view(ops.view(p, 0, ky, ky + stride * (oh - 1) + 1, stride, name=f"{name}.r{ky}{kx}"),
                           1, kx, kx + stride * (ow - 1) + 1, stride, name=f"{name}.c{ky}{kx}")
            k = ops.reshape(ops.view(ops.view(w, 2, ky, ky + 1, name=f"{name}.wy{ky}{kx}"), 3, kx, kx + 1,
                                     name=f"{name}.wx{ky}{kx}"), (d,), name=f"{name}.k{ky}{kx}")
            t = ops.mul(ops.cont(tap, name=f"{name}.t{ky}{kx}"), ops.cont(k, name=f"{name}.kc{ky}{kx}"),
                        name=f"{name}.m{ky}{kx}")
            acc = t if acc is None else ops.add(acc, t, name=f"{name}.a{ky}{kx}")
    return acc


def _hardsigmoid(x: Tensor, name: str) -> Tensor:
    """relu6(x + 3) / 6 = (relu(x + 3) - relu(x - 3)) / 6 (exact, from ops the registry has)."""
    hi = ops.relu(ops.scale(x, 1.0, 3.0, name=f"{name}.p3"), name=f"{name}.hi")
    lo = ops.relu(ops.scale(x, 1.0, -3.0, name=f"{name}.m3"), name=f"{name}.lo")
    return ops.scale(ops.sub(hi, lo, name=f"{name}.relu6"), 1.0 / 6.0, name=name)


def _ln(x: Tensor, w: Tensor, b: Tensor, eps: float, name: str) -> Tensor:
    return ops.add(ops.mul(ops.norm(x, eps, name=f"{name}.norm"), w, name=f"{name}.w"), b, name=name)


def _mb_block(y: Tensor, i: int, stride: int, c: MobileVLMConfig) -> Tensor:
    """One MobileNetV3-style block of LDP on y (H, W, D) (llama.cpp's mm.model.mb_block.{i})."""
    g, d, eps, wtype = y.graph, y.shape[-1], c.eps, c.wtype
    pre, n_se = "block", c.n_se or max(d // 4, 1)
    with g.scope(f"model.mb_block.{i}"):
        x = _dw3x3(y, g.weight(f"{pre}.0.0.weight", (d, 1, 3, 3)), stride, "dw")
        x = _ln(x, g.weight(f"{pre}.0.1.weight", (d,)), g.weight(f"{pre}.0.1.bias", (d,)), eps, "dw_ln")
        hw = ops.mul(x, _hardsigmoid(x, "hswish_gate"), name="hswish")
        oh, ow = hw.shape[:2]
        se = ops.mean(ops.cont(ops.permute(ops.reshape(hw, (oh * ow, d)), (1, 0)), name="se_t"), name="se_mean")
        se = ops.reshape(se, (1, d), name="se_in")
        fc1 = g.weight(f"{pre}.1.fc1.weight", (n_se, d), wtype)
        se = ops.relu(ops.linear(se, fc1, g.weight(f"{pre}.1.fc1.bias", (n_se,)), name="se_fc1"), name="se_relu")
        se = ops.linear(se, g.weight(f"{pre}.1.fc2.weight", (d, n_se), wtype),
                        g.weight(f"{pre}.1.fc2.bias", (d,)), name="se_fc2")
        x = ops.mul(hw, ops.reshape(_hardsigmoid(se, "se_gate"), (d,), name="se_gate_d"), name="se")
        x = ops.linear(x, g.weight(f"{pre}.2.0.weight", (d, d), wtype), name="pw")
        return _ln(x, g.weight(f"{pre}.2.1.weight", (d,)), g.weight(f"{pre}.2.1.bias", (d,)), eps, "pw_ln")


class MobileVLMVision(Block):
    """Pixels f32 (3, S, S) or (B, 3, S, S) -> ([B,] (G/2)^2, n_mm_embd), G = S / patch_size."""

    kind = "image"
    example = property(lambda self: ((1, 3, self.cfg.image_size, self.cfg.image_size), "f32"))

    def rows(self, pixels) -> np.ndarray:
        return image_rows(pixels, "mobilevlm")

    def _build(self, pixels: Tensor) -> Tensor:
        c, g = self.cfg, pixels.graph
        gh, gw = pixels.shape[-2] // c.patch_size, pixels.shape[-1] // c.patch_size
        if gh % 2 or gw % 2 or gh < 2:
            raise ValueError(f"[mobilevlm] the patch grid {gh}x{gw} must be even: the projector halves it")
        with g.scope("v"):
            x = build_inp_embd("image", pixels, n_embd=c.n_embd, patch_size=c.patch_size,
                               image_size=c.image_size, class_embd=c.class_token)
            x = blocks.norm(x, "pre_ln", eps=c.eps)
            x = blocks.vit(x, c.vit, n_layer=c.layer)[c.layer]
        if c.class_token:
            x = ops.view(x, -2, 1, x.shape[-2], name="v.features_no_cls")
        if pixels.ndim == 3:
            return self._project(x, gh, gw, "")
        # a batch: each image through the projector on its own (views of the tower's batched output)
        outs = [self._project(ops.view(x, 0, i, i + 1, name=f"mm.item{i}"), gh, gw, f"{i}")
                for i in range(pixels.shape[0])]
        outs = [ops.reshape(o, (1, *o.shape), name=f"mm.out{i}") for i, o in enumerate(outs)]
        return outs[0] if len(outs) == 1 else ops.concat(outs, axis=0, name="mm.batch")

    def _project(self, f: Tensor, gh: int, gw: int, tag: str) -> Tensor:
        c, g, d = self.cfg, f.graph, self.cfg.n_mm_embd
        f = ops.reshape(f, (gh * gw, f.shape[-1]), name=f"mm.in{tag}")
        with g.scope("mm"):
            a, b = (1, 3) if c.projector == "ldp" else (0, 2)
            if c.projector not in ("ldp", "ldpv2"):
                raise ValueError(f"[mobilevlm] unknown projector {c.projector!r}; this file has 'ldp', 'ldpv2'")
            y = blocks.linear(f, f"model.mlp.{a}", d, wtype=c.wtype)
            y = blocks.activation(y, c.mm_act, name="mlp_act")
            y = ops.reshape(blocks.linear(y, f"model.mlp.{b}", d, wtype=c.wtype), (gh, gw, d), name="mlp_map")
            if c.projector == "ldp":
                y = ops.add(y, _mb_block(y, 1, 1, c), name="mb1_res")
                y = _mb_block(y, 2, 2, c)
            else:
                taps = [ops.view(ops.view(y, 0, r, gh, 2, name=f"pool.r{r}{s}"), 1, s, gw, 2, name=f"pool.c{r}{s}")
                        for r in (0, 1) for s in (0, 1)]
                acc = ops.add(ops.add(taps[0], taps[1], name="pool.a01"), ops.add(taps[2], taps[3], name="pool.a23"),
                              name="pool.sum")
                y = ops.scale(acc, 0.25, name="pool")
                peg = _dw3x3(y, g.weight("model.peg.0.weight", (d, 1, 3, 3)), 1, "peg")
                peg = ops.add(peg, g.weight("model.peg.0.bias", (d,)), name="peg.bias")
                y = ops.add(peg, y, name="peg.res")
            return ops.reshape(y, (y.shape[0] * y.shape[1], d), name=f"out{tag}")


def build(cfg: MobileVLMConfig, n_images: int = 0) -> Graph:
    """A graph with input ``pixels`` ((3, S, S), or (n_images, 3, S, S)) and output ``embd``."""
    s = cfg.image_size
    return graph_of(MobileVLMVision(cfg), (n_images, 3, s, s) if n_images else (3, s, s), "mobilevlm")


def weight_shapes(cfg: MobileVLMConfig) -> dict[str, tuple[int, ...]]:
    return weight_shapes_of(MobileVLMVision(cfg))


config_from_hf = remote_code_only("mobilevlm", "MobileVLM", "legacy-models/convert_image_encoder_to_gguf.py")


def config_from_gguf(src: Any) -> MobileVLMConfig:
    """From an mmproj GGUF with projector "ldp" / "ldpv2" (the widths from mm.model.mlp.*)."""
    m, v, kw = gguf_vision(src, ("ldp", "ldpv2"), "MobileVLM")
    first = tn(T.V_MMPROJ_MLP, "weight", 1 if v.projector_type == "ldp" else 0)
    if first not in m.shapes:
        raise m.error(f"projector {v.projector_type!r} without {first}")
    if tn(T.V_POST_NORM) in m.shapes:
        raise m.error("a MobileVLM tower with v.post_ln is not supported (llama.cpp's files have none)")
    if len(v.feature_layer) != 1:
        raise m.error(f"MobileVLM takes one feature layer, the file lists {list(v.feature_layer)}")
    se = m.shapes.get("mm.model.mb_block.1.block.1.fc1.weight", (0,))[0]
    return MobileVLMConfig(**kw, feature_layer=v.feature_layer[0], class_token=tn(T.V_ENC_EMBD_CLS, None) in m.shapes,
                           projector=v.projector_type, n_mm_embd=m.shapes[first][0], mm_act=v.projector_act, n_se=se)


def config_to_gguf(cfg: MobileVLMConfig, image_mean=CLIP_MEAN, image_std=CLIP_STD) -> list[tuple[str, object]]:
    """Metadata llama.cpp reads (feature_layer explicit: no legacy block-count guessing)."""
    return [(Keys.Clip.PROJECTOR_TYPE, cfg.projector), *vit_keys(cfg, image_mean, image_std, max(cfg.layer, 1)),
            (KEY_FEATURE_LAYER, np.array([cfg.layer], np.int32)), (Keys.ClipVision.PROJECTION_DIM, cfg.n_mm_embd),
            (KEY_MM_ACT, cfg.mm_act)]


def hf_to_gguf(state_dict, config) -> dict[str, np.ndarray]:
    return config_from_hf(config)


ARCH = register(Arch(
    "mobilevlm", "image", MobileVLMVision, MobileVLMConfig, config_from_hf, config_from_gguf, config_to_gguf,
    hf_to_gguf, projectors=("ldp", "ldpv2"), image=ImagePreprocess("pad", CLIP_MEAN, CLIP_STD),
    examples=(MobileVLMConfig(image_size=48, patch_size=4, n_embd=32, n_ff=64, n_head=4, n_layer=2, feature_layer=2,
                              projector="ldp", n_mm_embd=64, n_se=16),
              MobileVLMConfig(image_size=48, patch_size=4, n_embd=32, n_ff=64, n_head=4, n_layer=2, feature_layer=2,
                              class_token=False, projector="ldpv2", n_mm_embd=64, mm_act="gelu_erf"))))
