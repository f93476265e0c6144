"""Pixtral's files: the HF folder's [IMG_BREAK] / [IMG_END] ids (``hf_dir``), the HF -> llama.cpp
tensor renames and the HF settings its configs and processors hold (``models.settings``)."""
from __future__ import annotations

import json
import os

from gguf import Keys

from ..gguf_io import KEY_MM_ACT
from ..preprocess.image import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from . import settings
from .gguf_keys import T, tn


def hf_dir(config: dict, folder: str) -> dict:
    """``graphdsl convert``'s look at the folder: the ids of [IMG_BREAK] and [IMG_END] from
    tokenizer_config.json's added_tokens_decoder, else tokenizer.json's added_tokens (llama.cpp's
    converter's get_token_id). A LLaVA/Mistral-3 folder without [IMG_BREAK] is refused, as there."""
    if "vision_config" not in config:
        return config
    found: dict[str, int] = {}
    for fname, key in (("tokenizer_config.json", "added_tokens_decoder"), ("tokenizer.json", "added_tokens")):
        path = os.path.join(folder, fname)
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as fh:
            entries = json.load(fh).get(key) or {}
        pairs = entries.items() if isinstance(entries, dict) else ((e.get("id"), e) for e in entries)
        for tid, e in pairs:
            for tok, k in (("[IMG_BREAK]", "image_break_token_id"), ("[IMG_END]", "image_end_token_id")):
                if isinstance(e, dict) and e.get("content") == tok:
                    found.setdefault(k, int(tid))
    if "image_break_token_id" not in found and "image_break_token_id" not in config:
        raise ValueError(f"{folder}: no [IMG_BREAK] token in tokenizer_config.json / tokenizer.json (Pixtral's "
                         "row marker, as llama.cpp's converter needs it)")
    return {**found, **config}


def hf_rules() -> list[tuple[str, str]]:
    """HF Pixtral / LLaVA / Mistral-3 names -> llama.cpp's, and the decoder's token table (for the marker rows)."""
    per_layer = [("attention.q_proj", T.V_ENC_ATTN_Q), ("attention.k_proj", T.V_ENC_ATTN_K),
                 ("attention.v_proj", T.V_ENC_ATTN_V), ("attention.o_proj", T.V_ENC_ATTN_O),
                 ("attention_norm", T.V_ENC_INPUT_NORM), ("ffn_norm", T.V_ENC_POST_ATTN_NORM),
                 ("feed_forward.gate_proj", T.V_ENC_FFN_GATE), ("feed_forward.up_proj", T.V_ENC_FFN_UP),
                 ("feed_forward.down_proj", T.V_ENC_FFN_DOWN)]
    rules = [(f"transformer.layers.{{bid}}.{hf}.weight", tn(t, "weight")) for hf, t in per_layer]
    rules += [("patch_conv.weight", tn(T.V_ENC_EMBD_PATCH)), ("ln_pre.weight", tn(T.V_PRE_NORM))]
    rules = [(f"vision_tower.{hf}", gg) for hf, gg in rules] + rules  # a LLaVA/Mistral-3 model or a bare tower
    mm = "multi_modal_projector."
    rules += [(f"{mm}linear_{i}.{s}", tn(T.V_MMPROJ, s, i)) for i in (1, 2) for s in ("weight", "bias")]
    rules += [(f"{mm}norm.weight", tn(T.V_MM_INP_NORM)),
              (f"{mm}patch_merger.merging_layer.weight", tn(T.V_MM_PATCH_MERGER))]
    return rules + [(k, "token_embd") for k in ("language_model.embed_tokens.weight",
                                                "language_model.model.embed_tokens.weight")]


def _merge_of(checkpoint) -> int:
    v = settings.lookup(checkpoint.get("config"), "spatial_merge_size")
    return 1 if v is settings.MISSING or settings.lookup(checkpoint.get("config"), "model_type") != "mistral3" else v


def _bad_head_dim(v, checkpoint) -> bool:
    c = settings.view(checkpoint.get("config") or {})
    n, h = (settings.lookup(c, f"vision_config.{k}") for k in ("hidden_size", "num_attention_heads"))
    return n is not settings.MISSING and h is not settings.MISSING and v * h != n


def _bad_patch(v, checkpoint) -> bool:
    h = settings.lookup(checkpoint.get("processor"), "patch_size.height")
    p = settings.lookup(settings.view(checkpoint.get("config") or {}), "vision_config.patch_size")
    p = 16 if p is settings.MISSING else p
    return (h is not settings.MISSING and v != h) or v % p != 0


_LLAMA_CPP = "llama.cpp's pixtral files cannot say otherwise (clip.cpp hard-codes it)"
SETTINGS = (
    *(s for s in settings.vit_config() if not s.path.endswith("layer_norm_eps")), settings.decoder(),
    settings.irrelevant("config", "vision_config.layer_norm_eps", "HF's Pixtral tower hard-codes 1e-5"),
    settings.irrelevant("config", "vision_config.vocab_size", "not used by the vision tower"),
    settings.Setting("config", "vision_config.head_dim", refuse=_bad_head_dim,
                     reason="graphdsl's heads are hidden_size / num_attention_heads wide"),
    settings.unless("config", "vision_config.rope_parameters.rope_theta", 10000.0, _LLAMA_CPP),
    settings.Setting("config", "vision_config.rope_parameters.rope_type", refuse=lambda v, ck: v not in (
        "default", "axial"), reason="graphdsl's Pixtral RoPE is HF's 2-D one"),
    settings.carried("config", "text_config.hidden_size", Keys.ClipVision.PROJECTION_DIM),
    settings.Setting("config", "text_config.rms_norm_eps", refuse=lambda v, ck: _merge_of(ck) > 1 and v != 1e-5,
                     reason="the patch merger's RMSNorm eps must be the tower's 1e-5: " + _LLAMA_CPP),
    settings.carried("config", "vision_feature_layer", Keys.ClipVision.BLOCK_COUNT),
    settings.unless("config", "vision_feature_select_strategy", "full", "Pixtral keeps every patch"),
    settings.carried("config", "projector_hidden_act", KEY_MM_ACT),
    settings.carried("config", "multimodal_projector_bias", "tensor mm.1.bias"),
    settings.carried("config", "spatial_merge_size", "tensor mm.patch_merger.merging_layer.weight"),
    settings.irrelevant("config", "image_seq_length", "how many image tokens a LLaVA processor writes in the prompt"),
    *settings.image_processor("longest", OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, 3),
    # HF's PixtralImageProcessor caps the longest side at size.longest_edge and rounds the sides up to
    # multiples of patch_size, which HF's PixtralProcessor multiplies by spatial_merge_size; a file
    # without the keys (llama.cpp's): the tower's image_size and patch_size, as graphdsl did before
    settings.carried("processor", "size.longest_edge", "graphdsl.pixtral.longest_edge", lambda c: c.image_size,
                     to_gguf=int),
    settings.carried("processor", "patch_size.height", "graphdsl.pixtral.patch_size", lambda c: c.patch_size,
                     to_gguf=int),
    settings.Setting("processor", "patch_size.width", refuse=_bad_patch,
                     reason="graphdsl's processor patches are square (patch_size.height) and a multiple of the "
                            "tower's vision_config.patch_size, so that no tower patch straddles two"),
    settings.irrelevant("processor", "do_pad", "pads a batch's images to one size, which image_sizes crops "
                        "away: an image's rows do not change"),
)
