"""Sweep entries for the archs whose processor resizes or cuts each image its own way: Idefics3
(tiles + global image, pixel shuffle), Pixtral (longest edge, [IMG_BREAK] / [IMG_END] rows),
Qwen2-VL / Qwen2.5-VL (smart resize, 2-D merge, windows) and mllama (tiles, cross memories).

References per image (each through HF's processor and model on its own): what a decoder reads
for that image, so the rows of ``graphdsl embed --image a --image b`` are their concatenation.
"""
from __future__ import annotations

import types

import numpy as np
from hf_refs import randomize, tiny_llama

from .clip_siglip import _images, _no_grad, _pil, _shift_mean
from .core import Entry, eps, ffn, mean_std, pick, width  # noqa: F401


def _each(paths, f):
    return np.concatenate([f(p) for p in paths])


# -- Idefics3 --------------------------------------------------------------------------------------
def idefics3_generate(rng):
    d, h = width(rng)
    p = pick(rng, (3, 4, 5, 7, 8))
    k = pick(rng, (1, 2, 3))  # scale factor: the side in patches is a multiple of it
    s = p * k * pick(rng, (1, 2, 3))
    v = dict(hidden_size=d, num_attention_heads=h, intermediate_size=ffn(rng, d), num_hidden_layers=int(rng.integers(1, 4)),
             image_size=s, patch_size=p, layer_norm_eps=eps(rng), hidden_act=pick(rng, ["gelu_pytorch_tanh", "gelu"]))
    proc = dict(size={"longest_edge": 4 * s}, max_image_size={"longest_edge": s}, do_image_splitting=True,
                **mean_std(rng))
    if rng.random() < 0.4:  # the processor's other settings (SmolVLM ships longest_edge 2 * 512 or 3 * 512)
        proc.update(size={"longest_edge": s * int(rng.integers(1, 5))}, do_image_splitting=bool(rng.random() < 0.5))
    cfg = dict(vision=v, scale_factor=k, text_hidden=4 * int(rng.integers(4, 15)))
    return "idefics3", cfg, proc, _images(rng, 2 * s)


def idefics3_model(c):
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration
    from transformers.models.idefics3.configuration_idefics3 import Idefics3VisionConfig
    k = c.config
    cfg = Idefics3Config(vision_config=Idefics3VisionConfig(**k["vision"]), text_config=tiny_llama(k["text_hidden"]),
                         scale_factor=k["scale_factor"], attn_implementation="eager")
    return randomize(Idefics3ForConditionalGeneration(cfg), c.seed)


def idefics3_processor(c):
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
    return Idefics3ImageProcessorPil(**c.processor)


@_no_grad
def idefics3_reference(model, proc, c, paths):
    import torch

    def one(p):
        out = proc(_pil([p]), return_tensors="np")
        f = model.model.get_image_features(torch.from_numpy(out["pixel_values"]),
                                           torch.from_numpy(out["pixel_attention_mask"]).bool())
        f = f.pooler_output if not isinstance(f, torch.Tensor) else f
        f = f[0] if isinstance(f, (list, tuple)) else f
        return f.reshape(-1, f.shape[-1]).numpy()
    return _each(paths, one)


IDEFICS3 = Entry("idefics3", idefics3_generate, idefics3_model, idefics3_reference, wrong=_shift_mean,
                 processor=idefics3_processor)


# -- Pixtral / Mistral 3 -----------------------------------------------------------------------------
def pixtral_generate(rng):
    d, h = width(rng, head_dims=(4, 8, 12))
    p = pick(rng, (4, 5, 6, 7, 8))
    family = pick(rng, ["llava", "mistral3"])
    merge = 2 if family == "mistral3" else 1
    s = p * merge * pick(rng, (2, 3, 4, 6))
    v = dict(hidden_size=d, num_attention_heads=h, head_dim=d // h, intermediate_size=ffn(rng, d),
             num_hidden_layers=int(rng.integers(1, 4)), image_size=s, patch_size=p,
             hidden_act=pick(rng, ["silu", "gelu"]))
    # HF's merger fails on an image of one merged token: the longest edge holds two at least
    longest = s if rng.random() < 0.7 else p * merge * int(rng.integers(2, 2 * s // (p * merge) + 1))
    proc = dict(size={"longest_edge": longest}, **mean_std(rng))
    # the merger's RMSNorm takes the text eps: graphdsl refuses one other than the tower's 1e-5 (llama.cpp's)
    cfg = dict(vision=v, text_hidden=4 * int(rng.integers(4, 15)), text_eps=1e-5,
               feature_layer=-1 if rng.random() < 0.7 else -2)
    media = _images(rng, s)
    # the processor's patch_size, which HF's PixtralProcessor multiplies by spatial_merge_size: the
    # tower's, now and then a multiple of it that divides the image size (no tower patch straddles two)
    k = pick(rng, [1, 1] + [d for d in (2, 3) if (s // (p * merge)) % d == 0])
    proc["patch_size"] = {"height": p * k, "width": p * k}
    return family, cfg, proc, media


def pixtral_model(c):
    from test_models_pixtral import IMG
    from transformers import (LlavaConfig, LlavaForConditionalGeneration, MistralConfig, Mistral3Config,
                              Mistral3ForConditionalGeneration, PixtralVisionConfig)
    k = c.config
    vc = PixtralVisionConfig(**k["vision"])
    if c.family == "llava":
        cfg = LlavaConfig(vision_config=vc, text_config=tiny_llama(k["text_hidden"]), vision_feature_layer=k["feature_layer"],
                          vision_feature_select_strategy="full", image_token_index=IMG, attn_implementation="eager")
        return randomize(LlavaForConditionalGeneration(cfg), c.seed)
    tc = MistralConfig(hidden_size=k["text_hidden"], intermediate_size=64, num_attention_heads=2, num_key_value_heads=2,
                       head_dim=k["text_hidden"] // 2, num_hidden_layers=1, vocab_size=64, rms_norm_eps=k["text_eps"])
    cfg = Mistral3Config(vision_config=vc, text_config=tc, spatial_merge_size=2, image_token_index=IMG,
                         vision_feature_layer=k["feature_layer"], attn_implementation="eager")
    return randomize(Mistral3ForConditionalGeneration(cfg), c.seed)


def pixtral_processor(c):
    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil
    return PixtralImageProcessorPil(**c.processor)


def pixtral_folder(c, folder):
    from test_models_pixtral import _save_folder
    _save_folder(types.SimpleNamespace(save_pretrained=lambda f: None), folder)  # the marker tokens' names


@_no_grad
def pixtral_reference(model, proc, c, paths):
    """HF's decoder input over each image's span ([IMG] rows, [IMG_BREAK] per row, [IMG_END])."""
    from test_models_pixtral import _hf_decoder_input
    v = c.config["vision"]
    geom = types.SimpleNamespace(patch_size=v["patch_size"], merge=2 if c.family == "mistral3" else 1)

    m = c.processor["patch_size"]["height"] * geom.merge  # as HF's PixtralProcessor calls its image processor

    def one(p):
        px = proc(_pil([p]), return_tensors="np", patch_size={"height": m, "width": m})
        (h, w), = px["image_sizes"]
        embd, ((a, b),) = _hf_decoder_input(model, [px["pixel_values"][0][:, :h, :w]], geom)
        return embd[a:b]
    return _each(paths, one)


PIXTRAL = Entry("pixtral", pixtral_generate, pixtral_model, pixtral_reference, wrong=_shift_mean,
                processor=pixtral_processor, extra_files=pixtral_folder)


# -- Qwen2-VL / Qwen2.5-VL ---------------------------------------------------------------------------
def _qwen_generate(rng, v25):
    d, h = width(rng, head_dims=(4, 8, 12))
    p, m = pick(rng, (4, 6, 7, 14)), pick(rng, (1, 2, 3))
    depth = int(rng.integers(1, 4))
    v = dict(patch_size=p, spatial_merge_size=m, temporal_patch_size=2, num_heads=h, depth=depth)
    if v25:
        v.update(hidden_size=d, intermediate_size=ffn(rng, d), out_hidden_size=48, window_size=p * m * pick(rng, (2, 3)),
                 fullatt_block_indexes=sorted({int(x) for x in rng.integers(0, depth, int(rng.integers(0, depth + 1)))}),
                 hidden_act=pick(rng, ["silu", "gelu_pytorch_tanh"]))
    else:
        v.update(embed_dim=d, hidden_size=48, mlp_ratio=pick(rng, (1, 2, 3)), hidden_act=pick(rng, ["quick_gelu", "gelu"]))
    proc = dict(patch_size=p, merge_size=m, temporal_patch_size=2, **mean_std(rng))
    f = p * m
    if rng.random() < 0.4:  # pixel bounds of the smart resize (Qwen's checkpoints set min_pixels / max_pixels)
        lo = f * f * int(rng.integers(1, 5))
        proc["size"] = {"shortest_edge": lo, "longest_edge": lo * int(rng.integers(2, 20))}
    else:
        proc["size"] = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280}
    return ("qwen2_5vl" if v25 else "qwen2vl"), {"vision": v}, proc, _images(rng, 4 * f)


def _qwen_model(c):
    from test_models_qwen2vl import _text_config
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLConfig,
                              Qwen2VLForConditionalGeneration)
    if c.family == "qwen2_5vl":
        cfg = Qwen2_5_VLConfig(vision_config=c.config["vision"], text_config=_text_config(), attn_implementation="eager")
        return randomize(Qwen2_5_VLForConditionalGeneration(cfg), c.seed)
    cfg = Qwen2VLConfig(vision_config=c.config["vision"], text_config=_text_config(), attn_implementation="eager")
    return randomize(Qwen2VLForConditionalGeneration(cfg), c.seed)


def _qwen_processor(c):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    return Qwen2VLImageProcessorPil(**c.processor)


@_no_grad
def _qwen_reference(model, proc, c, paths):
    from test_models_qwen2vl import _hf_features
    hp = proc(images=_pil(paths), return_tensors="np")
    return _hf_features(model, hp["pixel_values"], hp["image_grid_thw"].tolist())


QWEN2VL = Entry("qwen2vl", lambda rng: _qwen_generate(rng, False), _qwen_model, _qwen_reference, wrong=_shift_mean,
                processor=_qwen_processor)
QWEN2_5VL = Entry("qwen2_5vl", lambda rng: _qwen_generate(rng, True), _qwen_model, _qwen_reference,
                  wrong=_shift_mean, processor=_qwen_processor)


# -- mllama ----------------------------------------------------------------------------------------
def mllama_generate(rng):
    d, h = width(rng)
    p = pick(rng, (2, 3, 4, 5))
    s = p * pick(rng, (2, 3, 4))
    n_layer = int(rng.integers(1, 4))
    out_layers = sorted({int(x) for x in rng.integers(0, n_layer, int(rng.integers(1, n_layer + 1)))})
    v = dict(hidden_size=d, attention_heads=h, intermediate_size=ffn(rng, d), num_hidden_layers=n_layer,
             num_global_layers=int(rng.integers(1, 3)), image_size=s, patch_size=p, max_num_tiles=4,
             intermediate_layers_indices=out_layers, vision_output_dim=d * (len(out_layers) + 1), norm_eps=eps(rng))
    # HF's config checks max_num_tiles 4 (its default aspect ratios); its model needs the processor's equal
    proc = dict(size={"height": s, "width": s}, max_image_tiles=4, **mean_std(rng))
    return "mllama", {"vision": v, "text_hidden": 4 * int(rng.integers(4, 15))}, proc, _images(rng, 2 * s, 1)


def mllama_model(c):
    import torch
    from transformers import MllamaConfig, MllamaForConditionalGeneration
    k = c.config
    tc = dict(hidden_size=k["text_hidden"], intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
              num_hidden_layers=2, cross_attention_layers=[1], vocab_size=64, bos_token_id=0, eos_token_id=2,
              pad_token_id=3)
    cfg = MllamaConfig(vision_config=k["vision"], text_config=tc, image_token_index=1, attn_implementation="eager")
    model = randomize(MllamaForConditionalGeneration(cfg), c.seed)
    gen = torch.Generator().manual_seed(c.seed + 1)
    with torch.no_grad():  # gates away from 0 (as tests/models/test_models_mllama.py) so that every gated term counts
        for name, prm in model.named_parameters():
            if "gate" in name and prm.numel() == 1:
                prm.copy_(torch.rand(1, generator=gen) * 1.5 + 0.3)
    return model


def mllama_processor(c):
    from transformers.models.mllama.image_processing_pil_mllama import MllamaImageProcessorPil
    return MllamaImageProcessorPil(**c.processor)


@_no_grad
def mllama_reference(model, proc, c, paths):
    """HF's cross_attention_states for each image: the valid tiles' rows (n_tiles * (P + 1), d_text)."""
    import torch
    from test_models_mllama import _hf_states

    def one(p):
        o = proc([[im] for im in _pil([p])], return_tensors="np")
        item = types.SimpleNamespace(pixel_values=o["pixel_values"][0, 0], aspect_ratio_id=int(o["aspect_ratio_ids"][0, 0]),
                                     aspect_ratio_mask=o["aspect_ratio_mask"][0, 0])
        out = _hf_states(model, [item])[0]
        return out[:out.shape[0] // len(item.aspect_ratio_mask) * int(item.aspect_ratio_mask.sum())]
    del torch
    return _each(paths, one)


def mllama_args(gguf, paths, work):
    return ["--mmproj", gguf, *[a for p in paths for a in ("--image", p)], "--cross-output", work / "cross.npz"]


def mllama_read(work):
    """embed's memories with each image's padding tiles dropped (n_valid rows kept)."""
    with np.load(work / "cross.npz") as z:
        return np.concatenate([z[f"memory.{i}"].reshape(-1, z[f"memory.{i}"].shape[-1])[:int(n)]
                               for i, n in enumerate(z["n_valid"])])


MLLAMA = Entry("mllama", mllama_generate, mllama_model, mllama_reference, wrong=_shift_mean,
               processor=mllama_processor, embed_args=mllama_args, read=mllama_read)
