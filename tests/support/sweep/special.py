"""Sweep entries whose reference needs more than one Python: Phi-4-multimodal vision (HF's image
processor exists only on torchvision, run in a fresh Python by ``phi4_hf.hf_process``) and the two
archs HF has no model class for, MiniCPM-V and MobileVLM, where llama.cpp's mtmd is the reference
(``tests/support/mtmd_ref.py`` in the mtmd venv; both skip when ``GRAPHDSL_MTMD_PYTHON`` is unset and no
.venv-mtmd exists).
"""
from __future__ import annotations

import importlib.util
import json
import os

import numpy as np

from .audio_text import phi4_config, phi4_model
from .clip_siglip import _images, _no_grad
from .core import Entry, PERTURB, pick, width


# -- Phi-4-multimodal vision --------------------------------------------------------------------------
def phi4_vision_generate(rng):
    k = phi4_config(rng, audio=False)
    v = k["vision"]
    proc = {"dynamic_hd": 36 if rng.random() < 0.6 else int(rng.integers(2, 12))}
    s = v["image_size"]
    h = int(rng.integers(s, 4 * s))  # HF's processor refuses aspect ratios its crop grid cannot hold
    return "phi4_multimodal", k, proc, [("image", (h, int(np.clip(h * rng.uniform(0.5, 2), s, 4 * s))))]


def phi4_vision_files(c, folder):
    """HF's preprocessor_config.json for the processor (written as its save_pretrained does: the
    processor itself can only be built in a fresh Python)."""
    v = c.config["vision"]
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Phi4MultimodalImageProcessor", "size": {"height": v["crop_size"], "width": v["crop_size"]},
        "patch_size": v["patch_size"], "dynamic_hd": c.processor["dynamic_hd"], "image_mean": [0.5] * 3,
        "image_std": [0.5] * 3}))


_PROCESSED: dict = {}  # (arch index, image path, dynamic_hd) -> HF's processor output, or its error


def phi4_vision_prefetch(items):
    """HF's processor on every image of every case (and the wrong setting's) in ONE fresh Python
    (``phi4_hf.hf_process``, ~20 s to start): per case it would dominate the sweep's time."""
    from phi4_hf import hf_process
    from PIL import Image
    keys, cases = [], []
    for c, paths, negative in items:
        v = c.config["vision"]
        hds = [c.processor["dynamic_hd"]] + ([PHI4_VISION.wrong(c)["dynamic_hd"]] if negative else [])
        for p in paths:
            for hd in hds:
                keys.append((c.index, str(p), hd))
                cases.append((np.asarray(Image.open(p).convert("RGB")), v["crop_size"], v["patch_size"], hd))
    _PROCESSED.clear()
    try:
        _PROCESSED.update(zip(keys, hf_process(cases)))
    except AssertionError:  # one image HF refuses fails the batch: process them one by one
        for k, cs in zip(keys, cases):
            try:
                _PROCESSED[k] = hf_process([cs])[0]
            except AssertionError as e:
                _PROCESSED[k] = str(e)[-300:]


@_no_grad
def phi4_vision_reference(model, proc, c, paths):
    from phi4_hf import hf_image_embeds
    from .core import HFRefuses
    out = []
    for p in paths:
        o = _PROCESSED[(c.index, str(p), c.processor["dynamic_hd"])]
        if isinstance(o, str):
            raise HFRefuses(o)
        out.append(hf_image_embeds(model, o["image_pixel_values"], o["image_sizes"], o["image_attention_mask"]))
    return np.concatenate(out)


def phi4_vision_skip():
    from phi4_hf import TV_SITE
    if importlib.util.find_spec("torchvision") is None and not (TV_SITE / "torchvision").is_dir():
        return "needs torchvision 0.28.0 in build/tv-site (make install): HF's Phi-4 image processor"
    return ""


PHI4_VISION = Entry("phi4_vision", phi4_vision_generate, phi4_model, phi4_vision_reference,
                    extra_files=phi4_vision_files, skip=phi4_vision_skip, prefetch=phi4_vision_prefetch,
                    wrong=lambda c: {"dynamic_hd": 2 if c.processor["dynamic_hd"] != 2 else 36})


# -- MiniCPM-V / MobileVLM against mtmd ---------------------------------------------------------------
def mtmd_skip():
    from mtmd_util import _probe
    if os.environ.get("GRAPHDSL_MTMD_REQUIRED"):
        return ""
    return _probe()[1]


def _mtmd_case(c, work, negative, write):
    """write(path, weights) the GGUF; graphdsl embed vs mtmd's embeddings for the case's image."""
    from mtmd_util import mtmd_python, write_text_gguf
    from test_mtmd_mobilevlm import random_weights
    import subprocess
    from .core import ROOT, cli, write_media
    from graphdsl.models.common import weight_shapes_of
    mtmd_python()
    block, n_mm = write.block(c), write.n_mm(c)
    weights = random_weights(weight_shapes_of(block), c.seed)
    img = write_media(c, work)[0]
    write(work / "m.gguf", block.cfg, weights)
    write_text_gguf(work / "text.gguf", n_mm)
    r = subprocess.run([mtmd_python(), str(ROOT / "tests" / "support" / "mtmd_ref.py"), "--mmproj", work / "m.gguf", "--text",
                        work / "text.gguf", "--image", img, "--out", work / "ref.npz"], capture_output=True, text=True,
                       timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"mtmd_ref.py exited {r.returncode}: {r.stderr[-1500:]}")
    table = _token_table(work / "text.gguf")
    with np.load(work / "ref.npz") as z:  # the chunks in order: text as the table's rows, images as embedded
        kinds = [str(k) for k in z["kinds"]]
        ref = np.concatenate([table[z[f"tokens.{i}"]] if k == "text" else z[f"embd.{i}"] for i, k in enumerate(kinds)])
    embed = ["embed", "--mmproj", work / "m.gguf", "--text-model", work / "text.gguf", "--image", img,
             "--backend", "cpu", "-f"]
    cli(*embed, "-o", work / "e.npy")
    got = np.load(work / "e.npy")
    bad = None
    if negative:
        name = next(k for k in weights if "blk." in k and weights[k].ndim == 2)
        write(work / "bad.gguf", block.cfg, {**weights, name: weights[name] * np.float32(PERTURB)})
        cli(*embed[:2], work / "bad.gguf", *embed[3:], "-o", work / "b.npy")
        bad = np.load(work / "b.npy")
    return got, ref, None, bad


def _token_table(path):
    import gguf
    t = next(t for t in gguf.GGUFReader(path).tensors if t.name == "token_embd.weight")
    return np.asarray(t.data, np.float32).reshape(int(t.shape[1]), int(t.shape[0]))


class _Writer:
    def __init__(self, block, n_mm, write):
        self.block, self.n_mm, self.write = block, n_mm, write

    def __call__(self, path, cfg, weights):
        return self.write(path, cfg, weights)


def _mtmd_geometry(w: int, h: int, s: int, p: int):
    """mtmd's overview and refined sizes of a sliced w x h photo (tools/mtmd/mtmd-image.cpp,
    llava_uhd::get_best_resize / get_refine_size / ensure_divide): float32 arithmetic, where
    MiniCPM-V's processor (and graphdsl) compute in float64; a side can land one patch apart."""
    from graphdsl.preprocess.minicpmv import best_grid
    f = np.float32

    def divide(n, q):  # std::round (half away from zero) of a float32 quotient
        return max(int(np.floor(np.float64(f(n) / f(q)) + 0.5)) * q, q)

    def resize(w, h, upscale):
        if w * h > s * s or upscale:
            r = f(w) / f(h)
            h = int(f(s) / np.sqrt(r))
            w = int(f(h) * r)
        return divide(w, p), divide(h, p)
    c, r = best_grid(w, h, s, policy="mtmd")
    bw, bh = resize(divide(w, c) // c, divide(h, r) // r, True)
    return resize(w, h, False), (bw * c, bh * r)


def mtmd_slices_as_minicpmv(w: int, h: int, s: int, p: int) -> bool:
    """Whether mtmd cuts a w x h photo (slice s, patch p) as MiniCPM-V's processor does: sliced by
    both policies (larger than a slice in area), the same overview and refined sizes (``_mtmd_geometry``),
    no letterbox: mtmd resizes into the refined size keeping the aspect ratio and pads the rest
    (PAD_CEIL, black: img_tool::resize, float32), where MiniCPM-V stretches; and resizes whose
    passes mtmd runs in Pillow's order (``_one_order``)."""
    from graphdsl.preprocess.minicpmv import _best_resize, _ensure_divide, best_grid
    if w * h <= s * s:
        return False
    c, r = best_grid(w, h, s, policy="mtmd")
    bw, bh = _best_resize(_ensure_divide(w, c) // c, _ensure_divide(h, r) // r, s, p, upscale=True)
    ov, (tw, th) = _mtmd_geometry(w, h, s, p)
    if ov != _best_resize(w, h, s, p, upscale=False) or (tw, th) != (bw * c, bh * r):
        return False
    if not all(_one_order(w, h, size) for size in (ov, (tw, th))):
        return False
    f = np.float32
    scale = min(f(tw) / f(w), f(th) / f(h))
    return (tw, th) == (w, h) or (min(int(np.ceil(f(w) * scale)), tw), min(int(np.ceil(f(h) * scale)), th)) == (tw, th)


def _one_order(w: int, h: int, size) -> bool:
    """Whether Pillow's bicubic resize of a w x h photo to ``size`` equals its horizontal pass then
    its vertical pass: mtmd's ``resize_pillow`` (tools/mtmd/mtmd-image.cpp) always runs them in that
    order, Pillow does not for every pair of sizes (its one-axis passes mtmd matches bit for bit);
    where the orders differ mtmd's pixels are off by up to ~20 levels. Checked on noise."""
    from PIL import Image
    if tuple(size) == (w, h):
        return True
    a = Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8))
    bic = Image.Resampling.BICUBIC
    return np.array_equal(np.asarray(a.resize(size, bic)), np.asarray(a.resize((size[0], h), bic).resize(size, bic)))


def minicpmv_generate(rng):
    """mtmd as the reference restricts the case to what its graph and its slicer do as MiniCPM-V does
    (tools/mtmd/mtmd-image.cpp, llava_uhd::get_slice_instructions): up to 9 slices (its
    max_slice_nums is hard-coded and no GGUF key carries another: graphdsl refuses to write one, so
    max_slices is not drawn), and a photo mtmd cuts as MiniCPM-V does (``mtmd_slices_as_minicpmv``:
    below a slice's area the two slicing policies differ by design, see ``best_grid``; mtmd rounds
    sizes in float32 and letterboxes, where graphdsl follows the model's float64 and stretches)."""
    d, h = width(rng, head_dims=(8, 16))
    p = pick(rng, (4, 7, 14))
    cfg = dict(image_size=p * pick(rng, (4, 6, 8)), patch_size=p, n_embd=d, n_head=h, n_ff=int(rng.integers(d, 3 * d)),
               n_layer=int(rng.integers(1, 4)), n_mm_embd=pick(rng, (128, 256)), n_query=pick(rng, (4, 9, 16)))
    # the resampler's heads are 128 wide (mtmd's d_head)
    s = cfg["image_size"]
    for _ in range(10000):
        (_, (ih, iw)), = _images(rng, 3 * s, 1)
        if mtmd_slices_as_minicpmv(iw, ih, s, p):
            return "minicpmv", cfg, {}, [("image", (ih, iw))]
    raise AssertionError(f"minicpmv: no photo size mtmd slices as MiniCPM-V does for {cfg}")


def _minicpmv_writer():
    from test_mtmd_minicpmv import write_minicpmv
    from graphdsl.models import minicpmv

    def block(c):
        fields = set(minicpmv.MiniCPMVConfig.__dataclass_fields__)
        return minicpmv.MiniCPMVVision(minicpmv.MiniCPMVConfig(**{k: v for k, v in c.config.items() if k in fields}))
    return _Writer(block, lambda c: c.config["n_mm_embd"], write_minicpmv)


def mobilevlm_generate(rng):
    """mtmd's LDP / LDPv2 graph hard-codes a 24 x 24 patch grid (tools/mtmd/models/llava.cpp:
    ``int n_patch = 24``; another grid aborts in a reshape), so the tower is 24 patches wide. The
    photo is square: mtmd resizes keeping the aspect ratio and then letterboxes
    (tools/mtmd/mtmd-image.cpp, fixed_size preprocessor, PAD_CEIL), where LLaVA's processor and
    graphdsl's "pad" mode pad to a square and then resize; the two agree only on square photos.
    No class token: mtmd keeps it in the wrong place (upstream #25814, pinned by
    tests/models/test_mtmd_mobilevlm.py::test_class_token_order_is_where_mtmd_differs)."""
    d, h = width(rng, head_dims=(8, 16))
    p = pick(rng, (2, 3, 4, 7, 14))
    cfg = dict(image_size=24 * p, patch_size=p, n_embd=d, n_head=h, n_ff=int(rng.integers(d, 3 * d)),
               n_layer=int(rng.integers(2, 5)), n_mm_embd=64, projector=pick(rng, ("ldp", "ldpv2")),
               class_token=False)  # feature layer -2
    (_, (ih, _)), = _images(rng, 3 * cfg["image_size"], 1)
    return "mobilevlm", cfg, {}, [("image", (ih, ih))]


def _mobilevlm_writer():
    from test_mtmd_mobilevlm import write_mobilevlm
    from graphdsl.models import mobilevlm

    def block(c):
        fields = set(mobilevlm.MobileVLMConfig.__dataclass_fields__)
        return mobilevlm.MobileVLMVision(mobilevlm.MobileVLMConfig(**{k: v for k, v in c.config.items() if k in fields}))
    return _Writer(block, lambda c: c.config["n_mm_embd"], write_mobilevlm)


# graphdsl runs exact f32, mtmd rounds through f16: the bound of tests/models/test_mtmd_minicpmv.py and
# tests/models/test_mtmd_mobilevlm.py (5e-3; their docstrings give the measurements), not HF's 1e-5
MTMD_BOUND = 5e-3
MINICPMV = Entry("minicpmv", minicpmv_generate, skip=mtmd_skip, bound=MTMD_BOUND,
                 custom=lambda c, w, neg: _mtmd_case(c, w, neg, _minicpmv_writer()))
MOBILEVLM = Entry("mobilevlm", mobilevlm_generate, skip=mtmd_skip, bound=MTMD_BOUND,
                  custom=lambda c, w, neg: _mtmd_case(c, w, neg, _mobilevlm_writer()))
