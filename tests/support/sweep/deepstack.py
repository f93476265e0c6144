"""Sweep entry for Qwen3-VL (deepstack): Qwen2-VL's smart resize at any patch / merge, a learned position
table of any side resampled to each grid, deepstack mergers after a random set of layers.

Reference per case: HF's processor on all the images, then the vision model's image features beside its
deepstack features (mtmd's layout, the rows ``graphdsl embed`` writes for this projector).
"""
from __future__ import annotations

from hf_refs import randomize

from .clip_siglip import _images, _no_grad, _pil, _shift_mean
from .core import Entry, ffn, mean_std, pick, width


def qwen3vl_generate(rng):
    d, h = width(rng, head_dims=(4, 8, 12))  # 2-D RoPE: head_dim a multiple of 4
    p, m = pick(rng, (4, 7, 8, 16)), pick(rng, (1, 2, 3))
    depth = int(rng.integers(1, 4))
    # the table's side at least the merge: llama.cpp's files say the side as image_size (side * patch), and a
    # tower smaller than one merge unit is refused on load (real checkpoints: 48 patches, merge 2)
    side = pick(rng, [s for s in (2, 3, 4, 6) if s >= m])
    v = dict(patch_size=p, spatial_merge_size=m, temporal_patch_size=2, num_heads=h, depth=depth, hidden_size=d,
             intermediate_size=ffn(rng, d), out_hidden_size=48, num_position_embeddings=side * side,
             deepstack_visual_indexes=sorted({int(x) for x in rng.integers(0, depth, int(rng.integers(0, depth + 1)))}),
             hidden_act=pick(rng, ["gelu_pytorch_tanh", "gelu", "quick_gelu"]))
    proc = dict(patch_size=p, merge_size=m, temporal_patch_size=2, **mean_std(rng))
    f = p * m
    lo = f * f * int(rng.integers(1, 5))
    proc["size"] = {"shortest_edge": lo, "longest_edge": lo * int(rng.integers(2, 20))}
    return "qwen3vl", {"vision": v}, proc, _images(rng, 4 * f)


def qwen3vl_model(c):
    from test_models_qwen3vl import text_config
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration
    cfg = Qwen3VLConfig(vision_config=c.config["vision"], text_config=text_config(), attn_implementation="eager")
    return randomize(Qwen3VLForConditionalGeneration(cfg), c.seed)


def qwen3vl_processor(c):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    return Qwen2VLImageProcessorPil(**c.processor)


@_no_grad
def qwen3vl_reference(model, proc, c, paths):
    from test_models_qwen3vl import _hf_stack
    hp = proc(images=_pil(paths), return_tensors="np")
    return _hf_stack(model, hp["pixel_values"], hp["image_grid_thw"].tolist())


QWEN3VL = Entry("qwen3vl", qwen3vl_generate, qwen3vl_model, qwen3vl_reference, wrong=_shift_mean,
                processor=qwen3vl_processor)
