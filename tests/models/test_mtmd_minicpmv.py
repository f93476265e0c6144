"""MiniCPM-V (graphdsl.models.minicpmv, projector "resampler") against llama.cpp's own mtmd
(tests/support/mtmd_ref.py in the mtmd venv; skipped without it, ``make test-mtmd`` builds it).

One mmproj file (random weights, llama.cpp's names and keys; the position table 70 x 70 because
mtmd hard-codes that side) and a tiny llama text GGUF whose vocabulary has the markers. The
same photo goes through ``mtmd_tokenize`` + ``mtmd_encode_chunk`` and through ``embed_files``;
chunk by chunk: the same kinds, the same marker ids, the same token counts, embeddings within BOUND
(a slice cut or resized differently would show there: mtmd's API does not report slice pixels).

BOUND: graphdsl runs exact f32; mtmd rounds through f16 in its tanh-GELU lookup table and flash
attention's K/V (tower and resampler; f16 is 2^-11 ~ 4.9e-4 relative per value). Measured here
(2026-12-01): 5.1e-4 to 7.6e-4 relative L2 per image chunk (2.5 and 2.6 layouts, the mtmd-policy
slices), 1.0e-4 to 1.8e-4 on the 1344x896 photo at slice 448 (printed); the bound is 5e-3. The
negative control (the sin-cos embedding's column and row halves swapped: the slice transposed in
position) lands at 7.5e-2 to 8.8e-2.
"""
from __future__ import annotations

import numpy as np
import pytest
from mtmd_util import rel_l2, run_mtmd, write_text_gguf
from PIL import Image

from graphdsl.convert.writer import write_gguf
from graphdsl.embed import Embedder, embed_files
from graphdsl.models import from_gguf, minicpmv
from graphdsl.models import text as text_models
from graphdsl.preprocess.minicpmv import best_grid
from test_mtmd_mobilevlm import random_weights

pytestmark = pytest.mark.children  # llama.cpp's mtmd runs in its own venv, in a child

BOUND = 5e-3
N_MM = 256  # two 128-wide resampler heads


def cfg_of(version):
    return minicpmv.MiniCPMVConfig(image_size=56, patch_size=14, n_embd=32, n_ff=64, n_head=4, n_layer=2,
                                   n_mm_embd=N_MM, n_query=8, n_pos_side=70, version=version)


def write_minicpmv(path, cfg, weights):
    # mtmd requires resampler.pos_embed_k (its graph never reads it: the keys' positions are the sin-cos table)
    t = {k: (v, "f32") for k, v in weights.items()}
    t["resampler.pos_embed_k"] = (np.zeros((1, cfg.n_mm_embd), np.float32), "f32")
    write_gguf(str(path), "clip", minicpmv.config_to_gguf(cfg), t)


def photo(w, h, path):
    from skimage import data
    Image.fromarray(data.astronaut()).resize((w, h), Image.Resampling.BICUBIC).save(path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("mtmd_minicpmv")
    write_text_gguf(d / "text.gguf", N_MM)
    return d, d / "text.gguf"


def compare(d, text, path, image, policy="minicpmv"):
    ref = run_mtmd(path, text, image, d)
    m, tm = from_gguf(path), text_models.from_gguf(text)
    items, note = minicpmv.image_items(image, m, tm.info, policy=policy)
    kinds = [k for k, _ in items]
    assert kinds == list(ref["kinds"]), (kinds, list(ref["kinds"]))
    for i, (k, data) in enumerate(items):
        if k == "text":
            np.testing.assert_array_equal(data, ref[f"tokens.{i}"])
        else:  # mtmd reports the chunk's token grid (n_query x 1), not the slice's pixels
            assert int(np.prod(ref[f"nxny.{i}"])) == m.vision.cfg.n_query
    if policy == "minicpmv":  # the file path, as graphdsl embed runs it
        out = embed_files(path, text, images=[image])
        assert out.notes == [note]
    else:
        out = Embedder(tm.block, m.media, weights={**m.weights, **tm.weights})(items)
    errs = []
    if out is not None:
        for i, s in enumerate(out.spans):
            if s.kind == "image":
                errs.append(rel_l2(out.embd[s.start:s.start + s.n_tokens], ref[f"embd.{i}"]))
            else:
                assert s.n_tokens == len(ref[f"tokens.{i}"])
    return ref, items, note, errs


@pytest.mark.parametrize("version", [2, 3], ids=["2.5", "2.6"])
def test_photo_matches_mtmd_chunk_by_chunk(files, version):
    d, text = files
    cfg = cfg_of(version)
    w = random_weights(minicpmv.weight_shapes(cfg), seed=version)
    path = d / f"minicpmv{version}.gguf"
    write_minicpmv(path, cfg, w)
    image = photo(168, 112, d / "photo.png")  # 6 x the slice area, 3:2 -> a 3 x 2 grid of 56 px slices
    ref, items, note, errs = compare(d, text, path, image)
    print(note, [f"{e:.1e}" for e in errs])
    assert "3 x 2 slices" in note and len(errs) == 7
    assert max(errs) < BOUND

    # negative control: rows and columns of the resampler's sin-cos embedding swapped
    real = minicpmv.sincos_2d
    try:
        minicpmv.sincos_2d = lambda gh, gw, dd: np.roll(real(gh, gw, dd), dd // 2, axis=1)
        bad = embed_files(path, text, images=[image])
    finally:
        minicpmv.sincos_2d = real
    bad_err = max(rel_l2(bad.embd[s.start:s.start + s.n_tokens], ref[f"embd.{i}"])
                  for i, s in enumerate(bad.spans) if s.kind == "image")
    print(f"negative control {bad_err:.1e}")
    assert bad_err > 10 * BOUND


def test_when_to_slice_differs_and_the_mtmd_policy_follows_mtmd(files):
    """100 x 30 at slice 56: wider than a slice but smaller in area. MiniCPM-V's processor keeps it
    whole; mtmd cuts it into 2 x 1 slices. policy="mtmd" reproduces mtmd's chunks exactly."""
    d, text = files
    cfg = cfg_of(3)
    path = d / "minicpmv_small.gguf"
    write_minicpmv(path, cfg, random_weights(minicpmv.weight_shapes(cfg), seed=5))
    image = photo(100, 30, d / "wide.png")
    assert best_grid(100, 30, 56, policy="minicpmv") is None and best_grid(100, 30, 56, policy="mtmd") == (2, 1)
    ref, items, note, errs = compare(d, text, path, image, policy="mtmd")
    print(note, [f"{e:.1e}" for e in errs])
    assert list(ref["kinds"]).count("image") == 3 and max(errs) < BOUND


def test_big_photo_at_the_real_slice_size(files):
    """The issue's case: a 1344x896 JPEG at MiniCPM-V's own slice size (448, patch 14): an overview
    of 546x364 and 3 x 2 slices of 448x448 (1024 patches each), 64 queries, as mtmd cuts it."""
    from skimage import data
    d, _ = files
    cfg = minicpmv.MiniCPMVConfig(image_size=448, patch_size=14, n_embd=32, n_ff=64, n_head=4, n_layer=1,
                                  n_mm_embd=128, n_query=64, n_pos_side=70, version=3)
    path = d / "minicpmv_448.gguf"
    write_minicpmv(path, cfg, random_weights(minicpmv.weight_shapes(cfg), seed=7))
    text = d / "text128.gguf"
    write_text_gguf(text, 128)
    image = d / "big.jpg"
    Image.fromarray(data.astronaut()).resize((1344, 896), Image.Resampling.BICUBIC).save(image)
    ref, items, note, errs = compare(d, text, path, image)
    print(note, [f"{e:.1e}" for e in errs])
    assert note == "minicpmv: overview 546x364, 3 x 2 slices of 448x448, 64 tokens each"
    assert len(errs) == 7 and max(errs) < BOUND


@pytest.mark.parametrize("version", [2, 3], ids=["2.5", "2.6"])
def test_an_image_kept_whole_matches_mtmd_through_the_cli(files, tmp_path, version):
    """A photo of exactly the slice size is neither sliced nor resized by either (MiniCPM-V's policy
    and mtmd's agree on it): one overview between <image> markers, no slice markers. graphdsl embed
    once read the unsliced grid (0, 0) as a grid (an IndexError; for 2.5 a stray <slice></slice>)."""
    import subprocess
    import sys
    d, text = files
    cfg = cfg_of(version)
    path = d / f"minicpmv_whole{version}.gguf"
    write_minicpmv(path, cfg, random_weights(minicpmv.weight_shapes(cfg), seed=11 + version))
    image = photo(cfg.image_size, cfg.image_size, tmp_path / "square.png")
    ref = run_mtmd(path, text, image, d)
    assert list(ref["kinds"]) == ["text", "image", "text"]

    def cli_embed(img, out):
        r = subprocess.run([sys.executable, "-m", "graphdsl.cli", "embed", "--mmproj", str(path), "--text-model",
                            str(text), "--image", str(img), "--backend", "cpu", "-f", "-o", str(out)],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        return np.load(out)
    got = cli_embed(image, tmp_path / "e.npy")
    rows = [ref["tokens.0"], ref["embd.1"], ref["tokens.2"]]
    assert got.shape == (len(rows[0]) + cfg.n_query + len(rows[2]), N_MM)
    tokens = text_models.from_gguf(text).weights["token_embd.weight"]
    want = np.concatenate([tokens[rows[0]], rows[1], tokens[rows[2]]])
    err = rel_l2(got, want)
    print(f"{version}: relative L2 vs mtmd {err:.2e}")
    assert err < BOUND
    # negative control: the photo mirrored left to right
    Image.open(image).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(tmp_path / "flipped.png")
    bad = rel_l2(cli_embed(tmp_path / "flipped.png", tmp_path / "b.npy"), want)
    print(f"negative control {bad:.2e}")
    assert bad > 10 * BOUND
