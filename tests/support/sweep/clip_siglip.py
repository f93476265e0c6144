"""Sweep entries for the ViT archs with one fixed-size view per image: CLIP (LLaVA or a bare
CLIPVisionModel), SigLIP (Gemma 3 or a bare SiglipVisionModel) and LLaVA-NeXT (anyres tiles)."""
from __future__ import annotations

import numpy as np
from hf_refs import randomize, tiny_llama

from .core import Entry, eps, ffn, mean_std, pick, width


def _images(rng, side, n=None):
    n = n or int(rng.integers(1, 3))
    return [("image", (int(rng.integers(max(4, side // 3), 3 * side)), int(rng.integers(max(4, side // 3), 3 * side))))
            for _ in range(n)]


def _vit(rng, patches=(3, 4, 5, 6, 7, 8, 9), sides=(2, 3, 4, 5)):
    d, h = width(rng)
    p = pick(rng, patches)
    return dict(hidden_size=d, num_attention_heads=h, intermediate_size=ffn(rng, d),
                num_hidden_layers=int(rng.integers(1, 4)), patch_size=p, image_size=p * pick(rng, sides),
                layer_norm_eps=eps(rng))


def _feature_layer(rng, n_layer):
    """-1, -2, one index, or two distinct layers (ascending, as HF lists them) written either way."""
    one = int(rng.integers(1, n_layer + 1))
    if n_layer < 2 or rng.random() < 0.6:
        return pick(rng, [-1, -2, one] if n_layer > 1 else [-1, one])
    a, b = sorted(int(x) for x in rng.choice(np.arange(1, n_layer + 1), 2, replace=False))
    return [a - (n_layer + 1) if rng.random() < 0.5 else a, b - (n_layer + 1) if rng.random() < 0.5 else b]


def _shift_mean(c):
    return {"image_mean": [m + 0.1 for m in c.processor["image_mean"]]}


def _pil(images):
    from PIL import Image
    return [Image.open(p).convert("RGB") for p in images]


def _no_grad(f):
    def g(*a, **k):
        import torch
        with torch.no_grad():
            return f(*a, **k)
    return g


# -- CLIP ------------------------------------------------------------------------------------------
def clip_generate(rng):
    v = dict(_vit(rng), hidden_act=pick(rng, ["quick_gelu", "gelu"]))
    s = v["image_size"]
    shortest = s if rng.random() < 0.75 else s + int(rng.integers(1, s))  # resize above the crop now and then
    proc = dict(size={"shortest_edge": shortest}, crop_size={"height": s, "width": s}, **mean_std(rng))
    if rng.random() < 0.5:
        return "clip_vision", {"vision": v}, proc, _images(rng, s)
    cfg = dict(vision=v, text_hidden=4 * int(rng.integers(4, 15)), feature_layer=_feature_layer(rng, v["num_hidden_layers"]),
               select=pick(rng, ["default", "full"]), projector_bias=bool(rng.random() < 0.7))
    return "llava", cfg, proc, _images(rng, s)


def clip_model(c):
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlavaConfig, LlavaForConditionalGeneration
    vc = CLIPVisionConfig(**c.config["vision"], attn_implementation="eager")
    if c.family == "clip_vision":
        return randomize(CLIPVisionModel(vc), c.seed)
    k = c.config
    cfg = LlavaConfig(vision_config=vc, text_config=tiny_llama(k["text_hidden"]), vision_feature_layer=k["feature_layer"],
                      vision_feature_select_strategy=k["select"], multimodal_projector_bias=k["projector_bias"],
                      attn_implementation="eager")
    return randomize(LlavaForConditionalGeneration(cfg), c.seed)


def clip_processor(c):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    return CLIPImageProcessorPil(**c.processor)


@_no_grad
def clip_reference(model, proc, c, paths):
    import torch
    px = torch.from_numpy(proc(_pil(paths), return_tensors="np")["pixel_values"])
    if c.family == "clip_vision":
        return model(px).last_hidden_state.reshape(-1, model.config.hidden_size).numpy()
    out = model.model.get_image_features(px, vision_feature_layer=c.config["feature_layer"],
                                         vision_feature_select_strategy=c.config["select"]).pooler_output
    return np.concatenate([o.numpy() for o in out])


CLIP = Entry("clip", clip_generate, clip_model, clip_reference, wrong=_shift_mean, processor=clip_processor)


# -- SigLIP ----------------------------------------------------------------------------------------
def siglip_generate(rng):
    v = dict(_vit(rng, sides=(2, 4, 6)), hidden_act=pick(rng, ["gelu_pytorch_tanh", "gelu"]))
    s = v["image_size"]
    proc = dict(size={"height": s, "width": s}, **mean_std(rng))
    if rng.random() < 0.4:
        return "siglip_vision", {"vision": v}, proc, _images(rng, s)
    # Gemma 3's projector pools the patch grid down to mm_tokens_per_image (a square of a divisor)
    side = s // v["patch_size"]
    pooled = pick(rng, [k for k in range(1, side + 1) if side % k == 0])
    cfg = dict(vision=v, text_hidden=4 * int(rng.integers(4, 15)), mm_tokens=pooled * pooled, text_eps=eps(rng))
    return "gemma3", cfg, proc, _images(rng, s)


def siglip_model(c):
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig
    from transformers import SiglipVisionModel
    vc = SiglipVisionConfig(**c.config["vision"], vision_use_head=False, attn_implementation="eager")
    if c.family == "siglip_vision":
        return randomize(SiglipVisionModel(vc), c.seed)
    k = c.config
    tc = Gemma3TextConfig(hidden_size=k["text_hidden"], intermediate_size=64, num_attention_heads=2,
                          num_key_value_heads=1, head_dim=16, num_hidden_layers=1, vocab_size=64, rms_norm_eps=k["text_eps"])
    cfg = Gemma3Config(vision_config=vc, text_config=tc, mm_tokens_per_image=k["mm_tokens"], attn_implementation="eager")
    return randomize(Gemma3ForConditionalGeneration(cfg), c.seed)


def siglip_processor(c):
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil
    return SiglipImageProcessorPil(**c.processor)


@_no_grad
def siglip_reference(model, proc, c, paths):
    import torch
    px = torch.from_numpy(proc(_pil(paths), return_tensors="np")["pixel_values"])
    if c.family == "siglip_vision":
        return model(px).last_hidden_state.reshape(-1, model.config.hidden_size).numpy()
    out = model.model.get_image_features(px).pooler_output
    return out.reshape(-1, out.shape[-1]).numpy()


SIGLIP = Entry("siglip", siglip_generate, siglip_model, siglip_reference, wrong=_shift_mean, processor=siglip_processor)


# -- LLaVA-NeXT ------------------------------------------------------------------------------------
def llava_next_generate(rng):
    v = dict(_vit(rng, sides=(2, 3, 4)), hidden_act=pick(rng, ["quick_gelu", "gelu"]))
    s = v["image_size"]
    grids = {(1, 1), (1, 2), (2, 1)} | {tuple(int(x) for x in rng.integers(1, 4, 2)) for _ in range(3)}
    pinpoints = [[s * a, s * b] for a, b in sorted(grids)]
    proc = dict(size={"shortest_edge": s}, crop_size={"height": s, "width": s}, image_grid_pinpoints=pinpoints,
                **mean_std(rng))
    cfg = dict(vision=v, text_hidden=4 * int(rng.integers(4, 15)), pinpoints=pinpoints,
               feature_layer=_feature_layer(rng, v["num_hidden_layers"]))
    return "llava_next", cfg, proc, _images(rng, 2 * s)


def llava_next_model(c):
    from transformers import CLIPVisionConfig, LlavaNextConfig, LlavaNextForConditionalGeneration
    k = c.config
    vc = CLIPVisionConfig(**k["vision"], attn_implementation="eager")
    cfg = LlavaNextConfig(vision_config=vc, text_config=tiny_llama(k["text_hidden"]), vision_feature_layer=k["feature_layer"],
                          image_grid_pinpoints=k["pinpoints"], attn_implementation="eager")
    return randomize(LlavaNextForConditionalGeneration(cfg), c.seed)


def llava_next_processor(c):
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
    return LlavaNextImageProcessorPil(**c.processor)


@_no_grad
def llava_next_reference(model, proc, c, paths):
    import torch
    out = proc(_pil(paths), return_tensors="np")
    f = model.model.get_image_features(torch.from_numpy(out["pixel_values"]), torch.from_numpy(out["image_sizes"]))
    return np.concatenate([x.numpy() for x in f.pooler_output])


LLAVA_NEXT = Entry("llava_next", llava_next_generate, llava_next_model, llava_next_reference, wrong=_shift_mean,
                   processor=llava_next_processor)
