"""Image pre-processing against HF's PIL image processors (CLIP, SigLIP, LLaVA pad-to-square).

Every comparison is exact (max abs difference 0.0): HF resizes the uint8 image with Pillow and
rescales/normalizes in float64 -> float32 afterwards, and graphdsl does the same in the same
dtypes. Deliberate departures from HF, tested against their own rule instead:
  * 16-bit modes (I;16, I) are scaled to 8 bits; HF (via Image.convert) clips them at 255.
  * in pad mode, transparent pixels are composited on the pad colour; HF's LLaVA uses white.
"""

import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from graphdsl.preprocess import batch
from graphdsl.preprocess.image import ImageConfig, load_image, preprocess_image

skdata = pytest.importorskip("skimage.data")


def _hf_processors():
    pytest.importorskip("transformers")
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    sq = lambda n: {"height": n, "width": n}
    return {
        "clip224": CLIPImageProcessorPil(),
        "clip336": CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size=sq(336)),
        "siglip224": SiglipImageProcessorPil(),
        "siglip384": SiglipImageProcessorPil(size=sq(384)),
        "llava336": LlavaImageProcessorPil(do_pad=True, size={"shortest_edge": 336}, crop_size=sq(336)),
    }


@pytest.fixture(scope="module")
def hf():
    return _hf_processors()


def _rand(h, w, c=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, c) if c else (h, w), dtype=np.uint8)


IMAGES = {
    "astronaut": lambda: skdata.astronaut(),
    "chelsea": lambda: skdata.chelsea(),
    "coffee": lambda: skdata.coffee(),
    "1x1": lambda: _rand(1, 1),
    "7x300": lambda: _rand(7, 300),  # height x width
    "300x7": lambda: _rand(300, 7),
}


def _check(proc, cfg, img):
    ref = proc(img, return_tensors="np").pixel_values[0]
    ours = preprocess_image(img, cfg)
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    assert ours.shape == cfg.out_shape()
    assert np.abs(ours - ref).max() == 0.0


@pytest.mark.parametrize("which", ["clip224", "clip336", "siglip224", "siglip384", "llava336"])
@pytest.mark.parametrize("name", list(IMAGES))
def test_parity_with_hf(hf, which, name):
    proc = hf[which]
    cfg = ImageConfig.from_hf(proc.to_dict())
    assert cfg.mode == {"c": "clip", "s": "siglip", "l": "pad"}[which[0]]
    _check(proc, cfg, Image.fromarray(IMAGES[name]()))


def test_parity_4000x3000(hf):
    img = Image.fromarray(_rand(3000, 4000, seed=3))
    for which in ("clip224", "siglip384"):
        _check(hf[which], ImageConfig.from_hf(hf[which].to_dict()), img)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF"])
def test_file_formats(hf, tmp_path, fmt):
    path = tmp_path / f"a.{fmt.lower()}"
    Image.fromarray(skdata.chelsea()).save(path, format=fmt)
    cfg = ImageConfig.from_hf(hf["clip224"].to_dict())
    with Image.open(path) as ref_img:
        ref = hf["clip224"](ref_img, return_tensors="np").pixel_values[0]
    assert np.abs(preprocess_image(path, cfg) - ref).max() == 0.0
    assert np.abs(preprocess_image(path.read_bytes(), cfg) - ref).max() == 0.0


def _mode_image(mode):
    rgb = Image.fromarray(skdata.chelsea()[::4, ::4])
    if mode == "RGBA":
        return Image.fromarray(np.dstack([np.asarray(rgb), _rand(*rgb.size[::-1], c=0)]))
    if mode == "LA":
        return _mode_image("RGBA").convert("LA")
    if mode == "P+transparency":
        p = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        p.info["transparency"] = 3
        return p
    return rgb.convert(mode)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P+transparency", "P", "L", "1", "CMYK", "YCbCr"])
def test_colour_modes_match_hf(hf, mode):
    img = _mode_image(mode)
    for which in ("clip224", "siglip224"):  # HF composites alpha on white, our default there
        _check(hf[which], ImageConfig.from_hf(hf[which].to_dict()), img)


def test_alpha_composited_on_pad_color():
    a = np.zeros((4, 4, 4), np.uint8)  # fully transparent black
    cfg = ImageConfig(mode="siglip", size=4, pad_color=(10, 20, 30), rescale_factor=1.0, mean=(0, 0, 0), std=(1, 1, 1))
    out = preprocess_image(a, cfg)
    assert np.array_equal(out[:, 0, 0], [10, 20, 30])
    assert ImageConfig(mode="pad", size=8).pad_color == (122, 116, 104)  # int(CLIP mean * 255)


def test_sixteen_bit_is_scaled_not_clipped():
    ramp = np.arange(64, dtype=np.uint16).reshape(8, 8) * 1040  # 0 .. 65520
    img = Image.fromarray(ramp)
    assert img.mode == "I;16"
    got = np.asarray(load_image(img))
    want = np.rint(ramp * (255 / 65535)).astype(np.uint8)
    assert np.array_equal(got[..., 0], want) and np.array_equal(got[..., 2], want)
    got32 = np.asarray(load_image(Image.fromarray(ramp.astype(np.int32))))
    assert np.array_equal(got32[..., 1], want)


def test_exif_orientation_applied(tmp_path):
    a = _rand(20, 40, seed=5)
    img = Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "o.png"
    img.save(path, exif=exif)
    got = np.asarray(load_image(path))
    assert np.array_equal(got, np.rot90(a, k=-1))


def _png_header_only(width, height):
    """A PNG that claims width x height (1-bit grey) but holds one row: a bomb's header."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (1 + (width + 7) // 8))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_decompression_bomb_refused():
    cfg = ImageConfig()
    with pytest.raises(ValueError, match="decompression bomb"):
        preprocess_image(_png_header_only(100_000, 100_000), cfg)  # 1e10 pixels: Pillow's own error
    with pytest.raises(ValueError, match="exceeds max_pixels"):
        preprocess_image(_png_header_only(9000, 8000), cfg)  # 72 M > 64 M default
    with pytest.raises(ValueError, match="exceeds max_pixels"):
        preprocess_image(skdata.chelsea(), ImageConfig(max_pixels=1000))


@pytest.mark.parametrize("mode", ["clip", "pad"])
def test_extreme_aspect_ratio_refused(mode):
    # 300 k pixels pass max_pixels, but HF's order (resize the shortest edge, or pad to a square
    # first) would build a 224 x 67 M image or a 300000^2 canvas.
    with pytest.raises(ValueError, match="aspect ratio too extreme"):
        preprocess_image(np.zeros((1, 300_000, 3), np.uint8), ImageConfig(mode=mode, size=224))


def test_truncated_and_corrupt_refused():
    buf = io.BytesIO()
    Image.fromarray(skdata.astronaut()).save(buf, format="PNG")
    data = buf.getvalue()
    buf = io.BytesIO()
    Image.fromarray(skdata.astronaut()).save(buf, format="JPEG")
    jpeg = buf.getvalue()
    cfg = ImageConfig()
    for bad in (data[: len(data) // 2], jpeg[: len(jpeg) // 3]):
        with pytest.raises(ValueError, match="truncated|corrupt"):
            preprocess_image(bad, cfg)
    for bad in (b"", b"not an image at all", data[:40]):
        with pytest.raises(ValueError, match="readable|truncated|corrupt"):
            preprocess_image(bad, cfg)


def test_config_forms():
    legacy = ImageConfig.from_hf({"size": 224, "crop_size": 224, "image_processor_type": "CLIPFeatureExtractor"})
    assert legacy == ImageConfig(mode="clip", size=224, crop_size=(224, 224))
    nocrop = ImageConfig.from_hf({"size": {"shortest_edge": 32}, "do_center_crop": False})
    assert preprocess_image(_rand(40, 80), nocrop).shape == (3, 32, 64) and nocrop.out_shape() is None
    raw = ImageConfig.from_hf({"size": {"height": 5, "width": 6}, "do_rescale": False, "do_normalize": False})
    assert raw.mode == "siglip" and raw.out_shape() == (3, 5, 6)
    px = preprocess_image(np.full((9, 9, 3), 200, np.uint8), raw)
    assert np.all(px == 200.0)
    mm = ImageConfig.from_mmproj(
        {"clip.vision.image_size": 336, "clip.vision.image_mean": [0.5] * 3, "clip.vision.image_std": [0.5] * 3}
    )
    assert mm.size == 336 and mm.crop_size == (336, 336) and mm.mean == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="mode"):
        ImageConfig(mode="bogus")
    with pytest.raises(ValueError, match="positive"):
        ImageConfig(mode="siglip", size=(0, 4))
    with pytest.raises(ValueError, match=r"3 finite stds >= 0\.001"):
        ImageConfig(std=(0.5, 0.0, 0.5))
    with pytest.raises(ValueError, match="unsupported size"):
        ImageConfig.from_hf({"size": {"longest_edge": 512}})


def test_parallel_equals_serial(hf):
    cfg = ImageConfig.from_hf(hf["clip224"].to_dict())
    srcs = [IMAGES[k]() for k in IMAGES] * 2
    seen = []
    par = batch.preprocess_images(srcs, cfg, max_workers=4, progress=lambda d, t: seen.append(d))
    ser = [preprocess_image(s, cfg) for s in srcs]
    assert seen == list(range(len(srcs) + 1))
    assert all(np.array_equal(p, s) for p, s in zip(par, ser))
    assert batch.stack_images(par).shape == (len(srcs), 3, 224, 224)


def test_parallel_error_names_item():
    with pytest.raises(ValueError, match="readable") as ei:
        batch.preprocess_images([_rand(8, 8), b"junk"], ImageConfig(), max_workers=2)
    notes = getattr(ei.value, "__notes__", ["while pre-processing item 1"])
    assert "item 1" in notes[-1]


@pytest.mark.parametrize("std", [(0.5, 1e-40, 0.5), (0.5, float("nan"), 0.5), (float("inf"),) * 3, (0.5, 5e-4, 0.5)])
def test_denormal_zero_or_nonfinite_std_is_refused(std):
    """A std that would turn pixels into inf or NaN (or far outside any trained range) is refused."""
    with pytest.raises(ValueError, match=r"\[ImageConfig\] need 3 finite means and 3 finite stds >= 0\.001"):
        ImageConfig(std=std)
    with pytest.raises(ValueError, match="finite means"):
        ImageConfig(mean=(0.5, float("nan"), 0.5))
    assert ImageConfig(std=(1e-3, 1.0, 80.0)).std == (1e-3, 1.0, 80.0)  # the bound itself and 0..255 stds pass


@pytest.mark.parametrize("kw", [dict(mode="siglip", size=(0, 224)), dict(mode="siglip", size=-3),
                                dict(mode="clip", size=0), dict(mode="clip", size=-1), dict(mode="pad", size=224, crop_size=0),
                                dict(mode="clip", size=224, crop_size=(224, -1))])
def test_sizes_must_be_positive(kw):
    with pytest.raises(ValueError, match=r"\[ImageConfig\] sizes must be positive"):
        ImageConfig(**kw)


def test_target_size_is_capped_before_any_work():
    """`--size 20000` took 60 s and ~15 GB; the config now refuses it at once and names the way out."""
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"size=\(20000, 20000\) asks for 400000000 output pixels, more than "
                                         r"max_out_pixels=16777216 \(pass a larger max_out_pixels"):
        ImageConfig(mode="siglip", size=20000)
    for kw in (dict(mode="clip", size=20000, crop_size=224), dict(mode="pad", size=224, crop_size=(5000, 5000)),
               dict(mode="clip", size=5000, crop_size=None)):
        with pytest.raises(ValueError, match="max_out_pixels"):
            ImageConfig(**kw)
    assert time.perf_counter() - t0 < 1.0
    assert ImageConfig(mode="siglip", size=4096).out_shape() == (3, 4096, 4096)  # the cap itself is allowed
    big = ImageConfig(mode="siglip", size=(16, 5000), max_out_pixels=16 * 5000)  # the option raises the cap
    assert preprocess_image(_rand(20, 30), big).shape == (3, 16, 5000)
    with pytest.raises(ValueError, match="max_out_pixels"):
        ImageConfig(mode="siglip", size=(16, 5000), max_out_pixels=16 * 5000 - 1)
