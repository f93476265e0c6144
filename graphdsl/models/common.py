"""What the model files' builds share: the encoder hyperparameters, the block protocol, the
weights a block declares (and picking them from a file), a block's graph and the post-LN tower.
HF checkpoints are read in ``hf``, GGUF metadata written and read in ``gguf_keys``."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from .. import blocks, ops
from ..graph import Graph
from ..inp_embd import build_inp_embd, shape_guard
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


def square_frames(data: Any, size: int, what: str, see: str) -> np.ndarray:
    """An item's square frames or tiles f32 (n, 3, size, size) (one (3, size, size) is a batch of one),
    refused naming ``what`` and the function that makes them (``see``)."""
    a = np.asarray(getattr(data, "pixel_values", data), np.float32)
    a = a[None] if a.ndim == 3 else a
    if a.ndim != 4 or a.shape[1:] != (3, size, size):
        raise ValueError(f"{what} must be (n, 3, {size}, {size}) (see {see}), got {a.shape}")
    return np.ascontiguousarray(a)



class SquareFrames(Block):
    """A tower over square frames or tiles of its own size, several per image (Idefics3, InternVL): the
    items stack, ``rows`` checks them. ``what`` names them in errors, ``see`` the function that makes them."""

    kind = "image"
    what: ClassVar[str] = "frames"
    see: ClassVar[str] = ""
    example = property(lambda self: ((1, 3, self.cfg.image_size, self.cfg.image_size), "f32"))

    def rows(self, data) -> np.ndarray:
        return square_frames(data, self.cfg.image_size, self.what, self.see)

def square_grid(frames, patch_size: int, name: str, what: str) -> tuple[int, int]:
    """The patch grid of square frames, fixed when the graph is built (``shape_guard``: an executor
    fed frames of another size raises ``what`` instead of computing garbage)."""
    shape_guard(frames.graph, name, frames, what, same=lambda s: tuple(s[-2:]))
    return frames.shape[-2] // patch_size, frames.shape[-1] // patch_size



@dataclass(frozen=True)
class LogMelHparams(EncoderHparams):
    """What the Qwen audio towers' configs share (Qwen2-Audio, Qwen2.5-Omni): Whisper's LayerNorm eps
    and exact GELU, no k bias, a projector to the decoder's n_mm_embd (declared by each config)."""

    eps: float = 1e-5  # torch's LayerNorm default, as HF builds them
    act: str = "gelu_erf"
    qkv_bias: ClassVar[tuple[bool, bool, bool]] = (True, False, True)  # k_proj has no bias

    @property
    def n_out(self) -> int:
        return self.n_mm_embd

class LogMelClips(Block):
    """An audio encoder over log-mel clips of their own lengths (Qwen2-Audio, Qwen2.5-Omni): each
    clip's rows follow its frames (``cfg.rows``), so clips do not stack and ``build_items`` is the
    family's own. ``log_mel`` checks one clip before anything is built."""

    kind = "audio"

    def n_tokens(self, n_frames: int) -> int:
        return self.cfg.rows(n_frames)

    def log_mel(self, data: Any, name: str, see: str, fits: Callable[[int], str]) -> np.ndarray:
        """A clip f32 (n_mel, T); ``fits(T)`` says what is wrong with T frames ("" when nothing)."""
        a, c = np.asarray(data), self.cfg
        if a.ndim != 2 or a.shape[0] != c.n_mel or not np.issubdtype(a.dtype, np.floating):
            raise ValueError(f"[{name}] a clip must be log-mel f32 ({c.n_mel}, T) ({see}), got {a.dtype} {a.shape}")
        wrong = fits(a.shape[1])
        if wrong:
            raise ValueError(f"[{name}] {wrong}")
        if not np.isfinite(a).all():
            raise ValueError(f"[{name}] features hold NaN or inf")
        return np.ascontiguousarray(a, np.float32)

    def pooled(self, x, real: np.ndarray, even: np.ndarray, odd: np.ndarray, rows: list[int]) -> list:
        """The family's tail on ``x`` (B, n_rows, n_embd), the stem's rows of B sequences: blocks in which
        each sequence attends to its first ``real[b]`` rows (HF's masks), rows averaged in pairs (``even`` /
        ``odd`` index the flattened rows: HF's AvgPool1d(2)), ``post_ln`` and ``mm.a.fc``; one
        (rows[i], n_mm_embd) tensor per clip."""
        c, g = self.cfg, x.graph
        n_rows = x.shape[1]
        with g.scope("a"):
            mask = None
            if (real < n_rows).any():
                m = np.where(np.arange(n_rows)[None, :] < real[:, None], 0.0, -np.inf).astype(np.float32)
                mask = g.const("attn_mask", np.ascontiguousarray(np.repeat(m[:, None, :], n_rows, axis=1)))
            x = blocks.vit(x, c.vit, n_layer=c.n_layer, mask=mask)[-1]
            x = ops.reshape(x, (x.shape[0] * n_rows, c.n_embd), name="rows")
            pair = [ops.get_rows(x, g.const(f"pool_{k}", idx, dtype="i32"), name=f"pool.{k}")
                    for k, idx in (("even", even), ("odd", odd))]
            x = ops.scale(ops.add(pair[0], pair[1], name="pool.sum"), 0.5, name="pool")
            x = blocks.norm(x, "post_ln", eps=c.eps)
        with g.scope("mm.a"):
            y = blocks.linear(x, "fc", c.n_mm_embd, wtype=c.wtype)
        if len(rows) == 1:
            return [y]
        outs, r0 = [], 0
        for i, n in enumerate(rows):
            outs.append(ops.view(y, 0, r0, r0 + n, name=f"clip.{i}"))
            r0 += n
        return outs
