"""graphdsl vs PyTorch/HF at real encoder sizes (random weights), framework overhead and memory.

    python benchmarks/run.py            # everything (tens of minutes on 2 cores)
    python benchmarks/run.py --quick    # a ~2-minute subset
    python benchmarks/run.py --only clip,overhead --out benchmarks/RESULTS.md

The encoder tables (clip, whisper, siglip) run every contender in a process of its own
(benchmarks/rows.py: median of N runs after a warm-up, peak RSS, error vs torch fp32): torch
fp32/bf16, ONNX Runtime fp32 (the `bench` extra), graphdsl with f32/f16/bf16 weights on the default
install with and without oneDNN's products, and the portable PyPI wheel from .venv-portable
(`make portable-venv`; its row is skipped without it). `make bench` prepares both. The other
tables run their contenders in one process, alternating, same thread count. Ratios are
graphdsl / torch (lower is better for graphdsl).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from common import alternate, machine, peak_rss_mb, table, today, versions  # noqa: E402

import graphdsl  # noqa: E402

THREADS = os.cpu_count() or 1


def _torch():
    import torch
    torch.set_num_threads(THREADS)
    return torch


def _randomize(model, std=0.02, seed=0):
    torch = _torch()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


def _torch_fn(hf, x: np.ndarray, call):
    """torch_fn(dtype, batch=1) -> a no-argument runner of `call(model, input)` in that dtype."""
    def make(dtype, batch=1):
        torch = _torch()
        m = copy.deepcopy(hf).to(dtype)  # .to() is in place: keep the fp32 model intact
        inp = torch.from_numpy(x)[None].repeat(batch, *([1] * x.ndim)).to(dtype)

        def run():
            with torch.inference_mode():
                return call(m, inp)
        return run
    make.hf, make.x = hf, x  # for the per-process rows (rows.py)
    return make


# -- models at real sizes ---------------------------------------------------------------------------
def clip_b16(image_size=224):
    """CLIP ViT-B/16 + LLaVA projector (768 -> 4096), HF LlavaForConditionalGeneration's vision path."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
    from graphdsl.models import clip
    vc = CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                          image_size=image_size, patch_size=16)
    tc = LlamaConfig(hidden_size=4096, intermediate_size=64, num_attention_heads=32, num_hidden_layers=1, vocab_size=64)
    cfg = LlavaConfig(vision_config=vc, text_config=tc, attn_implementation="sdpa")
    hf = _randomize(LlavaForConditionalGeneration(cfg))
    gcfg = clip.config_from_hf(cfg.to_dict())
    weights = clip.hf_to_gguf(hf.state_dict(), gcfg)
    x = np.random.default_rng(0).standard_normal((3, image_size, image_size)).astype(np.float32)

    def call(m, px):
        return m.model.multi_modal_projector(m.model.vision_tower(px, output_hidden_states=True).hidden_states[-2][:, 1:])
    return gcfg, clip.build, weights, {"pixels": x}, _torch_fn(hf, x, call)


def whisper_base(seconds=30):
    """Whisper-base encoder (d 512, 6 layers) on one 30 s window, no projector."""
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder
    from graphdsl.models import whisper_enc
    hcfg = WhisperConfig(d_model=512, encoder_layers=6, encoder_attention_heads=8, encoder_ffn_dim=2048,
                         num_mel_bins=80, attn_implementation="sdpa")
    hf = _randomize(WhisperEncoder(hcfg))
    gcfg = dataclasses.replace(whisper_enc.config_from_hf(hcfg.to_dict()), projector=None)
    weights = whisper_enc.hf_to_gguf(hf.state_dict(), gcfg)
    mel = np.random.default_rng(0).standard_normal((80, 3000)).astype(np.float32)

    return gcfg, whisper_enc.build, weights, {"mel": mel[None]}, _torch_fn(hf, mel, lambda m, x: m(x).last_hidden_state)


def siglip_b16():
    """SigLIP B/16 @ 224 vision tower (post-LN features, no projector)."""
    from transformers import SiglipVisionConfig, SiglipVisionModel
    from graphdsl.models import siglip
    hcfg = SiglipVisionConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                              image_size=224, patch_size=16, attn_implementation="sdpa")
    hf = _randomize(SiglipVisionModel(hcfg))
    gcfg = dataclasses.replace(siglip.config_from_hf(hcfg.to_dict()), projector=None)
    weights = siglip.hf_to_gguf(hf.state_dict(), gcfg)
    x = np.random.default_rng(0).standard_normal((3, 224, 224)).astype(np.float32)

    return gcfg, siglip.build, weights, {"pixels": x}, _torch_fn(hf, x, lambda m, px: m(px).last_hidden_state)


ENCODERS = {"clip": clip_b16, "whisper": whisper_base, "siglip": siglip_b16}


PORTABLE_VENV = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".venv-portable")


def _contenders(wtypes, portable: bool):
    """(label, spec, python, env) per row. The venv running this is the default install (`make
    install`: libggml rebuilt for this CPU + oneDNN's products); "ggml only" is the same build with
    backend="ggml-cpu"; the portable wheel is PyPI's libggml in .venv-portable, without oneDNN."""
    out = [("torch float32", {"kind": "torch", "dtype": "float32"}, None, None),
           ("torch bfloat16", {"kind": "torch", "dtype": "bfloat16"}, None, None),
           ("ONNX Runtime fp32", {"kind": "onnx"}, None, None)]
    g = {"kind": "graphdsl", "precision": "f32"}
    for wt in wtypes:
        if wt == "f16":  # oneDNN has no f16 kernel without AVX512_FP16: ggml's either way
            out.append((f"graphdsl {wt} weights", {**g, "wtype": wt, "backend": "cpu"}, None, None))
            continue
        out.append((f"graphdsl {wt} weights, oneDNN + ggml", {**g, "wtype": wt, "backend": "cpu"}, None, None))
        out.append((f"graphdsl {wt} weights, ggml only", {**g, "wtype": wt, "backend": "ggml-cpu"}, None, None))
    if "bf16" in wtypes:
        out.append(("graphdsl bf16 weights, fast policy, oneDNN + ggml",
                    {**g, "wtype": "bf16", "backend": "cpu", "precision": "fast"}, None, None))
    if portable:
        out.append(("graphdsl f32 weights, portable wheel", {**g, "wtype": "f32", "backend": "cpu"},
                    os.path.join(PORTABLE_VENV, "bin", "python"), {"GRAPHDSL_ONEDNN": "0"}))
    return out


def bench_encoder(name, wtypes, repeat):
    """Every contender in its own process (rows.py): median ms, peak RSS, error vs torch fp32."""
    import tempfile

    import rows as R
    gcfg, build, weights, inputs, torch_fn = ENCODERS[name]()
    portable = os.path.exists(os.path.join(PORTABLE_VENV, "bin", "python"))
    with tempfile.TemporaryDirectory() as work:
        notes = R.prepare(work, name, torch_fn.hf, gcfg, build, weights, inputs, torch_fn.x, wtypes, onnx=True)
        del weights
        res = {}
        for label, spec, python, env in _contenders(wtypes, portable):
            if spec["kind"] == "onnx" and not os.path.exists(os.path.join(work, "model.onnx")):
                continue
            res[label] = R.run_row(work, label, {**spec, "model": name, "threads": THREADS, "repeat": repeat},
                                   python or sys.executable, env)
    if not portable:
        notes.append(f"portable-wheel row skipped: no {PORTABLE_VENV} (make portable-venv)")
    ok = {k: v for k, v in res.items() if "error" not in v}
    ref = ok["torch float32"]["y"] if "torch float32" in ok else None
    base = ok["torch float32"]["s"] if "torch float32" in ok else float("nan")
    base16 = ok["torch bfloat16"]["s"] if "torch bfloat16" in ok else float("nan")
    rows = []
    for k, v in res.items():
        if "error" in v:
            rows.append([k, "failed", "-", "-", "-", "-", v["error"]])
            continue
        err = (float(np.linalg.norm(v["y"] - ref) / np.linalg.norm(ref))
               if ref is not None and not k.startswith("torch float32") else None)
        rows.append([k, v["s"] * 1e3, v["s"] / base, v["s"] / base16, round(v["rss_mb"]),
                     "-" if err is None else f"{err:.1e}", v["what"]])
    body = table(["contender", "median ms", "/ torch fp32", "/ torch bf16", "peak RSS MiB",
                  "rel. L2 vs torch fp32", "runs on"], rows)
    return body + "".join(f"\n\n{n}" for n in notes)


def bench_batch(repeat):
    """8 images in one graph vs 8 single-image runs (CLIP ViT-B/16 @ 224)."""
    gcfg, build, weights, inputs, _ = clip_b16()
    x = inputs["pixels"]
    single = graphdsl.compile(build(gcfg), "cpu", weights=weights)
    batched = graphdsl.compile(build(gcfg, n_images=8), "cpu", weights=weights)
    xb = np.stack([x] * 8)
    t = alternate({"8 single runs": lambda: [single({"pixels": x}) for _ in range(8)],
                   "one batch of 8": lambda: batched({"pixels": xb})}, repeat)
    return table(["", "median ms", "ratio"], [[k, v * 1e3, v / t["8 single runs"]] for k, v in t.items()])


def bench_overhead(repeat):
    """Build + lowering + reservation vs compute; cached re-run cost; Python time per node."""
    gcfg, build, weights, inputs, _ = clip_b16()
    t0 = time.perf_counter()
    g = build(gcfg)
    t_build = time.perf_counter() - t0
    run = graphdsl.compile(g, "cpu", n_threads=THREADS, weights=weights)
    t0 = time.perf_counter()
    run.prepare(inputs)  # lowering to ggml + scheduler reservation, no compute
    lower = time.perf_counter() - t0
    t_run = alternate({"run": lambda: run(inputs)}, repeat)["run"]
    # The cost of a cached re-run without compute: a graph whose compute is negligible.
    tiny = graphdsl.Graph("tiny")
    tiny.output("y", tiny.input("x", (4,)) * 2.0)
    trun = graphdsl.compile(tiny, "cpu")
    xs = np.ones(4, np.float32)
    t_tiny = alternate({"tiny": lambda: trun(x=xs)}, 200)["tiny"]
    n_nodes = len(g.nodes)
    rows = [["graph build (Python)", t_build * 1e3, f"{t_build / n_nodes * 1e6:.1f} us/node"],
            ["lowering + reserve (once per input shape)", lower * 1e3, f"{lower / t_run:.1%} of one encode"],
            ["steady encode", t_run * 1e3, f"{n_nodes} DSL nodes, {run.last_program.cgraph.n_nodes} ggml nodes"],
            ["cached re-run of a 1-op graph", t_tiny * 1e3, "per-call framework cost"]]
    return table(["stage", "ms", "note"], rows)


def bench_rpc(repeat):
    """CLIP B/16 on ggml's RPC backend over loopback (server in a child process, same threads) vs
    in-process CPU: what the protocol costs when the device is not remote at all."""
    from graphdsl.backends.rpc import spawn_rpc_server
    if not graphdsl._ggml.has_backend("RPC"):
        return "skipped: this libggml has no RPC backend (scripts/build_libggml.sh rpc)"
    gcfg, build, weights, inputs, _ = clip_b16()
    g = build(gcfg)
    server, endpoint = spawn_rpc_server(n_threads=THREADS)
    try:
        cpu = graphdsl.compile(g, "cpu", n_threads=THREADS, weights=weights)
        t0 = time.perf_counter()
        rpc = graphdsl.compile(g, f"rpc://{endpoint}", n_threads=THREADS, weights=weights)
        upload = time.perf_counter() - t0
        out = next(iter(g.outputs))
        err = float(np.abs(rpc(inputs)[out] - cpu(inputs)[out]).max())
        tiny = graphdsl.Graph("tiny")
        tiny.output("y", tiny.input("x", (4,)) * 2.0)
        tcpu, trpc = graphdsl.compile(tiny, "cpu"), graphdsl.compile(tiny, f"rpc://{endpoint}")
        xs = np.ones(4, np.float32)
        t = alternate({"cpu": lambda: cpu(inputs), "rpc": lambda: rpc(inputs)}, repeat)
        tt = alternate({"cpu": lambda: tcpu(x=xs), "rpc": lambda: trpc(x=xs)}, 200)
        mb = sum(w.nbytes for w in weights.values()) / 2**20
        rows = [["compile + weight upload", upload * 1e3, "-", f"{mb:.0f} MiB of weights"],
                ["CLIP B/16 encode, cpu (in process)", t["cpu"] * 1e3, 1.0, ""],
                ["CLIP B/16 encode, rpc://127.0.0.1", t["rpc"] * 1e3, t["rpc"] / t["cpu"],
                 f"max abs diff vs cpu {err:.1e}; attention as mul_mat+soft_max (fused only on a local CPU)"],
                ["1-op graph re-run, cpu", tt["cpu"] * 1e3, 1.0, ""],
                ["1-op graph re-run, rpc", tt["rpc"] * 1e3, tt["rpc"] / tt["cpu"], "round trips per call"]]
        del rpc, trpc  # free the server-side buffers while it runs
        return table(["", "ms", "ratio", "note"], rows)
    finally:
        server.kill()
        server.wait()


def _rss_anon_mb() -> float:
    """Anonymous resident memory: what the process allocated, not file pages it maps."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssAnon:")) / 1024


def bench_memory():
    """Memory of a run vs the weights and compute buffers; GGUF weights used from the mmap."""
    import tempfile
    from graphdsl.convert.writer import write_gguf
    from graphdsl.gguf_io import read_gguf, weights_of
    gcfg, build, weights, inputs, _ = clip_b16()
    rows = []
    a0 = _rss_anon_mb()
    run = graphdsl.compile(build(gcfg), "cpu", n_threads=THREADS, weights=weights)
    run(inputs)
    p = run.placement()
    rows += [["NumPy weights: weights bound (copied into a ggml buffer)", run.weight_bytes / 2**20],
             ["NumPy weights: scheduler compute buffer", sum(p["compute_buffer_bytes"].values()) / 2**20],
             ["NumPy weights: anonymous RSS added by compile + run", _rss_anon_mb() - a0]]
    del run
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/clip.gguf"
        write_gguf(path, "clip", [], {k: (v, "f32") for k, v in weights.items()})
        a0 = _rss_anon_mb()
        run = graphdsl.compile(build(gcfg), "cpu", n_threads=THREADS, weights=weights_of(read_gguf(path).tensors))
        run(inputs)
        rows += [["GGUF mmap: weights used in place", run.weight_bytes / 2**20],
                 ["GGUF mmap: anonymous RSS added by load + compile + run", _rss_anon_mb() - a0]]
        del run
    return table(["what", "MiB"], rows)


def bench_scaling(repeat, png=None):
    """Encoder time vs image size (CLIP B/16) and audio length (Whisper-base, 30 s windows)."""
    torch = _torch()
    rows, img_pts, aud_pts = [], {"graphdsl f32": [], "torch fp32": []}, {"graphdsl f32": [], "torch fp32": []}
    for size in (224, 336, 448):
        gcfg, build, weights, inputs, torch_fn = clip_b16(size)
        run = graphdsl.compile(build(gcfg), "cpu", n_threads=THREADS, weights=weights)
        t = alternate({"g": lambda: run(inputs), "t": torch_fn(torch.float32)}, repeat)
        rows.append([f"CLIP B/16 @ {size}", t["g"] * 1e3, t["t"] * 1e3, t["g"] / t["t"]])
        img_pts["graphdsl f32"].append((size, t["g"] * 1e3))
        img_pts["torch fp32"].append((size, t["t"] * 1e3))
    gcfg, build, weights, inputs, torch_fn = whisper_base()
    mel = inputs["mel"][0]
    for seconds in (10, 30, 120):
        n_win = max(1, -(-seconds // 30))  # Whisper encodes 30 s windows; shorter audio is padded
        x = np.concatenate([mel[None]] * n_win)
        run = graphdsl.compile(build(gcfg, n_windows=n_win), "cpu", n_threads=THREADS, weights=weights)
        tf = torch_fn(torch.float32, batch=n_win)
        t = alternate({"g": lambda: run({"mel": x}), "t": tf}, max(1, repeat // 2))
        rows.append([f"Whisper-base {seconds} s ({n_win} window{'s' * (n_win > 1)})", t["g"] * 1e3, t["t"] * 1e3,
                     t["g"] / t["t"]])
        aud_pts["graphdsl f32"].append((seconds, t["g"] * 1e3))
        aud_pts["torch fp32"].append((seconds, t["t"] * 1e3))
    if png:
        from plot import line_plots
        line_plots(png, [("CLIP B/16 + projector", "image side (px)", img_pts),
                         ("Whisper-base encoder", "audio (s)", aud_pts)])
    return table(["input", "graphdsl f32 ms", "torch fp32 ms", "ratio"], rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CLIP and Whisper with f32/f16 weights, few repeats")
    ap.add_argument("--only", default="", help="comma list of: clip,whisper,siglip,batch,overhead,memory,scaling,rpc")
    ap.add_argument("--out", default="", help="append the tables to this Markdown file")
    ap.add_argument("--plot", default="", help="write the scaling curves to this PNG")
    ap.add_argument("--repeat", type=int, default=0, help="timed runs per contender (default 7, --quick 3)")
    args = ap.parse_args(argv)
    repeat = args.repeat or (3 if args.quick else 7)
    wtypes = ("f32", "bf16") if args.quick else ("f32", "f16", "bf16")
    want = set(args.only.split(",")) if args.only else (
        {"clip", "whisper", "overhead"} if args.quick else {"clip", "whisper", "siglip", "batch", "overhead", "memory", "scaling", "rpc"})
    parts = [f"## Run of {today()}\n\nMachine: {machine()}. Threads: {THREADS}. Versions: {versions()}.\n"]
    for name, title, fn in [  # noqa: B023 - each lambda runs once, inside this loop
        ("clip", "CLIP ViT-B/16 @ 224 + LLaVA projector (one image)", lambda: bench_encoder("clip", wtypes, repeat)),
        ("siglip", "SigLIP B/16 @ 224 (one image)", lambda: bench_encoder("siglip", wtypes, repeat)),
        ("whisper", "Whisper-base encoder, one 30 s window", lambda: bench_encoder("whisper", wtypes, repeat)),
        ("batch", "Batch of 8 images in one graph (CLIP B/16 @ 224, f32)", lambda: bench_batch(max(2, repeat // 2))),
        ("overhead", "Framework overhead (CLIP B/16 @ 224, f32)", lambda: bench_overhead(repeat)),
        ("memory", "Memory (CLIP B/16 @ 224, f32)", bench_memory),
        ("rpc", "RPC backend over loopback (CLIP B/16 @ 224, f32)", lambda: bench_rpc(repeat)),
        ("scaling", "Cost vs image size and audio length (f32 weights, precision f32)",
         lambda: bench_scaling(max(2, repeat // 2), args.plot)),
    ]:
        if name in want:
            t0 = time.perf_counter()
            body = fn()
            parts.append(f"### {title}\n\n{body}\n\n({time.perf_counter() - t0:.0f} s)\n")
            print(parts[-1], flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n".join(parts) + "\n")


if __name__ == "__main__":
    main()
