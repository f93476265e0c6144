"""``graphdsl preprocess image`` equals the HF image processor each mode names (issue 23, items 1
and 3), run as a user runs it (a subprocess), on photos and synthetic images of several sizes and
aspect ratios, at HF's defaults and at two other settings (sizes, mean/std) per mode.

Every mode ``registry.image_modes()`` offers is covered by looping over it: a mode without a row in
HF_REFS fails ``test_every_mode_has_a_reference``. The comparison is exact (max abs diff 0) with
HF's PIL processors; Phi-4's HF processor exists only on torchvision (tests/support/phi4_hf.py), where
the global image is within 1e-6 (torch's bicubic sums in another order, as
tests/models/test_preprocess_phi4.py measures) and the crops are exact; it skips without torchvision.
MiniCPM-V's processor is remote code, not in transformers: its mode is refused with a message.
Also: ``--mmproj`` writes byte for byte what ``embed_files`` feeds each vision arch, and options a
way does not use are usage errors. Audio: tests/cli/test_cli_preprocess_audio.py.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from cli_run import graphdsl
from PIL import Image

from graphdsl.models import registry
from graphdsl.preprocess.image import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

pytest.importorskip("transformers")
skdata = pytest.importorskip("skimage.data")

HALF = (0.5, 0.5, 0.5)
OTHER = {"mean": (0.1, 0.7, 0.35), "std": (0.9, 0.2, 0.45)}  # nobody's default: a lost setting shows


def _images() -> dict[str, Image.Image]:
    rng = np.random.default_rng(0)
    return {
        "coffee_400x600": Image.fromarray(skdata.coffee()),
        "chelsea_300x451": Image.fromarray(skdata.chelsea()),
        "astronaut_tall_512x160": Image.fromarray(np.ascontiguousarray(skdata.astronaut()[:, 170:330])),
        "camera_gray_96x140": Image.fromarray(skdata.camera()[100:196, 200:340]),  # mode L
        # RGB: in pad mode graphdsl composites alpha on the pad colour, HF on white (tests/models/test_preprocess_image.py)
        "noise_45x70": Image.fromarray(rng.integers(0, 256, (45, 70, 3), dtype=np.uint8)),
    }


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("img")
    out = {}
    for name, im in _images().items():
        im.save(d / f"{name}.png")
        out[name] = d / f"{name}.png"
    return out


def _sq(n):
    return {"height": n, "width": n}


def _norm(s):
    return {"image_mean": list(s.get("mean", ())), "image_std": list(s.get("std", ()))} if "mean" in s else {}


# -- HF's reference per mode: (images, setting) -> per image {field: array} as the npz holds them --
def _clip(ims, s):
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    kw = {"size": {"shortest_edge": s["size"]}, "crop_size": _sq(s.get("crop", s["size"]))} if "size" in s else {}
    p = CLIPImageProcessorPil(**kw, **_norm(s))
    return [{"pixel_values": p(im, return_tensors="np")["pixel_values"][0]} for im in ims]


def _siglip(ims, s):
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil
    p = SiglipImageProcessorPil(**({"size": _sq(s["size"])} if "size" in s else {}), **_norm(s))
    return [{"pixel_values": p(im, return_tensors="np")["pixel_values"][0]} for im in ims]


def _pad(ims, s):  # LLaVA's pad-to-square; MobileVLM's tower reads its pixels this way too
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil
    kw = {"size": {"shortest_edge": s["size"]}, "crop_size": _sq(s.get("crop", s["size"]))} if "size" in s else {}
    p = LlavaImageProcessorPil(do_pad=True, **kw, **_norm(s))
    return [{"pixel_values": p(im, return_tensors="np")["pixel_values"][0]} for im in ims]


def _idefics3(ims, s):
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
    n = s.get("size")
    kw = {"size": {"longest_edge": 4 * n}, "max_image_size": {"longest_edge": n}} if n else {}
    p = Idefics3ImageProcessorPil(**kw, **_norm(s))
    return [{"pixel_values": p([im], return_tensors="np")["pixel_values"][0]} for im in ims]


def _internvl(ims, s):  # as InternVLProcessor calls GotOcr2's: crop_to_patches=True
    from transformers import GotOcr2ImageProcessorPil
    p = GotOcr2ImageProcessorPil(**({"size": _sq(s["size"])} if "size" in s else {}), **_norm(s))
    return [{"pixel_values": p([im], crop_to_patches=True, return_tensors="np")["pixel_values"]} for im in ims]


def _llava_next(ims, s):
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
    n = s.get("size", 336)  # llava-hf's checkpoints (the class default 224 does not divide its pinpoints)
    p = LlavaNextImageProcessorPil(size={"shortest_edge": n}, crop_size=_sq(n), **_norm(s))
    outs = [p(im, return_tensors="np") for im in ims]
    return [{"pixel_values": o["pixel_values"][0], "image_size": o["image_sizes"][0]} for o in outs]


def _mllama(ims, s):
    from transformers.models.mllama.image_processing_pil_mllama import MllamaImageProcessorPil
    p = MllamaImageProcessorPil(**({"size": _sq(s["size"])} if "size" in s else {}), **_norm(s))
    outs = [p([[im]], return_tensors="np") for im in ims]
    return [{"pixel_values": o["pixel_values"][0, 0], "aspect_ratio_id": o["aspect_ratio_ids"][0, 0]} for o in outs]


def _pixtral(ims, s):
    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil
    p = PixtralImageProcessorPil(**({"size": {"longest_edge": s["size"]}} if "size" in s else {}), **_norm(s))
    out = []
    for im in ims:
        o = p(im, return_tensors="np")
        (h, w), = o["image_sizes"]
        out.append({"pixel_values": o["pixel_values"][0][:, :h, :w]})
    return out


def _qwen2vl(ims, s, patch_size=14):  # Qwen2.5-VL's processor is Qwen2-VL's; the npz's pixels, patchified as HF's
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    p = Qwen2VLImageProcessorPil(patch_size=patch_size, **_norm(s))
    return [{"patches": p(images=[im], return_tensors="np")["pixel_values"]} for im in ims]


def _qwen3vl(ims, s):  # Qwen3-VL's checkpoints configure Qwen2-VL's processor with patches of 16
    return _qwen2vl(ims, s, patch_size=16)


def _phi4(ims, s):
    from phi4_hf import hf_process
    if "mean" in s:
        pytest.skip("tests/phi4_hf.hf_process takes no mean / std")
    n = s.get("size", 448)
    outs = hf_process([(np.asarray(im.convert("RGB")), n, 14, 36) for im in ims])
    return [{"pixel_values": o["image_pixel_values"][0], "patch_mask": o["image_attention_mask"][0].astype(bool)}
            for o in outs]


def _refused(ims, s):
    return None


# mode -> (HF reference, [the two non-default settings]); the default setting ({}) runs for every mode
HF_REFS = {
    "clip": (_clip, [{"size": 64, "crop": 48, **OTHER}, {"size": 100}]),
    "siglip": (_siglip, [{"size": 64, **OTHER}, {"size": 90}]),
    "pad": (_pad, [{"size": 64, "crop": 48, **OTHER}, {"size": 100}]),
    "mobilevlm": (_pad, [{"size": 64, **OTHER}, {"size": 100}]),
    "idefics3": (_idefics3, [{"size": 32, **OTHER}, {"size": 48}]),
    "internvl": (_internvl, [{"size": 32, **OTHER}, {"size": 48}]),
    "llava_next": (_llava_next, [{"size": 112, **OTHER}, {"size": 168}]),
    "mllama": (_mllama, [{"size": 32, **OTHER}, {"size": 56}]),
    "pixtral": (_pixtral, [{"size": 64, **OTHER}, {"size": 100}]),
    "qwen2vl": (_qwen2vl, [OTHER, {"mean": (0.2, 0.2, 0.2), "std": (0.3, 0.4, 0.5)}]),
    "qwen2_5vl": (_qwen2vl, [OTHER, {"mean": (0.2, 0.2, 0.2), "std": (0.3, 0.4, 0.5)}]),
    "qwen3vl": (_qwen3vl, [OTHER, {"mean": (0.2, 0.2, 0.2), "std": (0.3, 0.4, 0.5)}]),
    "qwen2_5omni": (_qwen2vl, [OTHER, {"mean": (0.2, 0.2, 0.2), "std": (0.3, 0.4, 0.5)}]),  # Qwen2.5-VL's processor
    "phi4_vision": (_phi4, [{"size": 56}, {"size": 112}]),
    "minicpmv": (_refused, []),
}
CASES = [(mode, i) for mode in sorted(registry.image_modes()) for i in range(1 + len(HF_REFS.get(mode, (0, []))[1]))]


def test_every_mode_has_a_reference():
    assert sorted(registry.image_modes()) == sorted(HF_REFS), "a new preprocess --mode needs its HF reference here"


def _flags(s) -> list[str]:
    out = []
    for k in ("size", "crop"):
        if k in s:
            out += [f"--{k}", str(s[k])]
    for k in ("mean", "std"):
        if k in s:
            out += [f"--{k}", *map(str, s[k])]
    return out


def _npz(path) -> list[dict[str, np.ndarray]]:
    with np.load(path) as z:
        per: dict[int, dict] = {}
        for key in z.files:
            field, i = key.rsplit(".", 1)
            per.setdefault(int(i), {})[field] = z[key]
    return [per[i] for i in range(len(per))]


@pytest.mark.parametrize("mode,setting", CASES, ids=[f"{m}-{i}" for m, i in CASES])
def test_cli_mode_equals_hf(images, tmp_path, mode, setting):
    ref_fn, settings = HF_REFS[mode]
    s = ([{}] + settings)[setting]
    out = tmp_path / "px.npz"
    argv = ["preprocess", "image", *images.values(), "--mode", mode, *_flags(s), "-o", out]
    if ref_fn is _refused:
        import subprocess
        import sys
        r = subprocess.run([sys.executable, "-m", "graphdsl.cli", *map(str, argv)], capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 1 and "marker tokens" in r.stderr and not out.exists()
        return
    graphdsl(*argv)
    got = _npz(out)
    ref = ref_fn([Image.open(p) for p in images.values()], s)
    assert len(got) == len(ref) == len(images)
    for name, g, want in zip(images, got, ref):
        if "patches" in want:  # Qwen2-VL: HF gives patches; compare the same pixels in HF's layout
            from graphdsl.models.qwen2vl import Qwen2VLConfig, patchify
            g = {"patches": patchify(g["pixel_values"], Qwen2VLConfig(patch_size=16 if mode == "qwen3vl" else 14))[0]}
        for field, w in want.items():
            w = np.asarray(w)
            assert g[field].shape == w.shape, (name, field, g[field].shape, w.shape)
            if mode == "phi4_vision" and field == "pixel_values":  # torchvision's global image: see the doc
                assert np.abs(g[field][0] - w[0]).max() <= 1e-6, name
                assert np.array_equal(g[field][1:], w[1:]), name
                continue
            assert g[field].dtype == w.dtype or field != "pixel_values", (name, g[field].dtype, w.dtype)
            assert np.abs(g[field].astype(np.float64) - w).max() == 0.0, (name, field)


def test_negative_controls(images, tmp_path):
    """The comparison above tells a lost setting apart: the clip mode's old 0.5 mean/std (issue 23:
    1.15 off), and an arch's frames at a size whose mean/std were dropped."""
    out = tmp_path / "px.npz"
    graphdsl("preprocess", "image", *images.values(), "--mode", "clip", "-o", out)
    ims = [Image.open(p) for p in images.values()]
    old = _clip(ims, {"mean": HALF, "std": HALF})
    assert min(np.abs(g["pixel_values"] - w["pixel_values"]).max() for g, w in zip(_npz(out), old)) > 0.5
    graphdsl("preprocess", "image", *images.values(), "--mode", "mllama", *_flags({"size": 32, **OTHER}), "-o", out, "-f")
    lost = _mllama(ims, {"size": 32})
    assert min(np.abs(g["pixel_values"] - w["pixel_values"]).max() for g, w in zip(_npz(out), lost)) > 0.5


# -- --mmproj: byte-identical to what `graphdsl embed --mmproj` feeds the graph ------------------------
def _mmproj(tmp_path, arch, mean=None, std=None):
    from graphdsl.convert.writer import write_gguf
    from graphdsl.gguf_io import MMPROJ_ARCH
    from graphdsl.models.common import declared_weights
    cfg = arch.examples[0]
    if getattr(cfg, "n_frames", 3000) != 3000:  # Whisper's example is shorter than its 30 s windows
        cfg = dataclasses.replace(cfg, n_ctx=1500)
    rng = np.random.default_rng(0)
    tensors = {k: ((rng.standard_normal(n.shape) * 0.1).astype(np.float32), "f32")
               for k, n in declared_weights(arch.block(cfg)).items()}
    path = tmp_path / f"{arch.name}.gguf"
    keys = arch.config_to_gguf(cfg, mean, std) if arch.modality == "image" else arch.config_to_gguf(cfg)
    write_gguf(str(path), MMPROJ_ARCH, [("general.name", arch.name), *keys], tensors)
    return path


VISION = [a for a in registry.ARCHS.values() if a.modality == "image" and not a.needs_text]


@pytest.mark.parametrize("arch", VISION, ids=lambda a: a.name)
def test_mmproj_frames_are_the_ones_embed_feeds(tmp_path, arch, monkeypatch):
    """``preprocess image --mmproj F -o x.npz`` (a subprocess) holds, byte for byte, the items
    ``embed_files(F, images=...)`` hands its Embedder, and those items give the same graph inputs;
    the file's mean / std (nobody's default) are used."""
    from graphdsl import embed
    rng = np.random.default_rng(1)
    paths = []
    for i, (h, w) in enumerate([(120, 200), (150, 60), (50, 50)]):
        paths.append(tmp_path / f"im{i}.png")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    gguf = _mmproj(tmp_path, arch, OTHER["mean"], OTHER["std"])
    graphdsl("preprocess", "image", *paths, "--mmproj", gguf, "-o", tmp_path / "x.npz")
    got = _npz(tmp_path / "x.npz")

    seen = []
    real = embed.batch._build

    def spy(items, *a, **kw):
        res = real(items, *a, **kw)
        seen.append((list(items), res[1]))
        return res
    monkeypatch.setattr(embed.batch, "_build", spy)
    embed.embed_files(gguf, images=paths, backend="cpu", n_threads=2)
    (items, feeds), = seen
    assert len(items) == len(got) == len(paths)
    rebuilt = []
    for (kind, data), g in zip(items, got):
        assert kind == "image"
        want = {"pixel_values": data} if isinstance(data, np.ndarray) else {
            f: np.asarray(getattr(data, f)) for f in data.__dataclass_fields__}
        assert sorted(g) == sorted(want)
        for f, w in want.items():
            assert g[f].dtype == w.dtype and g[f].shape == w.shape and g[f].tobytes() == w.tobytes(), f
        rebuilt.append(("image", g["pixel_values"] if isinstance(data, np.ndarray) else
                        type(data)(**{f: (tuple(v.tolist()) if v.ndim == 1 and v.dtype.kind == "i" else
                                          v.item() if v.ndim == 0 else v) for f, v in g.items()})))
    again = real(rebuilt, None, {"image": embed.FileEmbedder(gguf, backend="cpu").m.media["image"]})[1]
    assert sorted(again) == sorted(feeds)
    for k in feeds:
        assert again[k].dtype == feeds[k].dtype and again[k].tobytes() == feeds[k].tobytes(), k


# -- options a way does not use are usage errors (status 2) naming the flag, before any work --------
USAGE = [
    (["image", "--mode", "siglip", "--crop", "32"], "--crop"),
    (["image", "--mode", "idefics3", "--crop", "32"], "--crop"),
    (["image", "--mode", "qwen2vl", "--size", "64"], "--size"),
    (["image", "--mode", "pixtral", "--max-out-pixels", "100"], "--max-out-pixels"),
    (["image", "--mmproj", "m.gguf", "--mean", "0", "0", "0"], "--mean"),
    (["image", "--mode", "clip", "--mean", "nan", "0", "0"], "--mean"),
    (["image", "--mode", "phi4_audio"], "audio mode"),
    (["image", "--n-mels", "80"], "--n-mels"),
    (["audio", "--mode", "clip"], "image mode"),
    (["audio", "--size", "3"], "--size"),
    (["audio", "--mmproj", "m.gguf", "--n-mels", "80"], "--n-mels"),
]


@pytest.mark.parametrize("argv,flag", USAGE, ids=[" ".join(a) for a, _ in USAGE])
def test_unused_options_are_usage_errors(tmp_path, argv, flag):
    import subprocess
    import sys
    kind, *rest = argv
    r = subprocess.run([sys.executable, "-m", "graphdsl.cli", "preprocess", kind, "in.x", *rest], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and flag in r.stderr.splitlines()[-1], r.stderr


def test_npy_refuses_to_drop_fields(images, tmp_path):
    """An arch's item has more than pixels: a .npy output would lose them, so it is refused."""
    import subprocess
    import sys
    out = tmp_path / "px.npy"
    r = subprocess.run([sys.executable, "-m", "graphdsl.cli", "preprocess", "image", list(images.values())[3],
                        "--mode", "mllama", "--size", "32", "-o", out], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "aspect_ratio" in r.stderr and ".npz" in r.stderr and not out.exists()
