"""Settings carried by construction: each arch declares, in one place, the HF config and
processor fields that change its output, so that no checkpoint is run at the defaults by mistake.

Every field of the arch's HF config (``config.json``, sub-configs included) and of its image
processor / feature extractor (``preprocessor_config.json``) is, by one ``Setting``:

- carried: written into the GGUF under ``carry`` (llama.cpp's key where one exists, else a
  ``graphdsl.<arch>.<field>`` key) and read back by ``read`` with HF's default when a file
  (one llama.cpp wrote) lacks it. A config field is carried by the arch's ``config_to_gguf``
  (the converter checks that the key was written); a processor field by this module;
- refused: ``refuse(value, checkpoint)`` is true for a value graphdsl cannot honour, and
  ``graphdsl convert`` stops naming the file, the field and the value;
- irrelevant: the value does not change what the decoder reads (tokenizer-only, training-only,
  video fields ...), with the reason.

A path is dotted (``size.longest_edge``, ``vision_config.image_size``); one ending in ``.*``
covers a whole sub-dict (``text_config.*``). Fields every HF config or processor has are
declared once here (``COMMON_CONFIG``, ``COMMON_PROCESSOR``). tests/models/test_settings.py lists the
fields of each arch's HF classes and fails on any that is not declared.

    >>> s = Setting("processor", "do_image_splitting", carry="graphdsl.idefics3.do_image_splitting", default=True)
    >>> lookup({"do_image_splitting": False}, s.path)
    False
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

MISSING: Any = type("Missing", (), {"__repr__": lambda self: "MISSING"})()
FILES = {"config": "config.json", "processor": "preprocessor_config.json", "tokenizer": "tokenizer_config.json"}


@dataclass(frozen=True)
class Setting:
    """One HF field and what graphdsl does with it (exactly one of carry / refuse / irrelevant).

    Attributes:
        source: "config" (config.json), "processor" (preprocessor_config.json) or "tokenizer"
            (tokenizer_config.json); a carried processor or tokenizer field is carried alike.
        path: dotted path of the field; ``x.*`` for every field under ``x``.
        carry: the GGUF key holding the value ("tensor NAME": told by a tensor's presence).
        refuse: ``(value, checkpoint) -> bool``, true for a value graphdsl cannot honour;
            ``checkpoint`` is ``{"config": config.json, "processor": preprocessor_config.json,
            "tokenizer": tokenizer_config.json}``.
        irrelevant: why the value does not change the output.
        reason: for ``refuse``: what graphdsl lacks.
        default: HF's value when the field is absent (carried processor fields: what ``convert``
            writes for a checkpoint without it and ``read`` returns for a file without the key);
            a callable takes the arch's model config, for defaults that follow the tower
            (Idefics3's longest edge: 4 tiles of the tower's size).
        to_gguf / from_gguf: value <-> what the key stores, where it is not the value itself
            (a nested list flattened, an enum as an int).
    """

    source: str
    path: str
    carry: str | None = None
    refuse: Callable[[Any, Mapping], bool] | None = None
    irrelevant: str | None = None
    reason: str = ""
    default: Any = MISSING
    to_gguf: Callable[[Any], Any] | None = None
    from_gguf: Callable[[Any], Any] | None = None

    def __post_init__(self) -> None:
        if self.source not in FILES:
            raise RuntimeError(f"setting {self.path!r}: source {self.source!r} is not one of {sorted(FILES)}")
        if sum(x is not None for x in (self.carry, self.refuse, self.irrelevant)) != 1:
            raise RuntimeError(f"setting {self.source}:{self.path}: give exactly one of carry, refuse, irrelevant")
        if (self.refuse is not None and not self.reason) or (self.irrelevant is not None and not self.irrelevant):
            raise RuntimeError(f"setting {self.source}:{self.path}: a refused or irrelevant field needs its reason")
        if self.source != "config" and self.carry is not None and self.default is MISSING:
            raise RuntimeError(f"setting {self.source}:{self.path}: a carried {self.source} field needs HF's default")

    @property
    def what(self) -> str:
        return f"carried ({self.carry})" if self.carry else "refused" if self.refuse else "irrelevant"


def carried(source: str, path: str, key: str, default: Any = MISSING, **kw) -> Setting:
    return Setting(source, path, carry=key, default=default, **kw)


def irrelevant(source: str, path: str, reason: str) -> Setting:
    return Setting(source, path, irrelevant=reason)


def unless(source: str, path: str, default: Any, reason: str) -> Setting:
    """Refused at any value but HF's default (``default``)."""
    return Setting(source, path, refuse=lambda v, _ck: not _same(v, default), reason=reason, default=default)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b) and all(
            _same(x, y) for x, y in zip(a, b))
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        return isinstance(a, Mapping) and isinstance(b, Mapping) and a.keys() == b.keys() and all(
            _same(a[k], b[k]) for k in a)
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return a is b or a == b
    return a == b


# Fields of every HF PretrainedConfig (at the top and in each sub-config): none changes an encoder's
# output at inference.
_GENERIC = "a generic PretrainedConfig field: bookkeeping or training, not the forward pass"
COMMON_CONFIG = {k: _GENERIC for k in (
    "transformers_version", "architectures", "output_hidden_states", "output_attentions", "return_dict", "dtype",
    "torch_dtype", "chunk_size_feed_forward", "is_encoder_decoder", "id2label", "label2id", "problem_type",
    "_name_or_path", "model_type", "initializer_range", "initializer_factor", "use_cache", "tie_word_embeddings",
    "tokenizer_class", "prefix", "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "_pad_token_id",
    "decoder_start_token_id", "task_specific_params", "finetuning_task", "add_cross_attention", "tf_legacy_loss",
    "use_bfloat16", "pruned_heads", "is_decoder", "cross_attention_hidden_size", "_attn_implementation_autoset",
    "attention_dropout", "dropout", "hidden_dropout_prob", "attention_probs_dropout_prob", "activation_dropout",
    "resid_pdrop", "embd_pdrop", "attn_pdrop", "layerdrop", "encoder_layerdrop", "decoder_layerdrop")}
COMMON_CONFIG.update({k: "a token id of the decoder's prompt: the embeddings are the same whatever it is"
                      for k in ("image_token_id", "image_token_index", "video_token_id", "audio_token_id",
                                "audio_token_index", "vision_start_token_id", "vision_end_token_id",
                                "vision_token_id", "boi_token_index", "eoi_token_index")})
# Fields of every HF image processor / feature extractor.
COMMON_PROCESSOR = {
    "image_processor_type": "names the class, which the checkpoint's model_type already picks",
    "feature_extractor_type": "names the class, which the checkpoint's model_type already picks",
    "processor_class": "names the processor class, which the checkpoint's model_type already picks",
    "return_tensors": "the array type HF returns (graphdsl returns NumPy)",
    "data_format": "HF's output layout; graphdsl's is fixed (channels first)",
    "input_data_format": "how HF reads its input array; graphdsl decodes images itself",
    "device": "where HF computes; not the values",
    "disable_grouping": "a torchvision batching detail; not the values",
    "return_attention_mask": "HF's extra output; the features are the same",
    "padding_side": "batch padding of several inputs; one input is not padded",
    "padding_value": "batch padding of several inputs; one input is not padded",
    "auto_map": "remote-code class names",
}
# Fields of every HF tokenizer_config.json: the special tokens' spellings (the vocabulary and its
# special ids are carried as llama.cpp's tokenizer.ggml.* keys), batching and bookkeeping.
_SPECIAL = "a special token's spelling; the vocabulary and its special ids are carried as tokenizer.ggml.*"
COMMON_TOKENIZER = {
    **{k: _SPECIAL for k in ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token", "bos_token",
                             "eos_token", "additional_special_tokens", "extra_special_tokens", "added_tokens_decoder")},
    "tokenizer_class": "names the class, which the checkpoint's model_type already picks",
    "backend": "which transformers backend (tokenizers / sentencepiece) runs it; not the tokens",
    "processor_class": "names the processor class, which the checkpoint's model_type already picks",
    "model_max_length": "HF's truncation limit (when asked to truncate); graphdsl never truncates a prompt",
    "padding_side": "batch padding of several prompts; one prompt is not padded",
    "truncation_side": "HF's truncation (when asked to truncate); graphdsl never truncates a prompt",
    "model_input_names": "the names of HF's outputs, not their values",
    "clean_up_tokenization_spaces": "decoding only (ids -> text)",
    "split_special_tokens": "HF's default (False) keeps a special token whole, as graphdsl does",
    "auto_map": "remote-code class names",
    "name_or_path": "bookkeeping",
}


def lookup(d: Mapping | None, path: str) -> Any:
    """The value at a dotted path of a nested dict, or MISSING."""
    cur: Any = d or {}
    for part in path.split("."):
        if not isinstance(cur, Mapping) or part not in cur:
            return MISSING
        cur = cur[part]
    return cur


def leaves(d: Mapping, prefix: str = "") -> dict[str, Any]:
    """Every field of a nested dict by dotted path (a non-empty dict is descended into, but
    id2label / label2id and a tokenizer's added_tokens_decoder, whose keys are data, are fields themselves)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        p = f"{prefix}{k}"
        if isinstance(v, Mapping) and v and k not in ("id2label", "label2id", "added_tokens_decoder"):
            out.update(leaves(v, p + "."))
        else:
            out[p] = v
    return out


def declaration(settings: Sequence[Setting], source: str, path: str) -> Setting | str | None:
    """The setting declaring a field (exact path, else the longest ``x.*`` above it), else the
    reason from the common tables, else None (undeclared)."""
    best, depth = None, -1
    for s in settings:
        if s.source != source:
            continue
        if s.path == path:
            return s
        if s.path.endswith(".*") and path.startswith(s.path[:-1]) and s.path.count(".") > depth:
            best, depth = s, s.path.count(".")
    if best is not None:
        return best
    common = {"config": COMMON_CONFIG, "processor": COMMON_PROCESSOR, "tokenizer": COMMON_TOKENIZER}[source]
    return common.get(path.rsplit(".", 1)[-1])


def undeclared(settings: Sequence[Setting], source: str, fields: Mapping[str, Any]) -> list[str]:
    return sorted(p for p in fields if declaration(settings, source, p) is None)


def _encode(s: Setting, v: Any) -> Any:
    v = s.to_gguf(v) if s.to_gguf is not None else v
    if isinstance(v, float):
        return np.float64(v)  # stored f64: 1/255 must come back exactly (pixels are rescaled in float64)
    return v


def default_of(s: Setting, cfg: Any) -> Any:
    return s.default(cfg) if callable(s.default) else s.default


def refuse(arch, checkpoint: Mapping[str, Mapping], where: str = "") -> None:
    """ValueError naming the file, the field and the value for the first setting of ``arch`` that
    the checkpoint gives a value graphdsl cannot honour.

    checkpoint: {"config": config.json, "processor": preprocessor_config.json (or {}),
    "tokenizer": tokenizer_config.json (or {})}."""
    for s in arch.settings:
        if s.refuse is None:
            continue
        v = lookup(view(checkpoint.get(s.source) or {}) if s.source == "config" else checkpoint.get(s.source), s.path)
        if v is not MISSING and s.refuse(v, checkpoint):
            raise ValueError(f"convert: {where + '/' if where else ''}{FILES[s.source]}: {s.path}={v!r} is not "
                             f"supported by graphdsl ({arch.name}): {s.reason}")


def apply(arch, checkpoint: Mapping[str, Mapping], kv: list[tuple[str, object]], where: str = "", *,
          cfg: Any = None) -> list:
    """Convert-time: ``refuse``, then ``kv`` with every carried processor field added (its value,
    else HF's default; ``cfg``: the arch's model config, for defaults that follow it), after
    checking that every carried config field was written by the arch's ``config_to_gguf``."""
    refuse(arch, checkpoint, where)
    out = dict(kv)
    given = set()  # a key two fields carry (Qwen2-VL's size.shortest_edge and older min_pixels): the
    for s in arch.settings:  # value the checkpoint gives wins over a default, the later field over the earlier
        if s.carry is None:
            continue
        if s.source != "config":  # processor / tokenizer
            v = lookup(checkpoint.get(s.source), s.path)
            if v is not MISSING or s.carry not in given:
                out[s.carry] = _encode(s, default_of(s, cfg) if v is MISSING else v)
            if v is not MISSING:
                given.add(s.carry)
        elif s.carry not in out and not s.carry.startswith("tensor ") and \
                lookup(view(checkpoint.get("config") or {}), s.path) is not MISSING:
            raise RuntimeError(f"{arch.name}: config field {s.path} is declared carried as {s.carry}, "
                               "which config_to_gguf did not write")
    return list(out.items())


def read(arch, gguf_file, cfg: Any = None) -> dict[str, Any]:
    """Load-time: every carried processor field of ``arch`` from a GGUF file (a ``GGUFFile``, or
    None), with HF's default where the file lacks the key (``cfg``: the arch's model config, for
    defaults that follow it); path -> value."""
    from ..gguf_io.reader import metadata_value
    out = {}
    for s in arch.settings:
        if s.source == "config" or s.carry is None:
            continue
        if gguf_file is None or s.carry not in gguf_file.metadata:
            out[s.path] = default_of(s, cfg)
            continue
        raw, d = gguf_file.metadata[s.carry], default_of(s, cfg)
        kind = (bool if isinstance(d, bool) else int if isinstance(d, int)
                else float if isinstance(d, float) else str if isinstance(d, str)
                else "floats" if isinstance(raw, (list, np.ndarray)) and np.asarray(raw).dtype.kind == "f"
                else "ints" if isinstance(raw, (list, np.ndarray)) else type(raw))
        v = metadata_value(gguf_file, s.carry, kind)
        out[s.path] = s.from_gguf(v) if s.from_gguf is not None else v
    return out


def nested(values: Mapping[str, Any]) -> dict:
    """{dotted path: value} -> the nested dict HF writes ({"size.longest_edge": 64} -> {"size": {"longest_edge": 64}})."""
    out: dict = {}
    for path, v in values.items():
        *parents, last = path.split(".")
        cur = out
        for p in parents:
            cur = cur.setdefault(p, {})
        cur[last] = v
    return out


def vit_config(prefix: str = "vision_config.", channels: bool = True) -> tuple[Setting, ...]:
    """A ViT tower's HF config fields, carried by ``common.vit_keys`` (llama.cpp's clip.vision.* keys)."""
    from gguf import Keys

    V = Keys.ClipVision
    out = [carried("config", prefix + k, key) for k, key in (
        ("hidden_size", V.EMBEDDING_LENGTH), ("intermediate_size", V.FEED_FORWARD_LENGTH),
        ("num_hidden_layers", V.BLOCK_COUNT), ("num_attention_heads", V.Attention.HEAD_COUNT),
        ("image_size", V.IMAGE_SIZE), ("patch_size", V.PATCH_SIZE), ("layer_norm_eps", V.Attention.LAYERNORM_EPS),
        ("hidden_act", "graphdsl.vision.act"))]
    if channels:
        out.append(unless("config", prefix + "num_channels", 3, "graphdsl decodes images to RGB: 3 channels"))
    return tuple(out)


def decoder(prefix: str = "text_config.*") -> Setting:
    return irrelevant("config", prefix, "the language model's: the encoder's rows do not depend on it (its width "
                      "is the projector's output, read from the projector's weights)")


STANDALONE = {"clip_vision_model": "vision_config", "siglip_vision_model": "vision_config", "pixtral": "vision_config",
              "phi4_multimodal_audio": "audio_config"}


def view(config: Mapping) -> Mapping:
    """A tower's own config.json (CLIPVisionConfig ...) seen as the sub-config the declarations name."""
    sub = STANDALONE.get(str(config.get("model_type", "")))
    return {sub: config} if sub and sub not in config else config


_TOWER = "graphdsl resizes to the tower's vision_config.image_size"


def other_than(path: str, default: Any = MISSING) -> Callable[[Any, Mapping], bool]:
    """A ``refuse`` predicate: the value is not the checkpoint's config.json field ``path`` (its HF
    ``default`` when absent; without a default, an absent field refuses nothing)."""
    def refuse(v, checkpoint) -> bool:
        want = lookup(view(checkpoint.get("config") or {}), path)
        want = default if want is MISSING else want
        return want is not MISSING and not _same(v, want)
    return refuse


_not_tower = other_than("vision_config.image_size")


def image_processor(mode: str, mean, std, resample, pad: bool | None = None) -> tuple[Setting, ...]:
    """An ``ImageConfig`` arch's processor fields (CLIP's shortest edge + centre crop, SigLIP's
    square resize): the resample filter, rescale, normalization, mean/std, CLIP's shortest edge
    and LLaVA's pad to square carried (``image_kw`` reads them back); the other sizes refused
    unless they are the tower's (the crop, a square resize: what the tower takes)."""
    from gguf import Keys
    V, P = Keys.ClipVision, "graphdsl.vision."
    out = [carried("processor", "resample", P + "resample", resample, to_gguf=int),
           carried("processor", "do_rescale", P + "do_rescale", True),
           carried("processor", "rescale_factor", P + "rescale_factor", 1 / 255),
           carried("processor", "do_normalize", P + "do_normalize", True),
           carried("processor", "image_mean", V.IMAGE_MEAN, list(mean)),
           carried("processor", "image_std", V.IMAGE_STD, list(std)),
           unless("processor", "do_convert_rgb", True, "graphdsl always converts images to RGB"),
           unless("processor", "do_resize", True, _TOWER)]
    if mode == "clip":
        # HF resizes the shortest edge to size.shortest_edge, then centre-crops crop_size (which the
        # tower must take). A file without the key (llama.cpp's): the tower's size, as graphdsl did
        # before carrying it (HF's class default, 224, crops to 224, which only a 224 tower takes)
        out.append(carried("processor", "size.shortest_edge", P + "shortest_edge", lambda c: c.image_size,
                           to_gguf=int))
        out += [Setting("processor", p, refuse=_not_tower, reason=_TOWER)
                for p in ("crop_size.height", "crop_size.width")]
        out.append(unless("processor", "do_center_crop", True, "graphdsl centre-crops to the tower's size"))
    elif mode == "longest":
        pass  # the arch carries its own longest edge (Pixtral: graphdsl.pixtral.longest_edge)
    else:
        out += [Setting("processor", p, refuse=_not_tower, reason=_TOWER) for p in ("size.height", "size.width")]
    if pad is not None:
        out.append(carried("processor", "do_pad", P + "do_pad", pad))
    return tuple(out)


def image_kw(arch, mmproj) -> dict:
    """``ImagePreprocess.config`` keywords from a file's carried ``image_processor`` settings:
    resample, rescale_factor, mean/std (0 / 1 without normalization), CLIP's shortest_edge and
    "pad" mode."""
    got = read(arch, mmproj.config.file, mmproj.vision.cfg)
    if "resample" not in got:
        return {}
    kw = {"resample": int(got["resample"]), "rescale_factor": float(got["rescale_factor"]) if got["do_rescale"] else 1.0,
          "mean": tuple(got["image_mean"]), "std": tuple(got["image_std"])}
    if "size.shortest_edge" in got:  # CLIP / LLaVA: the edge resized to before the centre crop
        kw["shortest_edge"] = int(got["size.shortest_edge"])
    if "size.longest_edge" in got:  # Pixtral: the longest side an image keeps
        kw["longest_edge"] = int(got["size.longest_edge"])
    if "patch_size.height" in got:  # Pixtral: sides multiples of it times the merge (as HF's PixtralProcessor)
        kw["patch_size"] = int(got["patch_size.height"]) * int(getattr(mmproj.vision.cfg, "merge", 1))
    if got.get("do_pad"):
        kw["mode"] = "pad"
        kw["pad_color"] = tuple(int(m * 255) for m in kw["mean"])  # HF's LLaVA pads with the mean colour, always
    if not got["do_normalize"]:
        kw["mean"], kw["std"] = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return kw
