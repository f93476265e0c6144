"""Helpers shared by the model files: gguf tensor names, HF state-dict access, HF config access,
and reading configs and per-tensor types from mmproj GGUF files."""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from gguf import Keys
from gguf.constants import MODEL_TENSOR, TENSOR_NAMES

from .. import blocks
from ..gguf_io import KEY_ACT, MmprojConfig, load_mmproj
from ..graph import Graph
from ..inp_embd import build_inp_embd
from .base import Block  # noqa: F401 - model files import it from here
from .registry import ARCHS

T = MODEL_TENSOR


@dataclass(frozen=True)
class EncoderHparams:
    """What every transformer encoder's config holds (defaults: a ViT-B-sized tower); a model
    config adds its own fields after these."""

    n_embd: int = 768
    n_ff: int = 3072
    n_head: int = 12
    n_layer: int = 12
    eps: float = 1e-6
    act: str = "gelu"  # an op name (blocks.act_of maps HF's names)
    attn: str = "flash"  # "flash" or "softmax", see blocks.attention
    wtype: str = "f32"  # storage of the big matrices: "f32", "f16", "q8_0", ...
    # per-tensor storage by gguf name, overriding wtype and the f32 default (a file's own types)
    wtypes: Mapping[str, str] = field(default_factory=dict, hash=False, repr=False)
    qkv_bias: ClassVar[tuple[bool, bool, bool]] = (True, True, True)

    @property
    def vit(self) -> blocks.VitParams:
        return blocks.VitParams(self.n_embd, self.n_head, self.n_ff, self.eps, self.act, qkv_bias=self.qkv_bias,
                                attn=self.attn, wtype=self.wtype)


@dataclass(frozen=True)
class VitHparams(EncoderHparams):
    """An encoder over image patches: the size it was trained at and its patch size."""

    image_size: int = 224
    patch_size: int = 16


def tn(tensor: MODEL_TENSOR, suffix: str | None = "weight", bid: int | None = None) -> str:
    """The gguf name of a tensor: tn(T.V_ENC_ATTN_Q, "weight", 3) == "v.blk.3.attn_q.weight".

    Without bid the "{bid}" placeholder is kept (for rename rules).
    """
    base = TENSOR_NAMES[tensor].format(bid=bid) if bid is not None else TENSOR_NAMES[tensor]
    return f"{base}.{suffix}" if suffix else base


def to_numpy(v: Any) -> np.ndarray:
    """A torch tensor (any float type, bf16 included) or array -> NumPy, floats as float32."""
    if hasattr(v, "detach"):
        v = v.detach().cpu()
        v = v.float() if v.is_floating_point() else v
        v = v.numpy()
    a = np.asarray(v)
    return a.astype(np.float32) if np.issubdtype(a.dtype, np.floating) else a


# Where HF checkpoints keep a vision tower: LLaVA-style wrappers, bare towers, two-tower models.
VISION_PREFIXES = ("model.vision_tower.vision_model.", "vision_tower.vision_model.", "model.vision_tower.",
                   "vision_tower.", "vision_model.", "model.")


def strip_prefixes(state_dict: Mapping[str, Any], prefixes: Iterable[str]) -> dict[str, Any]:
    """Keys with the first matching prefix removed (keys matching none are kept as they are)."""
    prefixes = tuple(prefixes)
    out = {}
    for k, v in state_dict.items():
        for p in prefixes:
            if k.startswith(p):
                k = k[len(p):]
                break
        out[k] = v
    return out


def rename(state_dict: Mapping[str, Any], rules: Iterable[tuple[str, str]],
           unmatched: list[str] | None = None) -> dict[str, np.ndarray]:
    """Apply (hf_name, gguf_name) rules; both may contain "{bid}". Unmatched keys are dropped
    (and appended to ``unmatched`` when given, for the error keep_only raises)."""
    import re
    compiled = []
    for hf, gg in rules:
        pat = re.escape(hf).replace(r"\{bid\}", r"(?P<bid>\d+)")
        compiled.append((re.compile(pat + "$"), gg))
    out = {}
    for k, v in state_dict.items():
        for pat, gg in compiled:
            m = pat.match(k)
            if m:
                out[gg.format(bid=int(m.group("bid"))) if "bid" in pat.groupindex else gg] = to_numpy(v)
                break
        else:
            if unmatched is not None:
                unmatched.append(k)
    return out


def keep_only(mapped: dict[str, np.ndarray], needed: Mapping[str, tuple], what: str, *,
              unmatched: Sequence[str] = (), prefixes: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """The tensors a graph uses; a needed one that is missing or mis-shaped raises, listing all,
    with the state dict's keys that no rename rule matched (after stripping ``prefixes``): a
    checkpoint under an unexpected prefix shows up there."""
    missing = [n for n in needed if n not in mapped]
    bad = [f"{n}: {mapped[n].shape} != {tuple(s)}" for n, s in needed.items()
           if n in mapped and tuple(mapped[n].shape) != tuple(s)]
    if missing or bad:
        hint = ""
        if missing and unmatched:
            hint = (f"; {len(unmatched)} state-dict keys matched no rule after stripping the prefixes "
                    f"{list(prefixes)}, e.g. {list(unmatched[:4])}")
        raise ValueError(f"[{what}.hf_to_gguf] state dict does not fit the config: "
                         f"missing {missing}; mis-shaped {bad}{hint}")
    return {n: mapped[n] for n in needed}


def convert_state(state_dict: Mapping[str, Any], prefixes: Sequence[str], rules, needed: Mapping[str, tuple],
                  what: str, fix: Any = None) -> dict[str, np.ndarray]:
    """strip_prefixes -> rename -> (fix: a function of the renamed dict, for values a file stores
    differently from HF) -> keep_only: the body of every model file's hf_to_gguf."""
    unmatched: list[str] = []
    out = rename(strip_prefixes(state_dict, prefixes), rules, unmatched)
    if fix is not None:
        out = fix(out)
    return keep_only(out, needed, what, unmatched=unmatched, prefixes=prefixes)


def image_rows(pixels: Any, what: str) -> np.ndarray:
    """One pre-processed image f32 (3, H, W) as a batch of one (1, 3, H, W)."""
    a = np.asarray(pixels)
    if a.ndim != 3 or a.shape[0] != 3 or not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"[{what}] an image must be pre-processed pixels f32 (3, H, W), got "
                         f"{type(pixels).__name__} {getattr(a, 'shape', '')} (see graphdsl.preprocess.image)")
    return np.ascontiguousarray(a, np.float32)[None]


def sub(d: Mapping[str, Any] | None, key: str) -> dict:
    """A nested HF sub-config as a dict ({} when absent)."""
    v = (d or {}).get(key)
    if v is None:
        return {}
    return v if isinstance(v, Mapping) else v.to_dict()


def hf_dict(cfg: Any, arch: str) -> dict:
    """An HF config as a dict, refused when its model_type is another registered arch's: read as
    this one it would silently lose that arch's parts (siglip reading an Idefics3Config would
    drop the connector)."""
    d = as_dict(cfg)
    own = ARCHS[arch].hf_model_types if arch in ARCHS else ()
    # the config itself, and the tower a wrapper holds (a LLaVA config around a SigLIP tower)
    for where, mt in (("", d.get("model_type")), *((f"{k}.", sub(d, k).get("model_type"))
                                                  for k in ("vision_config", "audio_config") if k in d)):
        other = next((a.name for a in ARCHS.values() if a.name != arch and mt in a.hf_model_types), None)
        if mt and mt not in own and other:
            raise ValueError(f"[{arch}.config_from_hf] an HF {where}model_type {mt!r} is built by "
                             f"graphdsl.models.{other}; {arch} would drop what it does not build")
    return d


def as_dict(cfg: Any) -> dict:
    """An HF config object or dict -> dict."""
    return cfg if isinstance(cfg, Mapping) else cfg.to_dict()


# -- GGUF files ----------------------------------------------------------------------------------------
def mmproj_config(src: Any):
    """An ``MmprojConfig`` from a path, an ``MmprojConfig`` or ``load_mmproj``'s (config, tensors) pair."""
    if isinstance(src, tuple) and len(src) == 2 and isinstance(src[0], MmprojConfig):
        return src[0]
    if isinstance(src, MmprojConfig):
        return src
    if isinstance(src, (str, os.PathLike)):
        return load_mmproj(src)[0]
    raise ValueError(f"[config_from_gguf] expected an mmproj path or MmprojConfig, got {type(src).__name__}")


def file_types(g, wtypes: Mapping[str, str] | None):
    """Declare each weight ``g`` builds inside with the type the file stores it in (see Graph.weight_types)."""
    return g.weight_types(wtypes)


def declared_weights(block) -> dict:
    """name -> weight node of everything a model block declares (built on its example input)."""
    g = Graph("weights")
    shape, dtype = block.example
    block(g.input("example", shape, dtype))
    return dict(g.weights)


def select_weights(block, tensors: Mapping[str, Any], where: str) -> dict[str, np.ndarray]:
    """The arrays ``block`` uses, taken from a file's tensors as they are (memory-mapped views, no
    copy); a missing or mis-shaped one raises naming ``where`` (the file)."""
    nodes = declared_weights(block)
    missing = sorted(n for n in nodes if n not in tensors)
    bad = [f"{n} {tuple(tensors[n].shape)} != {node.shape}" for n, node in nodes.items()
           if n in tensors and tuple(tensors[n].shape) != node.shape]
    if missing or bad:
        raise ValueError(f"{where}: tensors do not fit the {type(block).__name__} the metadata describes: "
                         f"missing {missing}; mis-shaped {bad}")
    return {n: getattr(tensors[n], "array", tensors[n]) for n in nodes}


# -- shared by the records of the registry --------------------------------------------------------------
INPUT_NAMES = {"image": "pixels", "audio": "mel", "text": "ids"}


def graph_of(block, shape: tuple[int, ...], name: str | None = None):
    """A graph running ``block`` on one input of ``shape`` (named after its kind: pixels, mel, ids)
    with output ``embd``: what ``build()`` of every model file is."""
    g = Graph(name or type(block).__name__.lower())
    dtype = "i32" if block.kind == "text" else "f32"
    g.output("embd", block(g.input(INPUT_NAMES[block.kind], shape, dtype)))
    return g


def weight_shapes_of(block) -> dict[str, tuple[int, ...]]:
    """Every weight a block declares: gguf name -> shape."""
    return {k: n.shape for k, n in declared_weights(block).items()}


def vit_keys(cfg, image_mean, image_std, n_layer: int | None = None) -> list[tuple[str, object]]:
    """The clip.vision.* metadata every ViT tower writes (llama.cpp's names), from its config:
    sizes, counts, eps, mean/std, llama.cpp's GELU/SiLU flags and graphdsl's exact activation.
    n_layer: the blocks the file stores, when the graph uses fewer than the config has."""

    V = Keys.ClipVision
    gelu, silu = {"gelu": (True, False), "gelu_erf": (True, False), "silu": (False, True)}.get(cfg.act, (False, False))
    return [(Keys.Clip.HAS_VISION_ENCODER, True), (V.IMAGE_SIZE, cfg.image_size), (V.PATCH_SIZE, cfg.patch_size),
            (V.EMBEDDING_LENGTH, cfg.n_embd), (V.FEED_FORWARD_LENGTH, cfg.n_ff), (V.BLOCK_COUNT, cfg.n_layer if n_layer is None else n_layer),
            (V.Attention.HEAD_COUNT, cfg.n_head), (V.Attention.LAYERNORM_EPS, float(cfg.eps)),
            (V.IMAGE_MEAN, [float(x) for x in image_mean]), (V.IMAGE_STD, [float(x) for x in image_std]),
            (V.USE_GELU, gelu), (V.USE_SILU, silu), (KEY_ACT.format(modality="vision"), cfg.act)]


def hf_vit_rules(layers: str = "encoder.layers.{bid}.", post_ln: str = "post_layernorm") -> list[tuple[str, str]]:
    """HF -> gguf renames every HF ViT (CLIP, SigLIP, Idefics3 ...) shares: patch and position
    embeddings, each layer's attention / norms / MLP (weight and bias) and the final LayerNorm."""
    per_layer = [("self_attn.q_proj", T.V_ENC_ATTN_Q), ("self_attn.k_proj", T.V_ENC_ATTN_K),
                 ("self_attn.v_proj", T.V_ENC_ATTN_V), ("self_attn.out_proj", T.V_ENC_ATTN_O),
                 ("layer_norm1", T.V_ENC_INPUT_NORM), ("layer_norm2", T.V_ENC_POST_ATTN_NORM),
                 ("mlp.fc1", T.V_ENC_FFN_UP), ("mlp.fc2", T.V_ENC_FFN_DOWN)]
    rules = [("embeddings.position_embedding.weight", tn(T.V_ENC_EMBD_POS))]
    for s in ("weight", "bias"):
        rules += [(f"embeddings.patch_embedding.{s}", tn(T.V_ENC_EMBD_PATCH, s)), (f"{post_ln}.{s}", tn(T.V_POST_NORM, s))]
        rules += [(f"{layers}{hf}.{s}", tn(t, s)) for hf, t in per_layer]
    return rules


def post_ln_tower(x, c, kind: str, scope: str, **embd):
    """build_inp_embd -> c.n_layer pre-LN blocks -> ``post_ln``, in ``scope`` (SigLIP, Whisper,
    Idefics3: every tower whose features are its last layer's, normalised)."""
    with x.graph.scope(scope):
        x = build_inp_embd(kind, x, n_embd=c.n_embd, **embd)
        x = blocks.vit(x, c.vit, n_layer=c.n_layer)[-1]
        return blocks.norm(x, "post_ln", eps=c.eps)


def projector_of(c, known: str, what: str) -> bool:
    """Whether config c has its projector (None: the encoder alone); another name raises."""
    if c.projector is not None and c.projector != known:
        raise ValueError(f"[{what}] unknown projector {c.projector!r}; this file has {known!r}")
    return c.projector is not None


def hf_vit_hparams(v: Mapping[str, Any], eps: float, act: str, patch_size: int = 16) -> dict:
    """VitHparams fields from an HF vision config dict, with the family's defaults for eps / act."""
    return dict(image_size=v.get("image_size", 224), patch_size=v.get("patch_size", patch_size),
                n_embd=v.get("hidden_size", 768), n_ff=v.get("intermediate_size", 3072),
                n_head=v.get("num_attention_heads", 12), n_layer=v.get("num_hidden_layers", 12),
                eps=v.get("layer_norm_eps", eps), act=blocks.act_of(v.get("hidden_act", act)))


def gguf_vision(src: Any, projectors: Sequence[str], what: str):
    """(MmprojConfig, its vision section) of a file whose vision projector is one of ``projectors``,
    and the VitHparams fields it holds (with every tensor's stored type as wtypes)."""
    m = mmproj_config(src)
    v = m.vision
    if v is None:
        raise m.error("no vision encoder (clip.has_vision_encoder is false)")
    if v.projector_type not in projectors:
        raise m.error(f"vision projector type {v.projector_type!r} is not a {what} one ({', '.join(projectors)})")
    kw = dict(image_size=v.image_size, patch_size=v.patch_size, n_embd=v.n_embd, n_ff=v.n_ff, n_head=v.n_head,
              n_layer=v.n_layer, eps=v.eps, act=v.act, wtype=m.dtypes.get(tn(T.V_ENC_ATTN_Q, "weight", 0), "f32"),
              wtypes=dict(m.dtypes))
    return m, v, kw
