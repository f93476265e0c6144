"""Pre-processing speed: graphdsl vs HF processors and openai-whisper, serial vs threads.

Run:  PYTHONPATH=. python benchmarks/bench_preprocess.py [--repeat 7]
Prints a markdown table (medians over --repeat runs after one warm-up, the implementations of a
task interleaved run by run) with the machine and the date. References that are not installed
are left out of the table.

Inputs: log-mel of 30 s and of 10 min of noisy tones (80 bins); 64 JPEG images (the three
scikit-image photos and random sizes from 32x32 to 1600x1200, decoded as part of the work) for
CLIP 224 and SigLIP 384; 16 clips of 30 s for the threaded audio row.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import io
import os
import platform
import statistics
import sys
import time
import types

import numpy as np
from PIL import Image

from graphdsl.preprocess import audio, batch, image


def _group(rows, task, impls, repeat):
    """Time each (name, fn) of one task, interleaved round by round so that load from other
    processes falls on all of them alike; one warm-up call each (caches, pools, imports)."""
    impls = [(n, f) for n, f in impls if f is not None]
    times = {n: [] for n, _ in impls}
    for _, fn in impls:
        fn()
    for _ in range(repeat):
        for name, fn in impls:
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    rows.extend((task, n, statistics.median(times[n]) * 1e3) for n, _ in impls)


def _if(ref, fn):
    return None if ref is None else fn  # references that are not installed get no row


def _whisper_audio():
    try:
        return importlib.import_module("whisper.audio")
    except ImportError:
        spec = importlib.util.find_spec("whisper")
        if spec is None:
            return None
        pkg = types.ModuleType("_whisper_ref")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["_whisper_ref"] = pkg
        return importlib.import_module("_whisper_ref.audio")


def _signal(seconds, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    x = 0.2 * np.sin(2 * np.pi * 440 * t) * np.sin(2 * np.pi * 0.5 * t) + 0.05 * rng.standard_normal(t.size)
    return x.astype(np.float32)


def _jpegs(n, seed=0):
    from skimage import data as skdata

    rng = np.random.default_rng(seed)
    arrays = [skdata.astronaut(), skdata.chelsea(), skdata.coffee()]
    while len(arrays) < n:
        w, h = int(rng.integers(32, 1601)), int(rng.integers(32, 1201))
        base = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)  # smooth-ish content
        arrays.append(np.asarray(Image.fromarray(base).resize((w, h), Image.Resampling.BILINEAR)))
    out = []
    for a in arrays[:n]:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def bench_audio(rows, repeat):
    wa = _whisper_audio()
    try:
        from transformers import WhisperFeatureExtractor

        fe = WhisperFeatureExtractor()
    except ImportError:
        fe = None
    x30, x600 = _signal(30), _signal(600, seed=1)
    threads = f"graphdsl threads ({batch.default_workers()})"
    _group(
        rows,
        "log-mel 30 s -> [80, 3000]",
        [
            ("graphdsl whisper_features", lambda: audio.whisper_features(x30)),
            ("HF WhisperFeatureExtractor (torch)", _if(fe, lambda: fe(x30, sampling_rate=16000))),
            (
                "HF WhisperFeatureExtractor (NumPy path)",
                _if(fe, lambda: fe._np_extract_fbank_features(x30[None], "cpu")),
            ),
            (
                "openai-whisper log_mel_spectrogram (torch)",
                _if(wa, lambda: wa.log_mel_spectrogram(wa.pad_or_trim(x30))),
            ),
        ],
        repeat,
    )
    r = max(3, repeat // 2)
    _group(
        rows,
        "log-mel 10 min -> 20 x [80, 3000]",
        [
            ("graphdsl whisper_chunks", lambda: audio.whisper_chunks(x600)),
            (
                "HF WhisperFeatureExtractor long-form (torch)",
                _if(fe, lambda: fe(x600, sampling_rate=16000, truncation=False, padding="longest")),
            ),
            (
                "openai-whisper transcribe-style mel (torch)",
                _if(wa, lambda: wa.log_mel_spectrogram(x600, padding=wa.N_SAMPLES)),
            ),
        ],
        r,
    )
    clips = [_signal(30, seed=s) for s in range(16)]
    _group(
        rows,
        "log-mel 16 x 30 s",
        [
            ("graphdsl serial", lambda: batch.preprocess_audio(clips, max_workers=1)),
            (threads, lambda: batch.preprocess_audio(clips)),
        ],
        repeat,
    )


def bench_images(rows, repeat):
    try:
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
        from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

        hf = {
            "CLIP 224": CLIPImageProcessorPil(),
            "SigLIP 384": SiglipImageProcessorPil(size={"height": 384, "width": 384}),
        }
    except ImportError:
        hf = {}
    cfgs = {
        "CLIP 224": image.ImageConfig(mode="clip", size=224),
        "SigLIP 384": image.ImageConfig(mode="siglip", size=384),
    }
    jpegs = _jpegs(64)
    for name, cfg in cfgs.items():
        proc = hf.get(name)

        def run_hf(proc=proc):
            return proc([Image.open(io.BytesIO(b)) for b in jpegs], return_tensors="np")

        _group(
            rows,
            f"64 JPEGs -> {name} (decode included)",
            [
                ("graphdsl serial", lambda cfg=cfg: batch.preprocess_images(jpegs, cfg, max_workers=1)),
                (f"graphdsl threads ({batch.default_workers()})", lambda cfg=cfg: batch.preprocess_images(jpegs, cfg)),
                (f"HF {type(proc).__name__}", _if(proc, run_hf)),
            ],
            repeat,
        )


def _machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    vers = [f"Python {platform.python_version()}", f"NumPy {np.__version__}", f"Pillow {Image.__version__}"]
    for mod in ("torch", "transformers"):
        try:
            m = importlib.import_module(mod)
            vers.append(f"{mod} {m.__version__}")
            if mod == "torch":
                vers.append(f"torch threads {m.get_num_threads()}")
        except ImportError:
            pass
    return (
        f"{cpu}, {os.cpu_count()} logical CPUs ({batch.default_workers()} usable), {platform.system()}; "
        + ", ".join(vers)
    )


def render(rows):
    lines = ["| task | implementation | median | vs graphdsl |", "|---|---|---:|---:|"]
    base = {}
    for task, impl, ms in rows:
        base.setdefault(task, ms)  # first row of a task is the graphdsl baseline
        ratio = ms / base[task]
        lines.append(f"| {task} | {impl} | {ms:.1f} ms | {ratio:.2f}x |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--only", choices=["audio", "image"], default=None)
    args = ap.parse_args(argv)
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # other processes skew timings
    rows = []
    if args.only in (None, "audio"):
        bench_audio(rows, args.repeat)
    if args.only in (None, "image"):
        bench_images(rows, args.repeat)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = f"load average before/after: {load0:.2f} / {os.getloadavg()[0]:.2f}" if load0 is not None else ""
    print(f"Machine: {_machine()}\n\nDate: {now}; {load}\n")
    print(render(rows))
    print("\n`vs graphdsl`: time / time of the task's first row (>1 means slower than graphdsl).")


if __name__ == "__main__":
    main()
