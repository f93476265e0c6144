"""Qwen2-Audio through llama.cpp's own files and mtmd: its converter (convert_hf_to_gguf.py --mmproj,
tests/support/lcp_convert.py) writes the mmproj from the same HF folder, graphdsl loads it, and
llama.cpp's mtmd (tests/support/mtmd_ref.py in the mtmd venv; skipped without it, ``make test-mtmd``
builds it) encodes the same clips.

What differs, and why (measured 2026-12-08, 3 layers, d 32):
- llama.cpp's converter stores the conv stem's kernels in f16, and ggml's conv_1d rounds its input to
  f16 in im2col: graphdsl on that file is 1.9e-4 to 2.3e-4 from HF's f32 rows (bound LCP_BOUND 1e-3, as for
  llama.cpp's Voxtral files in test_llamacpp_files.py).
- mtmd runs every clip as whole 30 s windows without HF's key mask: a 2.3 s clip gives 750 rows where
  HF's decoder reads 57, and those 57 are not HF's (1.0 to 1.1 relative L2: every row attends to the
  padding's). On a clip that fills the window (nothing masked) mtmd's first window is graphdsl's
  rows on the same file within 2e-5 (mtmd's f16 GELU tables; bound MTMD_BOUND 1e-3).
- mtmd's log-mel of a 30 s clip has more than 3000 frames, so it adds a second, near-silent window
  (750 more rows) that HF does not have.
"""
from __future__ import annotations

import numpy as np
import pytest
from hf_refs import rel_err
from test_models_qwen2audio import hf_decoder_rows, hf_processor, pcm, tiny_qwen2audio

pytestmark = pytest.mark.children
LCP_BOUND = 1e-3
MTMD_BOUND = 1e-3


@pytest.fixture(scope="module")
def lcpp(tmp_path_factory):
    """llama.cpp's f32 mmproj of a 3-layer model (with 2 the converter's map has no block for conv2)."""
    import lcp_convert
    d = tmp_path_factory.mktemp("qwen2audio_lcpp")
    _, model = tiny_qwen2audio(seed=3, layers=3)
    model.save_pretrained(d / "hf")
    return d, model, lcp_convert.convert(d / "hf", d / "lcpp.gguf", "f32")


def _wav(d, seconds, seed):
    import soundfile as sf
    x = pcm(seconds, seed)
    path = d / f"clip{seconds}.wav"
    sf.write(path, x, 16000, subtype="PCM_16")  # what mtmd_ref reads
    return path, sf.read(path, dtype="float32")[0]


def _embed(d, gguf, wav):
    from cli_run import graphdsl
    out = d / f"g_{wav.stem}.npy"
    graphdsl("embed", "--mmproj", gguf, "--audio", wav, "-o", out, "--backend", "cpu", "-f")
    return np.load(out)


def test_llama_cpp_file_equals_hf(lcpp):
    from graphdsl.gguf_io import read_gguf
    from graphdsl.models import from_gguf, qwen2audio
    d, model, gguf = lcpp
    assert read_gguf(str(gguf)).metadata["clip.projector_type"] == "qwen2a"
    m = from_gguf(gguf)
    assert m.archs["audio"] is qwen2audio.ARCH and m.audio.cfg.act == "gelu_erf"
    wav, x = _wav(d, 2.3, 1)
    ref = hf_decoder_rows(model, hf_processor([x]))
    got = _embed(d, gguf, wav)
    err = rel_err(got, ref) if got.shape == ref.shape else float("inf")
    print(f"qwen2audio llama.cpp f32 file vs HF: {err:.2e}")
    assert err <= LCP_BOUND


def _mtmd(d, gguf, wav):
    from mtmd_util import run_mtmd, write_text_gguf
    text = d / "text.gguf"
    if not text.exists():
        write_text_gguf(text, 48, extra=("<|audio_bos|>", "<|audio_eos|>"))
    r = run_mtmd(gguf, text, wav, d)
    return [r[f"embd.{i}"] for i, k in enumerate(r["kinds"]) if k == "audio"]


def test_mtmd_full_window_matches(lcpp):
    """A clip that fills the window: mtmd's first window is graphdsl's rows (and HF's)."""
    d, model, gguf = lcpp
    wav, x = _wav(d, 30.0, 2)
    chunks = _mtmd(d, gguf, wav)
    got = _embed(d, gguf, wav)
    assert got.shape == chunks[0].shape == (750, 48)
    err = rel_err(got, chunks[0])
    print(f"qwen2audio mtmd vs graphdsl, 30 s: {err:.2e}; mtmd windows {[c.shape[0] for c in chunks]}")
    assert err <= MTMD_BOUND
    assert rel_err(got, hf_decoder_rows(model, hf_processor([x]))) <= LCP_BOUND


def test_mtmd_short_clip_is_not_hf(lcpp):
    """The documented difference (the negative control of the comparison above): mtmd's rows of a
    2.3 s clip are the whole window's, unmasked; HF's decoder reads 57 masked rows."""
    d, model, gguf = lcpp
    wav, x = _wav(d, 2.3, 1)
    chunks = _mtmd(d, gguf, wav)
    ref = hf_decoder_rows(model, hf_processor([x]))
    assert [c.shape[0] for c in chunks] == [750] and ref.shape[0] == 57
    err = rel_err(chunks[0][:57], ref)
    print(f"qwen2audio mtmd's first 57 rows of a 2.3 s clip vs HF: {err:.2e}")
    assert err > 0.1
    assert rel_err(_embed(d, gguf, wav), ref) <= LCP_BOUND
