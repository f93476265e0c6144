"""What the model files' builds share: the encoder hyperparameters, the block protocol, the
weights a block declares (and picking them from a file), a block's graph and the post-LN tower.
HF checkpoints are read in ``hf``, GGUF metadata written and read in ``gguf_keys``."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from .. import blocks
from ..graph import Graph
from ..inp_embd import build_inp_embd
from .base import Block  # noqa: F401 - model files import it from here


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


def image_rows(pixels: Any, what: str) -> np.ndarray:
    """One pre-processed image f32 (3, H, W) as a batch of one (1, 3, H, W)."""
    a = np.asarray(pixels)
    if a.ndim != 3 or a.shape[0] != 3 or not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"[{what}] an image must be pre-processed pixels f32 (3, H, W), got "
                         f"{type(pixels).__name__} {getattr(a, 'shape', '')} (see graphdsl.preprocess.image)")
    return np.ascontiguousarray(a, np.float32)[None]


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
