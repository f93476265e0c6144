"""MiniCPM-V (graphdsl.models.minicpmv, graphdsl.preprocess.minicpmv) in the default venv: the
resampler's sin-cos table against MiniCPM-V's own formula, the slicing policies, the CLI on a
1344x896 photo, and the errors. The comparison with llama.cpp's mtmd (chunks, marker ids, slice
sizes and embeddings) is tests/models/test_mtmd_minicpmv.py."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from mtmd_util import write_text_gguf
from PIL import Image

from graphdsl.models import from_gguf, minicpmv
from graphdsl.models import text as text_models
from graphdsl.preprocess.minicpmv import MiniCPMVImageConfig, best_grid, marker_layout, minicpmv_slices
from test_mtmd_minicpmv import write_minicpmv
from test_mtmd_mobilevlm import random_weights


def _minicpmv_sincos(embed_dim, grid_hw):
    """MiniCPM-V 2.6's resampler.py (get_2d_sincos_pos_embed and helpers), transcribed."""
    def one_d(dim, pos):
        omega = np.arange(dim // 2, dtype=np.float32)
        omega /= dim / 2.0
        omega = 1.0 / 10000 ** omega
        out = np.einsum("hw,d->hwd", pos, omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=-1)
    gh, gw = grid_hw
    grid = np.stack(np.meshgrid(np.arange(gw, dtype=np.float32), np.arange(gh, dtype=np.float32)), axis=0)
    emb = np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=-1)
    return emb.reshape(gh * gw, embed_dim)


@pytest.mark.parametrize("grid", [(3, 5), (4, 4), (2, 7)])
def test_sincos_matches_minicpmv(grid):
    np.testing.assert_allclose(minicpmv.sincos_2d(*grid, 256), _minicpmv_sincos(256, grid), rtol=1e-5, atol=1e-5)
    # negative control: the column and row halves swapped
    assert not np.allclose(np.roll(minicpmv.sincos_2d(*grid, 256), 128, axis=1), _minicpmv_sincos(256, grid), atol=1e-2)


def test_buckets_are_exact_integers():
    ids = minicpmv.bucket_ids(3, 7, 70)
    assert ids.tolist()[:7] == [0, 10, 20, 30, 40, 50, 60] and ids[7] == 23 * 70


def test_slicing_photo_and_policies():
    sl = minicpmv_slices(Image.new("RGB", (1344, 896), (10, 20, 30)), MiniCPMVImageConfig())
    assert sl.grid == (3, 2) and sl.overview.shape == (3, 364, 546) and all(s.shape == (3, 448, 448) for s in sl.slices)
    assert all(d % 14 == 0 for s in [sl.overview, *sl.slices] for d in s.shape[1:])
    assert best_grid(600, 300, 448) is None and best_grid(600, 300, 448, policy="mtmd") == (2, 1)
    assert best_grid(4000, 500, 448) == (8, 1) and best_grid(4500, 500, 448) == (9, 1)  # log-ratio; at most 9
    small = minicpmv_slices(Image.new("RGB", (300, 200)), MiniCPMVImageConfig(policy="mtmd"))
    assert small.grid == (0, 0) and small.overview.shape == (3, 448, 448)  # mtmd squashes to S x S
    assert marker_layout(2, (2, 1)) == ["<image>", 0, "</image>", "<slice>", "<image>", 1, "</image>", "<image>", 2,
                                        "</image>", "</slice>"]
    for bad in ({"slice_size": 0}, {"patch_size": 1.5}):
        with pytest.raises(ValueError, match="MiniCPMVImageConfig"):
            MiniCPMVImageConfig(**bad)
    with pytest.raises(ValueError, match="transformers has no MiniCPM-V .* llama.cpp's legacy-models/minicpmv"):
        minicpmv.config_from_hf({})
    assert marker_layout(3, (1, 2)) == ["<image>", 0, "</image>", "<slice>", 1, "</slice>", "\n", "<slice>", 2,
                                        "</slice>"]


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    from skimage import data
    d = tmp_path_factory.mktemp("minicpmv")
    cfg = minicpmv.MiniCPMVConfig(image_size=448, patch_size=14, n_embd=32, n_ff=64, n_head=4, n_layer=1,
                                  n_mm_embd=128, n_query=4, n_pos_side=70, version=3)
    write_minicpmv(d / "mmproj.gguf", cfg, random_weights(minicpmv.weight_shapes(cfg), seed=0))
    write_text_gguf(d / "text.gguf", 128)
    Image.fromarray(data.astronaut()).resize((1344, 896), Image.Resampling.BICUBIC).save(d / "big.jpg")
    return d


@pytest.mark.children
def test_cli_embed_prints_the_slice_grid_and_spans(big):
    r = subprocess.run([sys.executable, "-m", "graphdsl.cli", "embed", "--mmproj", str(big / "mmproj.gguf"), "--image",
                        str(big / "big.jpg"), "--text-model", str(big / "text.gguf"), "-o", str(big / "out.npy")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "minicpmv: overview 546x364, 3 x 2 slices of 448x448, 4 tokens each" in r.stdout, r.stdout
    rows = [ln.split() for ln in r.stdout.splitlines() if ln.strip().split()[:1] and ln.split()[0].isdigit()]
    assert [k for _, k, *_ in rows] == ["text", "image"] * 7 + ["text"]
    assert np.load(big / "out.npy").shape == (7 * 4 + 1 + 6 * 2 + 1 + 1, 128)


def test_errors_are_clear(big):
    m = from_gguf(big / "mmproj.gguf")
    with pytest.raises(ValueError, match="not a multiple of the 14-pixel patch"):
        m.vision.slice_inputs(40, 56)

    class NoMarkers:
        tokens, path = ["<unk>", "a"], "t.gguf"
    with pytest.raises(ValueError, match=r"lacks MiniCPM-V's markers \['<image>'"):
        minicpmv.marker_ids(NoMarkers())
    from graphdsl.embed import embed_files
    with pytest.raises(ValueError, match="give the text model"):
        embed_files(big / "mmproj.gguf", images=[big / "big.jpg"])
    assert text_models.from_gguf(big / "text.gguf").block.n_out == 128


def test_a_max_slices_the_format_cannot_carry_is_refused(tmp_path):
    """No GGUF key carries max_slices (mtmd hard-codes 9): writing another would give a file read
    back, by graphdsl and mtmd alike, with 9. The writer refuses; 9 round-trips."""
    kw = dict(image_size=56, patch_size=14, n_embd=32, n_ff=64, n_head=4, n_layer=1, n_mm_embd=128, n_query=8)
    with pytest.raises(ValueError, match=r"max_slices 4: llama.cpp's mmproj format has no key for it"):
        minicpmv.config_to_gguf(minicpmv.MiniCPMVConfig(**kw, max_slices=4))
    cfg = minicpmv.MiniCPMVConfig(**kw)
    write_minicpmv(tmp_path / "m.gguf", cfg, random_weights(minicpmv.weight_shapes(cfg), seed=3))
    assert from_gguf(tmp_path / "m.gguf").vision.cfg.max_slices == 9
