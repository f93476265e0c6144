"""``graphdsl preprocess image|audio|text``: what an encoder is fed, made by the library's own path.

Text: the token ids of the words given, by ``--tokenizer`` or the ``--text-model`` file's own.

Images, three ways, chosen by the options:

- ``--mode clip|siglip|pad`` (default clip): a plain resize, as HF's ``CLIPImageProcessor``
  (shortest edge + centre crop), ``SiglipImageProcessor`` (square) or ``LlavaImageProcessor``
  with ``do_pad`` (square canvas, then as clip), each with that processor's default mean/std;
  ``--size``, ``--crop``, ``--mean`` and ``--std`` change them.
- ``--mode ARCH`` (a registered vision arch): what ``graphdsl embed`` feeds that arch
  (``embed.prepare_images``: its tiles, thumbnails, masks), for a file holding the HF
  processor's defaults (``registry.ImagePreprocess.defaults``); ``--size`` sets the tower's
  image_size (as ``clip.vision.image_size`` would), ``--mean`` / ``--std`` its normalisation.
- ``--mmproj FILE``: the file's arch and settings, exactly as ``embed --mmproj FILE`` prepares
  them (byte-identical frames). With ``--mode clip|siglip|pad`` too: that resize with the file's
  size, mean and std.

Output (``-o``): a name ending in ``.npz`` gets, for each image I (in input order),
``pixel_values.I`` and every other field of the arch's item (``grid.I``, ``patch_mask.I``,
``aspect_ratio_id.I`` ...). Any other name gets one ``.npy`` array: the pixels of one image, or
of all of them stacked [N, ...]; refused where that would drop a field or the shapes differ.

Audio: without options Whisper's log-mel windows (``--n-mels``, default 80); ``--mode ARCH``
what embed feeds that audio arch at its HF feature extractor's defaults (80 mel bins;
``--n-mels`` changes them); ``--mmproj FILE`` what ``embed --mmproj FILE`` feeds
(``embed.prepare_audios``). A ``.npz`` gets ``input_features.I`` per clip (Whisper: windows
[k, n_mel, 3000], and ``n_valid.I``, the audio frames in each, without --mode / --mmproj); a
``.npy`` the Whisper windows of all clips one after another, or one clip's features.
"""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np

from ..fileio import atomic_open
from .common import need, progress, save


def _mode(args) -> str | None:
    """--mode, defaulting to the --mmproj file's arch (None) or else clip."""
    return args.mode if args.mode or args.mmproj else "clip"


def check_image_args(args) -> None:
    """Refuse options the chosen way does not use (a usage error: ValueError), before any work."""
    from ..models import registry
    mode = _mode(args)
    _refuse_other_kind(args, ("--n-mels", args.n_mels), ("--max-seconds", args.max_seconds))
    if mode is not None and mode not in registry.image_modes():
        raise ValueError(f"--mode {mode} is an audio mode; images take {', '.join(sorted(registry.image_modes()))}")
    given = [flag for flag, v in (("--size", args.size), ("--crop", args.crop), ("--mean", args.mean),
                                  ("--std", args.std), ("--max-out-pixels", args.max_out_pixels)) if v is not None]
    resize = mode in registry.resize_modes()
    if resize:
        unused = ["--crop"] if mode == "siglip" else []  # a square resize crops nothing
        unused += [f for f in ("--size", "--crop", "--mean", "--std") if args.mmproj]
        why = f"with --mode {mode}" + (" and --mmproj (the file gives size, mean and std)" if args.mmproj else "")
    else:
        unused = ["--crop", "--max-out-pixels"] + (["--size", "--mean", "--std"] if args.mmproj else [])
        arch = None if mode is None else registry.ARCHS[mode]
        if arch is not None and not args.mmproj and not arch.image.takes_size and args.size is not None:
            raise ValueError(f"--size: --mode {mode} sizes each image itself (its HF processor's min / max pixels)")
        why = (f"with {'--mmproj' if args.mmproj else f'--mode {mode}'}, which makes exactly the frames "
               "embed feeds (the resize modes clip, siglip and pad take them)")
    bad = [f for f in given if f in unused]
    if bad:
        raise ValueError(f"{', '.join(dict.fromkeys(bad))}: not used {why}")


def defaults_mmproj(arch, image_size: int | None = None, mean=None, std=None):
    """A ``models.Mmproj`` without weights for ``arch`` at its HF processor's defaults
    (``arch.image.defaults``, the arch's mean/std), for the arch's own pre-processing hooks."""
    from ..models import Mmproj
    fields = dict(arch.image.defaults)
    if image_size is not None:
        fields["image_size"] = image_size
    try:
        cfg = arch.config(**fields)
    except ValueError as e:
        raise ValueError(f"--mode {arch.name} at image_size {fields.get('image_size')}: {e}") from None
    vision = SimpleNamespace(image_mean=tuple(mean or arch.image.mean), image_std=tuple(std or arch.image.std))
    name = f"--mode {arch.name}"
    return Mmproj(name, SimpleNamespace(vision=vision, file=_settings_file(name, arch, image_mean=mean, image_std=std)),
                  arch.block(cfg), None, {}, {"image": arch})


def _settings_file(name: str, arch, **given):
    """A GGUF file without tensors holding the given processor settings under the keys the arch carries
    them as, so that its hooks read them as they read a converted checkpoint's (models.settings.read)."""
    from ..gguf_io.reader import GGUFFile
    keys = {s.path: s.carry for s in arch.settings if s.source == "processor" and s.carry}
    meta = {keys[k]: np.asarray(v, np.float32) for k, v in given.items() if v is not None and k in keys}
    return GGUFFile(name, 3, 32, 0, meta, {k: "arr[f32]" for k in meta}, {})


def _resize_config(args, pre, how):
    cap = {} if args.max_out_pixels is None else {"max_out_pixels": args.max_out_pixels}
    if args.mmproj:
        from ..gguf_io import read_gguf
        return pre.ImageConfig.from_mmproj(read_gguf(args.mmproj).metadata, mode=args.mode, **cap)
    size = 224 if args.size is None else args.size  # 0 never means "default": argparse refuses it
    crop = size if args.crop is None else args.crop
    return pre.ImageConfig(mode=how.mode, size=(size, size) if how.mode == "siglip" else size, crop_size=crop,
                           mean=tuple(args.mean or how.mean), std=tuple(args.std or how.std), **cap)


def image_items(args, progress=None) -> list:
    """One item per input image: pixels [3, H, W], or the arch's item (a dataclass of arrays)."""
    from .. import embed
    from .. import preprocess as pre
    from ..models import registry
    modes, mode = registry.resize_modes(), _mode(args)
    if mode in modes:
        return pre.preprocess_images(args.inputs, _resize_config(args, pre, modes[mode]), progress=progress)
    if args.mmproj:
        from ..models import from_gguf
        m = from_gguf(args.mmproj, check_finite=False)  # no weight is used: the pre-processing only
        if m.vision is None:
            raise ValueError(f"{args.mmproj}: no vision encoder")
        arch = m.archs["image"]
        if args.mode not in (None, arch.name):
            raise ValueError(f"--mode {args.mode}: {args.mmproj} holds a {arch.name} vision encoder")
    else:
        arch = registry.ARCHS[args.mode]
        m = defaults_mmproj(arch, args.size, args.mean, args.std)
    if arch.needs_text:  # slices with marker tokens of the text model between them (MiniCPM-V)
        raise ValueError(f"{arch.name}: embed feeds an image as slices with the text model's marker tokens between "
                         "them (graphdsl.models.minicpmv.image_items); preprocess does not write those")
    return embed.prepare_images(m, args.inputs, progress)


def item_arrays(item) -> dict[str, np.ndarray]:
    """An item's arrays by field name: ``pixel_values`` for plain pixels."""
    if isinstance(item, np.ndarray):
        return {"pixel_values": item}
    if dataclasses.is_dataclass(item):
        return {f.name: np.asarray(getattr(item, f.name)) for f in dataclasses.fields(item)}
    raise TypeError(f"cannot write a {type(item).__name__} item")  # a new arch's item type: say so


def describe(src, arrays: dict[str, np.ndarray], main: str = "pixel_values") -> str:
    px = arrays[main]
    rest = "".join(f", {k} {v.tolist() if v.size <= 4 else f'{v.dtype}{list(v.shape)}'}"
                   for k, v in arrays.items() if k != main)
    return f"{src}: {main} f32{list(px.shape)} min {px.min():.3f} max {px.max():.3f} mean {px.mean():.3f}{rest}"


def save_items(path: str, per: list[dict[str, np.ndarray]], main: str = "pixel_values", *,
               concat: bool = False, dropped: tuple[str, ...] = ()) -> str:
    """Write one {field: array} per input to ``path`` (the format in the module doc); returns what
    was written. ``concat``: a .npy joins the inputs' ``main`` arrays on axis 0 (Whisper windows)
    instead of stacking them; ``dropped``: fields a .npy leaves out on purpose (counts it prints)."""
    if path.lower().endswith(".npz"):
        arrays = {f"{k}.{i}": v for i, a in enumerate(per) for k, v in a.items()}
        with atomic_open(path) as fh:
            np.savez(fh, **arrays)
        return f"{len(arrays)} arrays ({', '.join(f'{k} {v.dtype}{list(v.shape)}' for k, v in arrays.items())})"
    extra = sorted({k for a in per for k in a} - {main, *dropped})
    if extra:
        raise ValueError(f"-o {path}: each input also gives {', '.join(extra)}, which one .npy array cannot hold; "
                         "name an .npz output")
    shapes = {a[main].shape[1:] if concat else a[main].shape for a in per}
    if len(shapes) > 1:
        raise ValueError(f"-o {path}: the inputs give different shapes {sorted(shapes)}, which one .npy array "
                         "cannot stack; name an .npz output")
    arrs = [a[main] for a in per]
    arr = arrs[0] if len(arrs) == 1 else np.concatenate(arrs) if concat else np.stack(arrs)
    with atomic_open(path) as fh:  # a file object: np.save given a name would append ".npy"
        np.save(fh, arr)
    return f"{arr.dtype}{list(arr.shape)}"


# -- audio ----------------------------------------------------------------------------------------------
def audio_modes() -> list[str]:
    """``preprocess audio --mode`` choices: each audio arch by name (without: Whisper's log-mel)."""
    from ..models import registry
    return [a.name for a in registry.ARCHS.values() if a.modality == "audio"]


def _refuse_other_kind(args, *given) -> None:
    bad = [flag for flag, v in given if v is not None]
    if bad:
        raise ValueError(f"{', '.join(bad)}: not used for {args.kind}")


def check_audio_args(args) -> None:
    _refuse_other_kind(args, ("--size", args.size), ("--crop", args.crop), ("--mean", args.mean),
                       ("--std", args.std), ("--max-out-pixels", args.max_out_pixels))
    if args.mode is not None and args.mode not in audio_modes():
        raise ValueError(f"--mode {args.mode} is an image mode; audio takes {', '.join(audio_modes())}")
    if args.mmproj and args.n_mels is not None:
        raise ValueError("--n-mels: not used with --mmproj (the file gives it)")


def audio_items(args, progress=None) -> list[dict[str, np.ndarray]]:
    """Per clip {"input_features": ...}: Whisper log-mel windows [k, n_mel, 3000] (with "n_valid",
    the frames of audio in each, without --mode / --mmproj), or what embed feeds the arch."""
    from .. import embed
    from ..models import registry
    seconds = {} if args.max_seconds is None else {"max_seconds": args.max_seconds}
    if not (args.mode or args.mmproj):
        from ..preprocess import preprocess_audio
        res = preprocess_audio(args.inputs, args.n_mels or 80, progress=progress, **seconds)
        return [{"input_features": np.stack(chunks), "n_valid": np.asarray(valid)} for chunks, valid in res]
    if args.mmproj:
        from ..models import from_gguf
        m = from_gguf(args.mmproj, check_finite=False)  # no weight is used: the pre-processing only
        if m.audio is None:
            raise ValueError(f"{args.mmproj}: no audio encoder")
        if args.mode not in (None, m.archs["audio"].name):
            raise ValueError(f"--mode {args.mode}: {args.mmproj} holds a {m.archs['audio'].name} audio encoder")
    else:  # the arch at its HF feature extractor's defaults (80 mel bins for both), --n-mels changes them
        from ..models import Mmproj
        arch = registry.ARCHS[args.mode]
        cfg = arch.config(**({} if args.n_mels is None else {"n_mel": args.n_mels}))
        m = Mmproj(f"--mode {arch.name}", SimpleNamespace(file=None), None, arch.block(cfg), {}, {"audio": arch})
    feats = embed.prepare_audios(m, args.inputs, args.max_seconds, progress)
    return [{"input_features": np.stack(f) if isinstance(f, list) else np.asarray(f)} for f in feats]


# -- the command --------------------------------------------------------------------------------------
def cmd_preprocess(args) -> int:
    need("graphdsl.preprocess")
    if args.kind == "text":
        ids = tokenizer(args).encode(" ".join(args.inputs))
        print(f"{len(ids)} tokens: {ids.tolist()}")
        if args.output:
            save(args.output, ids)
            print(f"wrote {args.output}: {ids.dtype}{list(ids.shape)}")
        return 0
    image = args.kind == "image"  # the frames / features embed feeds, or a plain resize / Whisper log-mel
    cb, close = progress("images" if image else "audio", len(args.inputs))
    try:
        per = [item_arrays(it) for it in image_items(args, progress=cb)] if image else audio_items(args, progress=cb)
    finally:
        close()
    main = "pixel_values" if image else "input_features"
    for src, arrays in zip(args.inputs, per):
        if "n_valid" in arrays:  # Whisper's windows
            x = arrays[main]
            print(f"{src}: {len(x)} window(s) of f32{list(x.shape[1:])}, valid frames {arrays['n_valid'].tolist()}")
        else:
            print(describe(src, arrays, main))
    if args.output:  # Whisper windows of several clips are joined (n_valid says where each one is)
        windows = not image and all(a[main].ndim == 3 for a in per)
        print(f"wrote {args.output}: " + save_items(args.output, per, main, concat=windows, dropped=("n_valid",)))
    return 0


def tokenizer(args):
    """--tokenizer's tokenizer.json, else the --text-model file's embedded one (or its BERT vocabulary)."""
    pre = need("graphdsl.preprocess")
    if getattr(args, "tokenizer", None):
        return pre.TextTokenizer.from_file(args.tokenizer)
    model = getattr(args, "text_model", None)
    if model:
        from ..gguf_io import load_text
        return need("graphdsl.models.text").tokenizer_of(load_text(model)[0])
    raise ValueError("text needs --tokenizer tokenizer.json (or --text-model FILE.gguf with an embedded tokenizer)")
