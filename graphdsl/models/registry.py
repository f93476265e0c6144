"""The architecture registry: one record per model file, so that adding a model is one file.

Each ``graphdsl/models/<arch>.py`` ends with ``register(Arch(...))``: the projector types it
serves (as llama.cpp's ``clip.projector_type`` writes them), the HF ``model_type``s it converts,
its config and block classes, the config <-> GGUF metadata functions both ways, the HF -> GGUF
tensor renames and its pre-processing as data. ``from_gguf``, ``convert``, ``info``,
``inspect``, ``embed``, ``demo`` and ``graphdsl preprocess --mode`` loop over ``ARCHS``; model
files in this package are imported (and so registered) by ``graphdsl.models``, in name order.

    >>> from graphdsl.models import registry
    >>> registry.for_hf("llava").name
    'clip'
    >>> "siglip" in registry.names("image")
    True
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .base import Block


def _always(mmproj_config) -> bool:
    return True


@dataclass(frozen=True)
class ImagePreprocess:
    """How a vision arch's pixels are made (``preprocess.ImageConfig``'s mode) and the mean/std
    its HF image processor defaults to when a checkpoint's preprocessor_config.json has none.

    ``defaults``: the config fields (``Arch.config``) at which the arch's pre-processing equals
    its HF image processor called with its defaults (image_size: a tile, a crop or a longest
    edge, as the arch reads it); ``graphdsl preprocess --mode ARCH`` without ``--mmproj`` uses them.
    ``takes_size``: False where the arch sizes each image itself and ignores image_size.
    """

    takes_size: ClassVar[bool] = True

    mode: str  # "clip" (shortest edge + centre crop), "siglip" (square resize), "pad"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def config(self, image_size: int, mean=None, std=None, **kw):
        """The ``preprocess.ImageConfig`` for a tower trained at ``image_size`` (``shortest_edge``:
        clip / pad mode's resize before the centre crop to image_size; default image_size)."""
        from ..preprocess import ImageConfig
        mean, std = tuple(mean or self.mean), tuple(std or self.std)
        edge = kw.pop("shortest_edge", image_size)
        if self.mode == "siglip":
            if edge != image_size:
                raise ValueError(f"[{self.mode}] a square resize to {image_size} has no shortest edge {edge} to honour")
            return ImageConfig(mode="siglip", size=(image_size, image_size), mean=mean, std=std, **kw)
        return ImageConfig(mode=self.mode, size=edge, crop_size=image_size, mean=mean, std=std, **kw)


@dataclass(frozen=True)
class Prepared:
    """One source as several batch items, in the decoder's order (MiniCPM-V: ("text", marker ids)
    around each ("image", slice)), and a line saying how the arch laid it out."""

    items: list
    note: str = ""


@dataclass(frozen=True)
class TextConversion:
    """A text arch's converter parts: ``layers(HF state dict, HF config, tensors) -> {gguf name:
    array}`` (the decoder's layers, for llama.cpp to run the file), ``vocab(hf_dir, n_vocab) ->
    [(key, value)]`` (the tokenizer's metadata) and the file's ``general.architecture``."""

    layers: Callable[[Mapping, Mapping, Mapping], dict]
    vocab: Callable[[str, int], list]
    gguf_arch: str


@dataclass(frozen=True)
class Arch:
    """One architecture: everything the package needs to load, convert, run and describe it.

    Attributes:
        name: the model file's name (``clip``), also accepted by ``preprocess --mode``.
        modality: "image", "audio" or "text" (the ``build_inp_embd`` input kind of its block).
        block: the Block class, called as ``block(cfg)(x)``.
        config: the config dataclass.
        projectors: ``clip.projector_type`` values (for its modality) whose files it builds.
        hf_model_types: HF ``model_type``s ``graphdsl convert`` turns into its files.
        config_from_hf: HF config (dict or object) -> config.
        config_from_gguf: ``gguf_io.MmprojConfig`` (or a path) -> config.
        config_to_gguf: config -> [(metadata key, value)]; the inverse of config_from_gguf.
        hf_to_gguf: (HF state dict, config) -> {gguf name: f32 array}, exactly the graph's weights.
        claims: for a projector type several archs serve ("none": an encoder without projector),
            whether this arch fits the file (e.g. CLIP when the tower has a class token).
        image: pixel pre-processing (vision archs): a resize mode with mean/std.
        prepare: how ``embed_files`` turns one source (a path, an array) into what the block takes,
            ``prepare(source, mmproj, text_info, max_seconds)`` (text_info: the text GGUF's
            ``models.text`` info or None; max_seconds: the audio limit or None): the item's data
            (tiles, crops, the arch's own log-mel), or a ``Prepared`` when one source becomes
            several batch items. None: pixels by ``Mmproj.image_config`` / Whisper's log-mel.
        needs_text: ``prepare`` reads the text model (MiniCPM-V: marker tokens between slices).
        output: "inline" (rows of the decoder's input) or "cross" (memories it attends to).
        companions: archs of encoders of the same HF checkpoint, written into the same mmproj by
            ``convert`` (Phi-4-multimodal's audio beside its vision).
        hf_dir: ``(HF config dict, folder) -> config dict`` with what the folder's other files say
            (Pixtral: token ids from the tokenizer), before ``config_from_hf``.
        text_conversion: what ``convert`` needs besides for a text model (``TextConversion``).
        settings: the HF config and processor fields that change the output, each carried into
            the GGUF, refused by ``convert`` or declared irrelevant (``models.settings``).
        examples: small canonical configs (every field a file can hold, the rest at defaults):
            the registry's tests round-trip each through a GGUF file.
    """

    name: str
    modality: str
    block: type
    config: type
    config_from_hf: Callable[[Any], Any]
    config_from_gguf: Callable[[Any], Any]
    config_to_gguf: Callable[..., list]
    hf_to_gguf: Callable[[Mapping, Any], dict]
    projectors: tuple[str, ...] = ()
    hf_model_types: tuple[str, ...] = ()
    claims: Callable[[Any], bool] = _always
    image: ImagePreprocess | None = None
    prepare: Callable[..., Any] | None = None
    needs_text: bool = False
    output: str = "inline"
    companions: tuple[str, ...] = ()
    hf_dir: Callable[[dict, str], dict] | None = None
    text_conversion: TextConversion | None = None
    examples: tuple = ()
    settings: tuple = ()


ARCHS: dict[str, Arch] = {}


def register(arch: Arch) -> Arch:
    if arch.name in ARCHS:
        raise RuntimeError(f"architecture {arch.name!r} registered twice")
    if arch.modality not in ("image", "audio", "text") or arch.output not in ("inline", "cross"):
        raise RuntimeError(f"architecture {arch.name!r}: modality {arch.modality!r} / output {arch.output!r}")
    for other in ARCHS.values():
        shared = set(other.hf_model_types) & set(arch.hf_model_types)
        if shared:
            raise RuntimeError(f"HF model types {sorted(shared)} claimed by {other.name!r} and {arch.name!r}")
    if arch.modality == "text" and arch.text_conversion is None:
        raise RuntimeError(f"text architecture {arch.name!r} declares no text_conversion")
    if arch.modality != "text" and not (issubclass(arch.block, Block) and arch.block.output == arch.output):
        raise RuntimeError(f"architecture {arch.name!r}: its block must be a models.base.Block whose output "
                           f"is the arch's {arch.output!r}")
    ARCHS[arch.name] = arch
    return arch


def _modality(section: str) -> str:
    return {"vision": "image", "image": "image", "audio": "audio"}[section]


def for_projector(section: str, projector: str, mmproj_config, *, what: str = "", written: str = "") -> Arch:
    """The arch that builds a file's vision or audio encoder (ValueError naming the file and the
    projector types graphdsl builds). ``written``: the type as the file names it where llama.cpp
    reads it as another (Qwen2.5-Omni's "qwen2.5o" is "qwen2.5vl_merger" for vision): archs that
    name the written type serve the file before those of the type it is read as."""
    modality = _modality(section)
    serving = [a for a in ARCHS.values() if a.modality == modality and written and written != projector
               and written in a.projectors]
    serving = serving or [a for a in ARCHS.values() if a.modality == modality and projector in a.projectors]
    fits = [a for a in serving if a.claims(mmproj_config)]
    if len(fits) == 1:
        return fits[0]
    known = sorted({p for a in ARCHS.values() if a.modality == modality for p in a.projectors})
    if not serving:
        raise mmproj_config.error(f"{section} projector type {projector!r} is not supported by graphdsl.models "
                                  f"(supported: {', '.join(known)})")
    raise mmproj_config.error(f"{section} projector type {projector!r}: {len(fits)} of the architectures serving "
                              f"it ({', '.join(a.name for a in serving)}) fit this file's tensors")


def for_hf(model_type: str) -> Arch:
    """The arch that converts an HF ``model_type`` (ValueError listing the supported ones)."""
    for a in ARCHS.values():
        if model_type in a.hf_model_types:
            return a
    known = sorted(t for a in ARCHS.values() for t in a.hf_model_types)
    raise ValueError(f"cannot convert HF model_type {model_type!r}; supported: {', '.join(known)}")


def resize_modes() -> dict[str, ImagePreprocess]:
    """The plain resize modes with the mean/std of the HF processor each stands for: clip
    (CLIPImageProcessor: OpenAI CLIP's), siglip (SiglipImageProcessor: 0.5) and pad
    (LlavaImageProcessor with do_pad: OpenAI CLIP's)."""
    from ..preprocess.image import HALF, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    return {"clip": ImagePreprocess("clip", OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
            "siglip": ImagePreprocess("siglip", HALF, HALF),
            "pad": ImagePreprocess("pad", OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)}


def image_modes() -> dict[str, ImagePreprocess]:
    """``preprocess --mode`` choices: the resize modes, and each vision arch by name. An arch named
    like a resize mode (clip) must pre-process as that mode does: a record that disagrees would
    otherwise be shadowed silently (it was: ``--mode clip`` normalised with 0.5 for a while)."""
    modes = resize_modes()
    for a in ARCHS.values():
        if a.image is None:
            continue
        mode = modes.setdefault(a.name, a.image)
        if (mode.mode, tuple(mode.mean), tuple(mode.std)) != (a.image.mode, tuple(a.image.mean), tuple(a.image.std)):
            raise RuntimeError(f"architecture {a.name!r} pre-processes as {a.image}, but the resize mode of that "
                               f"name is {mode}")
    return modes


def names(modality: str | None = None) -> Sequence[str]:
    return [a.name for a in ARCHS.values() if modality in (None, a.modality)]
