"""Qwen2.5-VL-sized vision (depth 32, width 1280, SwiGLU 3420, 16 heads, windows of 112 px, full
attention in layers 7/15/23/31, merger to 3584) on one 448x448 image (32x32 patches, 256 tokens):
graphdsl vs HF's Qwen2_5_VisionTransformerPretrainedModel in fp32 and bf16, random weights.

    python benchmarks/bench_qwen25vl.py                 # f32 weights, precision f32 and fast
    python benchmarks/bench_qwen25vl.py --wtypes f32,f16 --repeat 5

Contenders alternate in one process with the same thread count; medians, ratios graphdsl / torch
(lower is better for graphdsl) and each one's relative L2 to torch fp32.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import alternate, machine, peak_rss_mb, table, today, versions  # noqa: E402

import graphdsl  # noqa: E402
from graphdsl.models import qwen2_5vl, qwen2vl  # noqa: E402

THREADS = os.cpu_count() or 1


def setup(side=448, seed=0):
    import torch
    from transformers import Qwen2_5_VLConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel
    torch.set_num_threads(THREADS)
    cfg = Qwen2_5_VLConfig(vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                                              out_hidden_size=3584, window_size=112,
                                              fullatt_block_indexes=[7, 15, 23, 31]),
                           text_config=dict(hidden_size=3584, num_attention_heads=28, num_key_value_heads=4))
    vc = cfg.vision_config
    vc._attn_implementation = "sdpa"
    hf = Qwen2_5_VisionTransformerPretrainedModel(vc).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in hf.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    pixels = np.random.default_rng(seed).standard_normal((3, side, side)).astype(np.float32)
    c = qwen2_5vl.config_from_hf(cfg)
    weights = qwen2_5vl.hf_to_gguf({f"visual.{k}": v for k, v in hf.state_dict().items()}, c)
    patches, grid = qwen2vl.patchify(pixels, c)
    return hf, c, weights, patches, grid


def torch_runner(hf, patches, grid, dtype):
    import torch
    m = hf if dtype == torch.float32 else _copy(hf).to(dtype)
    x, g = torch.from_numpy(patches).to(dtype), torch.tensor([grid])

    def run():
        with torch.inference_mode():
            return m(x, grid_thw=g).pooler_output
    return run


def _copy(m):
    import copy
    return copy.deepcopy(m)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--wtypes", default="f32", help="graphdsl weight types, comma-separated (f32, f16, q8_0)")
    args = ap.parse_args(argv)
    import torch
    hf, c, weights, patches, grid = setup()
    fns = {"torch float32": torch_runner(hf, patches, grid, torch.float32),
           "torch bfloat16": torch_runner(hf, patches, grid, torch.bfloat16)}
    ref = fns["torch float32"]().float().numpy()
    errs = {"torch bfloat16": fns["torch bfloat16"]().float().numpy()}
    for wt in args.wtypes.split(","):
        for precision in ("f32", "fast"):
            g = qwen2_5vl.build(dataclasses.replace(c, wtype=wt), [grid])
            run = graphdsl.compile(g, "cpu", n_threads=THREADS, precision=precision, weights=weights)
            label = f"graphdsl {wt} {precision}"
            fns[label] = (lambda r=run: r(pixels=patches))
            errs[label] = run(pixels=patches)["embd"]
    errs = {k: float(np.linalg.norm(v - ref) / np.linalg.norm(ref)) for k, v in errs.items()}
    print(f"errors vs torch fp32: {errs}; timing {len(fns)} contenders ...", file=sys.stderr, flush=True)
    t = alternate(fns, args.repeat)
    base, base16 = t["torch float32"], t["torch bfloat16"]
    rows = [[k, v * 1e3, v / base, v / base16, f"{errs[k]:.1e}" if k in errs else "-"] for k, v in t.items()]
    print(f"Qwen2.5-VL vision (depth 32, width 1280) on one 448x448 image, {THREADS} threads; {machine()}; "
          f"{versions()}; {today()}; peak RSS {peak_rss_mb():.0f} MB; median of {args.repeat}")
    print(table(["contender", "median ms", "/ torch fp32", "/ torch bf16", "rel. L2 vs torch fp32"], rows))


if __name__ == "__main__":
    main()
