"""Sweep entry for InternVL 2.5 / 3: GotOcr2 tiles + thumbnail (crop_to_patches=True, as
InternVLProcessor calls it), both InternViT variants (LayerNorm; RMSNorm with q/k norm), layer
scales, pixel shuffle and the LayerNorm MLP projector.

References per image (HF's processor and get_image_features on its own): the rows of
``graphdsl embed --image a --image b`` are their concatenation.
"""
from __future__ import annotations

import numpy as np
from hf_refs import randomize, tiny_llama

from .clip_siglip import _images, _no_grad, _pil, _shift_mean
from .core import Entry, eps, ffn, mean_std, pick, width


def internvl_generate(rng):
    d, h = width(rng)
    p = pick(rng, (3, 4, 5, 7, 8))
    ratio = pick(rng, (0.5, 0.5, 0.25))  # HF's pixel shuffle computes int(side * ratio): exact for these
    k = int(1 / ratio)
    s = p * k * pick(rng, (1, 2, 3))
    big = rng.random() < 0.5  # InternViT-6B's layout: RMSNorm, q/k norm, qkv bias, a final LayerNorm
    v = dict(hidden_size=d, num_attention_heads=h, intermediate_size=ffn(rng, d),
             num_hidden_layers=int(rng.integers(1, 4)), image_size=s, patch_size=p, layer_norm_eps=eps(rng),
             hidden_act=pick(rng, ["gelu", "gelu_pytorch_tanh"]),
             norm_type="rms_norm" if big else "layer_norm", use_qk_norm=big or rng.random() < 0.3,
             attention_bias=big or rng.random() < 0.3, use_mean_pooling=not big)
    lo = int(rng.integers(1, 3))
    proc = dict(size={"height": s, "width": s}, min_patches=lo, max_patches=lo + int(rng.integers(0, 6)),
                **mean_std(rng))
    cfg = dict(vision=v, downsample_ratio=ratio, act=pick(rng, ["gelu", "silu"]),
               text_hidden=4 * int(rng.integers(4, 15)))
    return "internvl", cfg, proc, _images(rng, 2 * s)


def internvl_model(c):
    from transformers import InternVLConfig, InternVLForConditionalGeneration, InternVLVisionConfig
    k = c.config
    cfg = InternVLConfig(vision_config=InternVLVisionConfig(**k["vision"]), text_config=tiny_llama(k["text_hidden"]),
                         downsample_ratio=k["downsample_ratio"], projector_hidden_act=k["act"],
                         attn_implementation="eager")
    return randomize(InternVLForConditionalGeneration(cfg), c.seed)


def internvl_processor(c):
    from transformers import GotOcr2ImageProcessorPil
    return GotOcr2ImageProcessorPil(**c.processor)


@_no_grad
def internvl_reference(model, proc, c, paths):
    import torch

    def one(p):
        px = proc(_pil([p]), crop_to_patches=True, return_tensors="np")["pixel_values"]
        f = model.model.get_image_features(torch.from_numpy(px)).pooler_output
        return f.reshape(-1, f.shape[-1]).numpy()
    return np.concatenate([one(p) for p in paths])


INTERNVL = Entry("internvl", internvl_generate, internvl_model, internvl_reference, wrong=_shift_mean,
                 processor=internvl_processor)
