"""Idefics3 / SmolVLM: a SigLIP-style tower + pixel shuffle + a linear connector (projector "idefics3").

    x = patch_embd(frame) + patch_embd.bias + position_embd        (build_inp_embd "image", no class token)
    x = blk.0 .. blk.{n-1}(x)                                       (pre-LN layers, tanh-GELU)
    x = LayerNorm(v.post_ln)(x)
    x = pixel_shuffle(x, s)                                         (s x s patches -> one token of s^2 d)
    y = mm.model.fc(x)                                              (no bias)

An image is several frames (``preprocess.idefics3_images``: tiles row by row, then the global
image, each max_image_size square); each frame gives (n_patches / s^2) tokens, in frame order.

Positions: HF numbers patches by bucketing fractional coordinates in float32, which for some
grids (19, 25, 29 ... patches per side on this machine; the result depends on torch's vector
width) repeats one position and skips the next. graphdsl, like llama.cpp, uses the exact
positions 0..n-1, which is what HF computes on every other grid (SmolVLM's 32 and 26 included).

Example:
    >>> cfg = Idefics3Config(image_size=32, patch_size=4, n_embd=64, n_ff=128, n_head=4, n_layer=2,
    ...                      scale_factor=2, n_mm_embd=48)
    >>> build(cfg).outputs["embd"].shape       # 8x8 patches, 2x2 shuffled -> 16 tokens
    (1, 16, 48)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import Keys

from .. import blocks
from ..graph import Graph, Tensor
from .common import SquareFrames, VitHparams, graph_of, post_ln_tower, square_grid, weight_shapes_of
from .gguf_keys import T, gguf_vision, tn, vit_keys
from .hf import VISION_PREFIXES, convert_state, hf_dict, hf_vit_hparams, hf_vit_rules, sub
from . import settings
from .registry import Arch, ImagePreprocess, register


@dataclass(frozen=True)
class Idefics3Config(VitHparams):
    """Tower hyperparameters (``VitHparams``) and the connector's."""

    scale_factor: int = 4
    n_mm_embd: int = 576

    @property
    def n_out(self) -> int:
        return self.n_mm_embd


class Idefics3Vision(SquareFrames):
    """Frames f32 (n_frames, 3, S, S) -> (n_frames, n_tokens, n_mm_embd)."""

    what, see = "[idefics3] frames", "preprocess.idefics3_images"

    def _build(self, frames: Tensor) -> Tensor:
        c, g = self.cfg, frames.graph
        grid = square_grid(frames, c.patch_size, "v.frame_guard", "[idefics3] frames are max_image_size squares")
        x = post_ln_tower(frames, c, "image", "v", patch_size=c.patch_size, image_size=c.image_size, patch_bias=True)
        with g.scope("mm"):
            x = blocks.pixel_shuffle(x, grid, c.scale_factor, name="shuffle")
            return blocks.linear(x, "model.fc", c.n_mm_embd, bias=False, wtype=c.wtype)


def build(cfg: Idefics3Config, n_frames: int = 1) -> Graph:
    """A graph with input ``pixels`` (n_frames, 3, S, S) and output ``embd``."""
    return graph_of(Idefics3Vision(cfg), (n_frames, 3, cfg.image_size, cfg.image_size), "idefics3")


def weight_shapes(cfg: Idefics3Config) -> dict[str, tuple[int, ...]]:
    return weight_shapes_of(Idefics3Vision(cfg))


def config_from_hf(hf: Any) -> Idefics3Config:
    """From an HF Idefics3Config / SmolVLMConfig (vision_config, scale_factor, text_config)."""
    d = hf_dict(hf, "idefics3")
    v, t = sub(d, "vision_config"), sub(d, "text_config")
    return Idefics3Config(**hf_vit_hparams(v, eps=1e-6, act="gelu_pytorch_tanh", patch_size=32),
                          scale_factor=d.get("scale_factor", 2), n_mm_embd=t.get("hidden_size", 4096))


def config_from_gguf(src: Any) -> Idefics3Config:
    """From an mmproj GGUF with projector "idefics3" (llama.cpp's: clip.vision.projector.scale_factor,
    mm.model.fc.weight (n_mm_embd, n_embd s^2))."""
    m, v, kw = gguf_vision(src, ("idefics3",), "Idefics3")
    fc = m.shapes[tn(T.V_MMPROJ_FC)]
    s = v.n_merge or int(round((fc[1] / v.n_embd) ** 0.5))
    if s * s * v.n_embd != fc[1]:
        raise m.error(f"mm.model.fc.weight {list(fc)} does not take {v.n_embd} x scale_factor^2 ({s}^2) inputs")
    return Idefics3Config(**kw, scale_factor=s, n_mm_embd=fc[0])


def config_to_gguf(cfg: Idefics3Config, image_mean=(0.5,) * 3, image_std=(0.5,) * 3) -> list[tuple[str, object]]:
    V = Keys.ClipVision
    return [(Keys.Clip.PROJECTOR_TYPE, "idefics3"), *vit_keys(cfg, image_mean, image_std),
            (V.Projector.SCALE_FACTOR, cfg.scale_factor), (V.PROJECTION_DIM, cfg.n_mm_embd)]


def _rules():
    return [*hf_vit_rules(), ("connector.modality_projection.proj.weight", tn(T.V_MMPROJ_FC))]


def hf_to_gguf(state_dict, config) -> dict[str, np.ndarray]:
    """HF Idefics3ForConditionalGeneration / SmolVLM tensors -> gguf names (NumPy f32)."""
    cfg = config if isinstance(config, Idefics3Config) else config_from_hf(config)
    # the tower sits at model.vision_model., the connector at model.connector.
    return convert_state(state_dict, ("model.vision_model.", "vision_model.", "model.", *VISION_PREFIXES), _rules(),
                         weight_shapes(cfg), "idefics3")


def image_config(mmproj):
    """The file's ``Idefics3ImageConfig``: its carried processor settings (``SETTINGS``; a key the
    file lacks reads as HF's default, the longest edge as 4 tiles), tiles of the tower's size."""
    from ..preprocess.idefics3 import Idefics3ImageConfig
    c = mmproj.vision.cfg
    d = settings.nested(settings.read(ARCH, mmproj.config.file, c))
    return Idefics3ImageConfig.from_hf({**d, "max_image_size": {"longest_edge": c.image_size}})


def frames(source, mmproj, text_info=None, max_seconds=None) -> np.ndarray:
    """An image as HF's Idefics3ImageProcessor cuts it (tiles row by row, then the global image),
    with the file's settings (``image_config``)."""
    from ..preprocess.idefics3 import idefics3_images
    return idefics3_images(source, image_config(mmproj)).pixel_values


_P = "graphdsl.idefics3."
SETTINGS = (
    *settings.vit_config(), settings.decoder(),
    settings.carried("config", "text_config.hidden_size", Keys.ClipVision.PROJECTION_DIM),
    settings.carried("config", "scale_factor", Keys.ClipVision.Projector.SCALE_FACTOR),
    settings.unless("processor", "do_convert_rgb", True, "graphdsl always converts images to RGB"),
    settings.carried("processor", "do_resize", _P + "do_resize", True),
    settings.carried("processor", "size.longest_edge", Keys.ClipVision.PREPROC_IMAGE_SIZE,
                     lambda c: 4 * c.image_size),  # HF's 1456 is 4 x its 364 tiles; SmolVLM's 4 x 384 / 512
    settings.Setting("processor", "max_image_size.longest_edge",
                     refuse=settings.other_than("vision_config.image_size", 224),  # 224: HF's default tower
                     reason="tiles of another size than the tower's vision_config.image_size need HF's "
                            "interpolated patch positions, which graphdsl does not implement"),
    settings.carried("processor", "do_image_splitting", _P + "do_image_splitting", True),
    settings.carried("processor", "resample", _P + "resample", 1, to_gguf=int),  # PIL LANCZOS
    settings.carried("processor", "do_rescale", _P + "do_rescale", True),
    settings.carried("processor", "rescale_factor", _P + "rescale_factor", 1 / 255),
    settings.carried("processor", "do_normalize", _P + "do_normalize", True),
    settings.carried("processor", "image_mean", Keys.ClipVision.IMAGE_MEAN, [0.5] * 3),
    settings.carried("processor", "image_std", Keys.ClipVision.IMAGE_STD, [0.5] * 3),
    settings.irrelevant("processor", "do_pad", "pads a batch's images to the same number of frames with zero "
                        "frames, which the model drops (real_images_inds): an image's rows do not change"),
)


ARCH = register(Arch(
    "idefics3", "image", Idefics3Vision, Idefics3Config, config_from_hf, config_from_gguf, config_to_gguf,
    hf_to_gguf, projectors=("idefics3",), hf_model_types=("idefics3", "smolvlm"),
    image=ImagePreprocess("siglip", defaults={"image_size": 364, "patch_size": 14}), prepare=frames,  # HF: 4 x 364 / 364
    settings=SETTINGS,
    examples=(Idefics3Config(image_size=32, patch_size=4, n_embd=32, n_ff=64, n_head=4, n_layer=2, scale_factor=2,
                             n_mm_embd=48),)))
