"""llama.cpp's own mtmd as a reference: run in the mtmd venv (``scripts/build_mtmd.sh``), never in
graphdsl's, since the two load different libggml builds. Tests call it in a subprocess
(``tests/support/mtmd_util.py``) so that an abort inside llama.cpp cannot take pytest down.

    .venv-mtmd/bin/python tests/support/mtmd_ref.py --mmproj m.gguf --text t.gguf --image x.png --out r.npz

Writes one entry per chunk of ``mtmd_tokenize`` (prompt: the media marker alone, no special
tokens): ``kinds`` ("text"/"image"), for text chunks ``tokens.<i>`` (int32), for image chunks
``embd.<i>`` (n_tokens, n_embd: ``mtmd_encode_chunk`` + ``mtmd_get_output_embd``) and
``nxny.<i>`` (mtmd_image_tokens_get_nx/ny). ``--repeat N`` also times each encode (seconds, the
best of N, ``time.<i>``) for benchmarks/bench_mtmd.py.
"""
from __future__ import annotations

import argparse
import ctypes
import sys
import time

import numpy as np


def _bitmap(M, path: str):
    """An image (any format Pillow reads) or a 16-bit PCM .wav (mono, at mtmd's sample rate) as a bitmap."""
    if path.endswith(".wav"):
        import wave
        with wave.open(path) as w:
            pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768.0
        pcm = np.ascontiguousarray(pcm)
        return M.mtmd_bitmap_init_from_audio(len(pcm), pcm.ctypes.data_as(ctypes.POINTER(ctypes.c_float))), pcm
    from PIL import Image
    rgb = np.ascontiguousarray(np.asarray(Image.open(path).convert("RGB")), np.uint8)
    h, w = rgb.shape[:2]
    return M.mtmd_bitmap_init(w, h, rgb.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))), rgb


def run(mmproj: str, text: str, image: str, threads: int, repeat: int, flash: int) -> dict:
    import llama_cpp
    from llama_cpp import mtmd_cpp as M

    llama_cpp.llama_backend_init()
    mp = llama_cpp.llama_model_default_params()
    mp.n_gpu_layers = 0
    model = llama_cpp.llama_model_load_from_file(text.encode(), mp)
    if not model:
        raise SystemExit(f"mtmd_ref: llama could not load the text model {text}")
    cp = M.mtmd_context_params_default()
    cp.use_gpu = False
    cp.n_threads = threads
    cp.print_timings = False
    cp.warmup = False
    cp.flash_attn_type = flash
    ctx = M.mtmd_init_from_file(mmproj.encode(), model, cp)
    if not ctx:
        raise SystemExit(f"mtmd_ref: mtmd_init_from_file failed for {mmproj}")
    bmp, _keep = _bitmap(M, image)
    chunks = M.mtmd_input_chunks_init()
    txt = M.mtmd_input_text()
    marker = M.mtmd_default_marker()
    txt.text = marker
    txt.text_len = len(marker)
    txt.add_special = False
    txt.parse_special = True
    bitmaps = (M.mtmd_bitmap_p_ctypes * 1)(bmp)
    rc = M.mtmd_tokenize(ctx, chunks, ctypes.byref(txt), bitmaps, 1)
    if rc != 0:
        raise SystemExit(f"mtmd_ref: mtmd_tokenize returned {rc}")
    out: dict = {}
    kinds = []
    n_embd = llama_cpp.llama_model_n_embd(model)
    for i in range(M.mtmd_input_chunks_size(chunks)):
        ch = M.mtmd_input_chunks_get(chunks, i)
        t = M.mtmd_input_chunk_get_type(ch)
        if t == M.MTMD_INPUT_CHUNK_TYPE_TEXT:
            n = ctypes.c_size_t()
            p = M.mtmd_input_chunk_get_tokens_text(ch, ctypes.byref(n))
            out[f"tokens.{i}"] = np.array([p[k] for k in range(n.value)], np.int32)
            kinds.append("text")
            continue
        audio = t == M.MTMD_INPUT_CHUNK_TYPE_AUDIO
        if t != M.MTMD_INPUT_CHUNK_TYPE_IMAGE and not audio:
            raise SystemExit(f"mtmd_ref: chunk {i} has type {t}, expected text, image or audio")
        n_tok = M.mtmd_input_chunk_get_n_tokens(ch)
        best = float("inf")
        for _ in range(max(repeat, 1)):
            t0 = time.perf_counter()
            if M.mtmd_encode_chunk(ctx, ch) != 0:
                raise SystemExit(f"mtmd_ref: mtmd_encode_chunk failed on chunk {i}")
            best = min(best, time.perf_counter() - t0)
        ptr = M.mtmd_get_output_embd(ctx)
        embd = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(n_tok * n_embd,))
        out[f"embd.{i}"] = embd.reshape(n_tok, n_embd).copy()
        if not audio:
            img = M.mtmd_input_chunk_get_tokens_image(ch)
            out[f"nxny.{i}"] = np.array([M.mtmd_image_tokens_get_nx(img), M.mtmd_image_tokens_get_ny(img)], np.int32)
        out[f"time.{i}"] = np.float64(best)
        kinds.append("audio" if audio else "image")
    out["kinds"] = np.array(kinds)
    M.mtmd_input_chunks_free(chunks)
    M.mtmd_bitmap_free(bmp)
    M.mtmd_free(ctx)
    llama_cpp.llama_model_free(model)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mmproj", required=True)
    p.add_argument("--text", required=True)
    p.add_argument("--image", required=True, help="an image, or a 16-bit PCM .wav for audio encoders")
    p.add_argument("--out", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--flash", type=int, default=-1, help="flash_attn_type: -1 auto (mtmd's default), 0 off, 1 on")
    a = p.parse_args(argv)
    np.savez(a.out, **run(a.mmproj, a.text, a.image, a.threads, a.repeat, a.flash))
    return 0


if __name__ == "__main__":
    sys.exit(main())
