"""The sweep's machinery: cases, HF folders, the ``graphdsl`` commands and the comparison.

An arch's cases are run as one batch (``run_arch``): the HF references are computed in this
process one after another (torch and transformers are imported once), while ``graphdsl convert``
and ``graphdsl embed`` run as subprocesses on a small thread pool, so the CLI of case i overlaps
the HF model of case i + 1.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import traceback
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[3]
BOUND = 1e-5  # rel L2 in f32 against HF, the bound of every model test
# the perturbed-weight control scales one block output matrix by this (1.05 gave 6e-5 on some towers)
PERTURB = 1.2


@dataclass(frozen=True)
class Case:
    """One config of one arch. ``config``: HF config kwargs (nested dicts for sub-configs);
    ``processor``: the HF processor's kwargs; ``media``: (kind, spec) pairs in prompt order,
    kind "image" (spec (h, w)), "audio" (spec seconds) or "text" (spec n_words)."""

    arch: str
    index: int
    config: dict
    processor: dict
    media: tuple
    family: str = ""  # which HF class the entry builds, when it has several (llava / clip_vision)

    @property
    def seed(self) -> int:
        return zlib.crc32(f"{self.arch}:{self.index}".encode()) & 0x7FFFFFFF

    @property
    def command(self) -> str:
        return f"cd {ROOT} && .venv/bin/python tests/support/sweep_run.py {self.arch} {self.index}"

    def describe(self) -> str:
        return json.dumps({"family": self.family, "config": self.config, "processor": self.processor,
                           "media": self.media}, default=str)


@dataclass(frozen=True)
class Entry:
    """An arch's sweep: ``generate(rng) -> (family, config, processor, media)``; ``model(case)``
    the HF model with random weights (``hf_refs.randomize``), ``processor(case)`` the HF processor (or None);
    ``reference(model, processor,
    case, paths) -> rows`` (what the decoder reads for the media at ``paths``, in order).

    ``embed_args(gguf, paths, work) -> argv`` but ``-o`` (default: ``--mmproj GGUF`` and each medium
    as --image / --audio); ``read(work) -> rows`` reads embed's output (default: the .npy);
    ``extra_files(case, folder)`` writes what else the folder needs (a tokenizer_config.json);
    ``wrong(case) -> processor kwargs``: a wrong processor setting for the negative control
    (HF's reference with it must miss graphdsl's rows); ``skip() -> reason or ""``.
    ``prefetch([(case, paths, negative)])``: called once before the references, for an entry
    whose reference is cheaper for all cases at once (a processor run in another Python).
    ``custom(case, work) -> (got, ref, ref_wrong)``: archs without an HF folder (mtmd as reference)
    do everything themselves.
    """

    arch: str
    generate: Callable[[np.random.Generator], tuple]
    model: Callable[[Case], object] | None = None
    reference: Callable[..., np.ndarray] | None = None
    processor: Callable[[Case], object] = lambda c: None
    wrong: Callable[[Case], dict] | None = None
    embed_args: Callable[[list, Path], list] | None = None
    read: Callable[[Path], np.ndarray] | None = None
    extra_files: Callable[[Case, Path], None] | None = None
    skip: Callable[[], str] = lambda: ""
    prefetch: Callable[[list], None] | None = None
    custom: Callable[[Case, Path], tuple] | None = None
    bound: float = BOUND  # rel L2 the case must meet (and each negative control miss); mtmd's entries: its f16 bound


class HFRefuses(Exception):
    """HF's processor raised ValueError on the case's input: no reference exists for it."""


@dataclass
class Result:
    case: Case
    err: float | None = None  # rel L2 of embed's rows vs HF's
    shape: tuple | None = None  # (got, ref) shapes when they differ
    error: str = ""  # a step that failed: its stderr / traceback
    invalid: str = ""  # HF itself refuses the case's input (its processor raised ValueError): not run
    negatives: dict = field(default_factory=dict)  # control name -> rel L2 (must exceed bound)
    bound: float = BOUND  # the entry's

    def ok(self) -> bool:
        if self.invalid:
            return True
        return not self.error and self.shape is None and self.err is not None and self.err <= self.bound

    def report(self) -> str:
        c = self.case
        what = (f"not valid for HF: {self.invalid}" if self.invalid else f"error: {self.error}" if self.error else
                f"rows {self.shape[0]} vs HF {self.shape[1]}" if self.shape else f"rel L2 {self.err:.3e}")
        neg = "".join(f"\n  negative control {k}: rel L2 {v:.3e}" for k, v in self.negatives.items())
        return f"{c.arch}#{c.index}: {what}{neg}\n  config: {c.describe()}\n  reproduce: {c.command}"


def case(entry: Entry, index: int) -> Case:
    """Case ``index`` of ``entry``: a function of (arch, index) only."""
    c = Case(entry.arch, index, {}, {}, ())
    family, config, processor, media = entry.generate(np.random.default_rng(c.seed))
    return Case(entry.arch, index, config, processor, tuple(media), family)


def rel_err(a, b) -> float:
    from hf_refs import rel_err as hf_rel_err
    return hf_rel_err(a, b)


def write_media(c: Case, work: Path) -> list[Path]:
    """Random RGB PNGs and 16 kHz int16 WAVs (seeded by the case) for ``c.media``."""
    from PIL import Image
    rng = np.random.default_rng(c.seed + 1)
    paths = []
    for i, (kind, spec) in enumerate(c.media):
        if kind == "image":
            p = work / f"m{i}.png"
            Image.fromarray(rng.integers(0, 256, (*spec, 3), dtype=np.uint8)).save(p)
        elif kind == "audio":
            import soundfile
            p = work / f"m{i}.wav"
            t = np.arange(int(spec * 16000)) / 16000
            pcm = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 2000) * t) + 0.05 * rng.standard_normal(t.size)
            soundfile.write(p, (pcm * 32767).astype(np.int16), 16000, subtype="PCM_16")
        else:  # text: the entry writes its prompt itself
            continue
        paths.append(p)
    return paths


def cli(*argv, timeout: float = 600) -> None:
    r = subprocess.run([sys.executable, "-m", "graphdsl.cli", *map(str, argv)], capture_output=True, text=True,
                       timeout=timeout, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"graphdsl {argv[0]} exited {r.returncode}: {r.stderr.strip()[-1500:]}")


def _media_args(paths: list[Path]) -> list:
    return [a for p in paths for a in (("--audio" if p.suffix == ".wav" else "--image"), p)]


def perturb_gguf(src: Path, dst: Path, prefix: str = "") -> str:
    """A copy of ``src`` with one 2-D f32 weight named ``prefix``... scaled by PERTURB; returns its
    name. A block's output projection first (ffn_down, attn_out): scaling attn_q only sharpens the
    softmax a little, which small random towers can hide below the bound."""
    import gguf
    shutil.copyfile(src, dst)
    r = gguf.GGUFReader(dst, "r+")
    block = prefix != "token_embd"  # a text file's embedding stage reads no block
    cands = [t for t in r.tensors if t.name.startswith(prefix) and ("blk." in t.name or not block)
             and t.name.endswith(".weight") and len(t.shape) == 2 and t.data.dtype == np.float32]
    for t in sorted(cands, key=lambda t: [k in t.name for k in ("ffn_down", "attn_out")], reverse=True):
        t.data[...] *= np.float32(PERTURB)
        r.data.flush()
        return t.name
    raise AssertionError(f"{src}: no 2-D f32 weight named {prefix}... to perturb")


def _embed(entry: Entry, gguf: Path, paths: list[Path], work: Path, tag: str) -> np.ndarray:
    out = work / f"e{tag}.npy"
    args = entry.embed_args(gguf, paths, work) if entry.embed_args else ["--mmproj", gguf, *_media_args(paths)]
    cli("embed", *args, "-o", out, "--backend", "cpu", "--threads", "1", "-f")
    if entry.read:
        return entry.read(work)
    layers = out.with_suffix(".per_layer.npy")  # deepstack features: mtmd's [embedding | layer 0 | ...] rows
    rows = np.load(out)
    return np.concatenate([rows, *np.load(layers)], axis=1) if layers.exists() else rows


def _cli_part(entry: Entry, res: Result, folder: Path, paths: list[Path], work: Path, ref, ref_wrong,
              negative: bool) -> Result:
    """convert + embed (+ the perturbed-weight control), compared with ``ref``; runs on the pool."""
    try:
        gguf = work / "m.gguf"
        cli("convert", folder, "-o", gguf, "-f")
        got = _embed(entry, gguf, paths, work, "")
        _compare(res, got, ref)
        if negative and res.ok():
            # a weight of the tower the media go through (a Phi-4 file holds both)
            prefix = {"image": "v.", "audio": "a.", "text": "token_embd"}[res.case.media[0][0]]
            name = perturb_gguf(gguf, work / "bad.gguf", prefix)
            res.negatives[f"weight {name} x{PERTURB}"] = rel_err(_embed(entry, work / "bad.gguf", paths, work, "b"), ref)
            if ref_wrong is not None:
                res.negatives["wrong processor"] = _safe_err(got, ref_wrong)
    except Exception as e:  # noqa: BLE001 - every failure is a result to report
        res.error = f"{type(e).__name__}: {e}"
    return res


def _safe_err(got, ref) -> float:
    return float("inf") if np.shape(got) != np.shape(ref) else rel_err(got, ref)


def _compare(res: Result, got, ref) -> None:
    got, ref = np.asarray(got), np.asarray(ref)
    if got.shape != ref.shape:
        res.shape = (got.shape, ref.shape)
    else:
        res.err = rel_err(got, ref)


def _prepare(entry: Entry, c: Case, work: Path, negative: bool):
    """The HF side of a case: folder, media files, reference (and the wrong-processor one)."""
    import torch
    from transformers.utils import logging
    logging.disable_progress_bar()
    torch.manual_seed(c.seed)
    model, proc = entry.model(c), entry.processor(c)
    folder = work / "hf"
    model.save_pretrained(folder)
    if proc is not None:
        proc.save_pretrained(folder)
    if entry.extra_files:
        entry.extra_files(c, folder)
    paths = write_media(c, work)
    ref = entry.reference(model, proc, c, paths)
    ref_wrong = None
    if negative and entry.wrong is not None:
        bad = Case(c.arch, c.index, c.config, {**c.processor, **entry.wrong(c)}, c.media, c.family)
        ref_wrong = entry.reference(model, entry.processor(bad), bad, paths)
    return folder, paths, ref, ref_wrong


def run_arch(entry: Entry, indices, root: Path, *, negatives=(0, 1), workers: int = 2) -> list[Result]:
    """Every case of ``indices`` (in ``root``/<arch>-<i>); the negative controls on the cases of
    ``negatives`` that meet the bound (a control shows a passing comparison is not vacuous)."""
    results, futures = [], []
    cases = [case(entry, i) for i in indices]
    for c in cases:
        (root / f"{entry.arch}-{c.index}").mkdir(parents=True, exist_ok=True)
    if entry.prefetch is not None:
        entry.prefetch([(c, write_media(c, root / f"{entry.arch}-{c.index}"), c.index in negatives) for c in cases])
    with ThreadPoolExecutor(workers) as pool:
        for c in cases:
            work = root / f"{entry.arch}-{c.index}"
            res = Result(c, bound=entry.bound)
            neg = c.index in negatives
            if entry.custom is not None:
                futures.append(pool.submit(_custom, entry, res, work, neg))
                continue
            try:
                prep = _prepare(entry, c, work, neg)
            except HFRefuses as e:
                res.invalid = str(e)
                results.append(res)
                continue
            except Exception:  # noqa: BLE001
                res.error = "HF reference: " + traceback.format_exc(limit=3)[-1500:]
                results.append(res)
                continue
            futures.append(pool.submit(_cli_part, entry, res, *prep[:2], work, *prep[2:], neg))
        results += [f.result() for f in futures]
    return sorted(results, key=lambda r: r.case.index)


def _custom(entry: Entry, res: Result, work: Path, negative: bool) -> Result:
    try:
        got, ref, ref_wrong, bad = entry.custom(res.case, work, negative)
        _compare(res, got, ref)
        if negative and res.ok():
            res.negatives["perturbed weight"] = _safe_err(bad, ref)
            if ref_wrong is not None:
                res.negatives["wrong processor"] = _safe_err(got, ref_wrong)
    except Exception as e:  # noqa: BLE001
        res.error = f"{type(e).__name__}: {e}"
    return res


def wanted(arch: str) -> bool:
    only = os.environ.get("GRAPHDSL_SWEEP_ONLY", "")
    return not only or arch in only.split(",")


def pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def width(rng: np.random.Generator, heads=(1, 2, 3, 4), head_dims=(4, 6, 8, 10, 12)) -> tuple[int, int]:
    """(hidden size, heads): an odd head count now and then, head dims not powers of two."""
    h = pick(rng, heads)
    return h * pick(rng, head_dims), h


def ffn(rng: np.random.Generator, d: int) -> int:
    """The FFN width: equal to the width one time in three (the case a reader can confuse)."""
    return d if rng.random() < 1 / 3 else int(rng.integers(d // 2 + 1, 3 * d))


def eps(rng: np.random.Generator) -> float:
    return pick(rng, (1e-6, 1e-5, 1e-3, 1e-2))


def mean_std(rng: np.random.Generator) -> dict:
    return {"image_mean": [round(float(x), 4) for x in rng.uniform(0.2, 0.7, 3)],
            "image_std": [round(float(x), 4) for x in rng.uniform(0.15, 0.6, 3)]}
