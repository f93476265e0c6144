"""Reading HF checkpoints: config dicts (``hf_dict`` refuses another arch's, ``as_dict`` reads
any), the ViT fields and renames every HF ViT shares, and a state dict's path to gguf names
(strip the wrapper's prefix, rename, keep the tensors the graph declares)."""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .. import blocks
from ..dtypes import to_numpy
from .gguf_keys import T, tn
from .registry import ARCHS

# Where HF checkpoints keep a vision tower: LLaVA-style wrappers, bare towers, two-tower models.
VISION_PREFIXES = ("model.vision_tower.vision_model.", "vision_tower.vision_model.", "model.vision_tower.",
                   "vision_tower.", "vision_model.", "model.")


def sub(d: Mapping[str, Any] | None, key: str) -> dict:
    """A nested HF sub-config as a dict ({} when absent)."""
    v = (d or {}).get(key)
    if v is None:
        return {}
    return v if isinstance(v, Mapping) else v.to_dict()


def as_dict(cfg: Any) -> dict:
    """An HF config object or dict -> dict."""
    return cfg if isinstance(cfg, Mapping) else cfg.to_dict()


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


def remote_code_only(arch: str, model: str, script: str):
    """The ``config_from_hf`` of a model transformers does not ship (it runs as remote code): it
    refuses, naming llama.cpp's converter ``script`` that makes its mmproj file."""
    def config_from_hf(hf: Any):
        raise ValueError(f"[{arch}] transformers has no {model} (it ships as remote code); convert with "
                         f"llama.cpp's {script} and load the mmproj file")
    return config_from_hf


def hf_vit_hparams(v: Mapping[str, Any], eps: float, act: str, patch_size: int = 16) -> dict:
    """VitHparams fields from an HF vision config dict, with the family's defaults for eps / act."""
    return dict(image_size=v.get("image_size", 224), patch_size=v.get("patch_size", patch_size),
                n_embd=v.get("hidden_size", 768), n_ff=v.get("intermediate_size", 3072),
                n_head=v.get("num_attention_heads", 12), n_layer=v.get("num_hidden_layers", 12),
                eps=v.get("layer_norm_eps", eps), act=blocks.act_of(v.get("hidden_act", act)))


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


# -- state dicts -----------------------------------------------------------------------------------------
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
    """Apply (hf_name, gguf_name) rules; both may contain "{bid}". Values become NumPy, floats f32.
    Unmatched keys are dropped (and appended to ``unmatched`` when given, for the error keep_only raises)."""
    compiled = []
    for hf, gg in rules:
        pat = re.escape(hf).replace(r"\{bid\}", r"(?P<bid>\d+)")
        compiled.append((re.compile(pat + "$"), gg))
    out = {}
    for k, v in state_dict.items():
        for pat, gg in compiled:
            m = pat.match(k)
            if m:
                a = to_numpy(v)
                out[gg.format(bid=int(m.group("bid"))) if "bid" in pat.groupindex else gg] = (
                    a.astype(np.float32) if np.issubdtype(a.dtype, np.floating) else a)
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
