"""graphdsl vs llama.cpp's own mtmd on the same mmproj file, for every projector type both run.

    .venv/bin/python benchmarks/bench_mtmd.py [--repeat 5] [--threads 2] [--only mlp,ldp]

Each case writes one mmproj GGUF (random f32 weights at a realistic size) and a text GGUF of the
projector's width, then times the encoder on one input: mtmd as ``mtmd_encode_chunk`` (summed
over the image chunks: MiniCPM-V's overview + slices) in tests/support/mtmd_ref.py under the mtmd venv
(``make test-mtmd`` builds it), graphdsl as one compiled mixed batch of the same chunks (compile
and pre-processing excluded on both sides). Best of ``repeat`` each; ratio = graphdsl / mtmd
(< 1: graphdsl faster). graphdsl runs its exact f32 policy unless --precision fast.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "benchmarks")]

from common import machine, table, today  # noqa: E402
from mtmd_util import run_mtmd, write_text_gguf  # noqa: E402

from graphdsl.convert.writer import write_gguf  # noqa: E402
from graphdsl.embed import Embedder  # noqa: E402
from graphdsl.models import clip, from_gguf, minicpmv, mobilevlm, siglip, whisper_enc  # noqa: E402
from graphdsl.models import text as text_models  # noqa: E402

SECONDS = 20  # audio length (one 30 s window for both)
D = 1024  # projector width (the text GGUF's n_embd)
B16 = dict(n_embd=768, n_ff=3072, n_head=12, n_layer=12)


def cases():
    return {
        "mlp": ("CLIP ViT-B/16 @224 + LLaVA MLP", clip,
                clip.ClipConfig(image_size=224, patch_size=16, **B16, feature_layer=(11,), n_mm_embd=D), "image", 224),
        "gemma3": ("SigLIP-B/16 @224 + Gemma 3 (49 tokens)", siglip,
                   siglip.SiglipConfig(image_size=224, patch_size=16, **B16, mm_tokens_per_image=49, n_mm_embd=D),
                   "image", 224),
        "voxtral": ("Whisper-base encoder (128 mel) + Voxtral, 20 s clip", whisper_enc,
                    whisper_enc.WhisperEncConfig(n_mel=128, n_ctx=1500, n_embd=512, n_ff=2048, n_head=8, n_layer=6,
                                                 stack_factor=4, n_mm_embd=D), "audio", None),
        "ldp": ("CLIP ViT-B/14 @336 + MobileVLM LDP", mobilevlm,
                mobilevlm.MobileVLMConfig(image_size=336, patch_size=14, **B16, feature_layer=12, class_token=False,
                                          projector="ldp", n_mm_embd=D, n_se=D // 4), "image", 336),
        "ldpv2": ("CLIP ViT-B/14 @336 + MobileVLM v2 LDPv2", mobilevlm,
                  mobilevlm.MobileVLMConfig(image_size=336, patch_size=14, **B16, feature_layer=12, class_token=False,
                                            projector="ldpv2", n_mm_embd=D), "image", 336),
        "resampler": ("SigLIP-B/14 @224 slices + MiniCPM-V 2.6 resampler, 1344x896 photo", minicpmv,
                      minicpmv.MiniCPMVConfig(image_size=224, patch_size=14, **B16, n_mm_embd=D, n_query=64,
                                              version=3), "image", (1344, 896)),
    }


def weights_for(module, cfg, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for n, s in module.weight_shapes(cfg).items():
        a = (1.0 + 0.02 * rng.standard_normal(s)) if len(s) == 1 and not n.endswith("bias") else \
            rng.standard_normal(s) * (0.02 if len(s) > 1 else 0.01)
        out[n] = a.astype(np.float32)
    return out


def write_case(d: Path, key, module, cfg):
    # depthwise kernels f16, as llama.cpp's converter writes them (its CPU conv_2d_dw needs that)
    t = {k: (v, "f16" if v.ndim == 4 and k.startswith("mm.") else "f32") for k, v in weights_for(module, cfg).items()}
    if key == "resampler":
        t["resampler.pos_embed_k"] = (np.zeros((1, cfg.n_mm_embd), np.float32), "f32")
    path = d / f"{key}.gguf"
    write_gguf(str(path), "clip", module.config_to_gguf(cfg), t)
    return path


def media_file(d: Path, kind, size):
    if kind == "audio":
        path = d / "speech.wav"
        t = np.arange(SECONDS * 16000) / 16000.0
        pcm = (0.3 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 0.5 * t) * 32767).astype("<i2")
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            w.writeframes(pcm.tobytes())
        return path
    from skimage import data
    wh = size if isinstance(size, tuple) else (size, size)
    path = d / f"photo_{wh[0]}x{wh[1]}.png"
    Image.fromarray(data.astronaut()).resize(wh, Image.Resampling.BICUBIC).save(path)
    return path


def graphdsl_time(path, text, media, kind, repeat, threads, precision):
    m, tm = from_gguf(path), text_models.from_gguf(text)
    if kind == "audio":
        from graphdsl.preprocess import whisper_chunks
        with wave.open(str(media)) as w:
            pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768.0
        items = [("audio", whisper_chunks(pcm, m.audio.cfg.n_mel)[0])]
    elif m.archs["image"].extra.get("items"):
        items = m.archs["image"].extra["items"](media, m, tm.info)[0]
    else:
        from graphdsl.preprocess import preprocess_images
        items = [("image", preprocess_images([media], m.image_config())[0])]
    emb = Embedder(tm.block, m.media, backend="cpu", precision=precision, n_threads=threads,
                   weights={**m.weights, **tm.weights})
    emb(items)  # compile
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        emb(items)
        best = min(best, time.perf_counter() - t0)
    return best, sum(1 for k, _ in items if k != "text")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", default="f32", choices=["f32", "fast"])
    p.add_argument("--only", default="", help="comma-separated projector types")
    a = p.parse_args(argv)
    rows = []
    only = set(filter(None, a.only.split(",")))
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        text = d / "text.gguf"
        write_text_gguf(text, D)
        for key, (label, module, cfg, kind, size) in cases().items():
            if only and key not in only:
                continue
            path = write_case(d, key, module, cfg)
            media = media_file(d, kind, size)
            try:
                ref = run_mtmd(path, text, media, d, threads=a.threads, repeat=a.repeat)
            except AssertionError as e:  # mtmd aborted: say so in the table and go on
                why = next((ln for ln in str(e).splitlines() if "GGML_ASSERT" in ln or "error" in ln), "aborted")
                rows.append([key, label, "-", "-", "-", f"mtmd failed: {why.split('/')[-1][:80]}"])
                print(rows[-1], flush=True)
                continue
            t_mtmd = sum(float(ref[k]) for k in ref if k.startswith("time."))
            t_ours, n_chunks = graphdsl_time(path, text, media, kind, a.repeat, a.threads, a.precision)
            rows.append([key, label, n_chunks, f"{t_ours * 1e3:.0f}", f"{t_mtmd * 1e3:.0f}",
                         f"{t_ours / t_mtmd:.2f}"])
            print(rows[-1], flush=True)
            path.unlink()
    print(f"\n{today()}, {machine()}, {a.threads} threads, graphdsl precision {a.precision}, best of {a.repeat}\n")
    print(table(["projector", "model", "media chunks", "graphdsl ms", "mtmd ms", "graphdsl / mtmd"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
