"""From files: ``embed_files`` (the function behind ``graphdsl embed``) and ``FileEmbedder`` (its
models loaded once), with the pre-processing each arch declares (``Arch.prepare``) and the prompt
split at its media markers."""
from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..models.registry import Prepared
from ..options import RunOptions
from .batch import cross_kinds
from .embedder import Embedder
from .result import Embeddings


def embed_files(mmproj: str | os.PathLike | None, text_model: str | os.PathLike | None = None, images: Sequence[Any] = (),
                audios: Sequence[Any] = (), prompt: str | None = None, tokens: Sequence[int | str] | str | None = None,
                *, options: RunOptions | None = None, backend: str | None = None,
                markers: Sequence[str] = ("<image>", "<audio>"), tokenizer: Any = None, precision: str | None = None,
                n_threads: int | None = None, check_finite: bool | None = None, max_seconds: float | None = None,
                progress: Callable[[str, int, int], None] | None = None) -> Embeddings:
    """Embed images, audio and a prompt read from files: the function behind ``graphdsl embed``.

    The mmproj GGUF gives the encoders (``models.from_gguf``) and the pre-processing: images are
    resized, cropped and normalised as its tower wants (``Mmproj.image_config``: clip.vision.
    image_size / image_mean / image_std, CLIP or SigLIP resizing by projector), audio becomes
    Whisper log-mel windows of 30 s with the file's n_mel (long clips: several windows). The text
    GGUF gives the token table (``models.text.from_gguf``) and the tokenizer.

    The sequence: ``prompt`` (text, tokenized) or ``tokens`` (ids, given as ints or a "1,2,3"
    string) is cut at the markers; each ``<image>`` takes the next image, each ``<audio>`` the next
    audio, in order. In ``tokens`` a marker is the marker string itself (``[1, "<image>", 5]``).
    Without prompt and tokens the result is the media alone: images, then audio, concatenated.

    Args:
        mmproj: the mmproj GGUF (vision and/or audio), or None for text alone.
        text_model: a text GGUF (token_embd + tokenizer.ggml.*); needed for a prompt or tokens.
        images, audios: paths (or arrays / PIL images; PCM arrays at 16 kHz).
        prompt, tokens: at most one of the two.
        options: a ``RunOptions``: backend, precision, n_threads as ``graphdsl.compile``;
            check_finite: refuse GGUF weights holding NaN or inf (``models.from_gguf``);
            max_seconds: refuse longer audio (default: ``preprocess.audio.DEFAULT_MAX_SECONDS``).
        backend, precision, n_threads, check_finite, max_seconds: shorthands for those fields.
        markers: the (image, audio) marker strings.
        tokenizer: a tokenizer.json path or a ``preprocess.TextTokenizer`` (default: the text
            GGUF's own vocabulary, ``models.text.tokenizer_of``).
        progress: called as ``progress(stage, done, total)`` after each stage: loading, each
            image and audio file pre-processed, and the run (one graph: a single step).

    Returns:
        Embeddings: ``embd`` (n_tokens_total, n_embd), the decoder's input sequence, and the spans.

    Raises:
        ValueError: a marker count that differs from the media given, media of a kind the mmproj
            has no encoder for, text without a text model, widths that disagree, bad files.
    """
    if prompt is not None and tokens is not None:  # before loading anything
        raise ValueError("[embed_files] give a prompt or tokens, not both")
    total = 2 + len(images) + len(audios)
    opts = RunOptions.of(options, backend=backend, precision=precision, n_threads=n_threads, check_finite=check_finite,
                         max_seconds=max_seconds)
    fe = FileEmbedder(mmproj, text_model, options=opts, markers=markers, tokenizer=tokenizer)
    fe.check(images, audios, prompt, tokens)
    if progress is not None:
        progress("loaded", 1, total)
    return fe(images, audios, prompt, tokens,
              progress=None if progress is None else lambda stage, done, _t: progress(stage, done + 1, total))


class FileEmbedder:
    """The models of ``embed_files`` loaded once (memory-mapped weights, one ``Embedder`` with its
    compiled layouts), to embed many (images, audios, prompt | tokens) items: ``graphdsl embed-dataset``.
    Arguments as ``embed_files``; ``strict``, ``max_programs``: shorthands for those ``RunOptions`` fields."""

    def __init__(self, mmproj: str | os.PathLike | None, text_model: str | os.PathLike | None = None, *,
                 options: RunOptions | None = None, backend: str | None = None,
                 markers: Sequence[str] = ("<image>", "<audio>"), tokenizer: Any = None, precision: str | None = None,
                 n_threads: int | None = None, check_finite: bool | None = None, max_seconds: float | None = None,
                 strict: bool | None = None, max_programs: int | None = None):
        from ..models import from_gguf
        from ..models import text as text_models
        self.options = o = RunOptions.of(options, backend=backend, precision=precision, n_threads=n_threads,
                                         check_finite=check_finite, max_seconds=max_seconds, strict=strict,
                                         max_programs=max_programs)
        if len(markers) != 2 or markers[0] == markers[1] or not all(isinstance(m, str) and m for m in markers):
            raise ValueError(f"[embed_files] markers must be two different strings (image, audio), got {markers!r}")
        if mmproj is None and text_model is None:
            raise ValueError("[embed_files] give an mmproj, a text model or both")
        self.markers, self.max_seconds = tuple(markers), o.max_seconds
        self.notes: list[str] = []  # per image of the last call: its arch's layout (slice grids)
        self.m = m = from_gguf(mmproj, check_finite=o.check_finite) if mmproj is not None else None
        self.tm = tm = text_models.from_gguf(text_model, check_finite=o.check_finite) if text_model is not None else None
        if tm is not None and m is not None:
            for kind, block in m.media.items():
                if block.n_out != tm.block.n_out:
                    raise ValueError(f"{m.path}: the {kind} projector gives width {block.n_out}, but the text model "
                                     f"{os.fspath(text_model)} has n_embd {tm.block.n_out}")
        self._tokenizer = tokenizer
        weights = dict(m.weights) if m is not None else {}
        if tm is not None:
            weights.update(tm.weights)
        self.embedder = Embedder(tm.block if tm is not None else None, m.media if m is not None else {},
                                 options=o, weights=weights)

    @property
    def n_embd(self) -> int:
        return self.tm.block.n_out if self.tm is not None else next(iter(self.m.media.values())).n_out

    def check(self, images: Sequence[Any] = (), audios: Sequence[Any] = (), prompt=None, tokens=None) -> None:
        """The errors an item can be refused with before any pre-processing."""
        m = self.m
        if prompt is not None and tokens is not None:
            raise ValueError("[embed_files] give a prompt or tokens, not both")
        for kind, given in (("image", images), ("audio", audios)):
            if given and (m is None or kind not in m.media):
                where = f"{m.path}: no {kind} encoder" if m is not None else f"no mmproj (the {kind} encoder)"
                raise ValueError(f"{where}, but {len(given)} {kind} input(s) were given")
        if (prompt is not None or tokens is not None) and self.tm is None:
            raise ValueError("[embed_files] a prompt or tokens need text_model (the token table)")
        xk = (cross_kinds(m.media) if m is not None else frozenset()) & {
            k for k, given in (("image", images), ("audio", audios)) if given}
        if xk and (prompt is not None or tokens is not None):
            # a marker here becomes the item; mllama's <|image|> is a token of the text that must stay
            raise ValueError(f"{m.path}: its {'/'.join(sorted(xk))} encoder gives cross-attention "
                             "memories, whose place in a prompt is a token of the text: embed the media alone, or "
                             "build the batch with preprocess.mllama.mllama_items and Embedder")

    def items(self, images: Sequence[Any] = (), audios: Sequence[Any] = (), prompt: str | None = None,
              tokens: Sequence[int | str] | str | None = None, *, progress=None) -> list:
        """The batch items of one sequence (pre-processed, tokenized); progress(stage, done, total)."""
        images, audios = list(images), list(audios)
        self.check(images, audios, prompt, tokens)
        m, tm, markers = self.m, self.tm, self.markers
        total, done = 1 + len(images) + len(audios), [0]

        def step(stage: str) -> None:
            done[0] += 1
            if progress is not None:
                progress(stage, done[0], total)

        media: dict[str, list] = {"image": [], "audio": []}
        self.notes = []
        info = tm.info if tm is not None else None
        for kind, given, prep in (("image", images, prepare_images), ("audio", audios, prepare_audios)):
            if given:
                for d in prep(m, given, progress=lambda d, _t, kind=kind: d and step(kind), text_info=info,
                              max_seconds=self.max_seconds):
                    media[kind].append([*d.items] if isinstance(d, Prepared) else (kind, d))
                    if isinstance(d, Prepared):
                        self.notes.append(d.note)
        if prompt is None and tokens is None:
            items = _flat(media["image"] + media["audio"])
            if not items:
                raise ValueError("[embed_files] nothing to embed: give a prompt, tokens, images or audio")
            return items
        kinds = {markers[0]: "image", markers[1]: "audio"}
        pieces = (_split_prompt(prompt, tm, self._tokenizer, kinds) if prompt is not None
                  else _split_tokens(tokens, kinds))
        order = [p for p in pieces if isinstance(p, str)]
        for kind, marker in (("image", markers[0]), ("audio", markers[1])):
            if order.count(kind) != len(media[kind]):
                raise ValueError(f"[embed_files] the {'prompt' if prompt is not None else 'tokens'} have "
                                 f"{order.count(kind)} {marker} marker(s) but {len(media[kind])} {kind} input(s) "
                                 "were given")
        queues = {k: iter(v) for k, v in media.items()}
        return _flat([next(queues[p]) if isinstance(p, str) else p for p in pieces])

    def __call__(self, images: Sequence[Any] = (), audios: Sequence[Any] = (), prompt: str | None = None,
                 tokens: Sequence[int | str] | str | None = None, *, progress=None) -> Embeddings:
        items = self.items(images, audios, prompt, tokens, progress=progress)
        out = self.embedder(items)
        out.notes = list(self.notes)
        if progress is not None:
            n = 1 + len(images) + len(audios)  # the pre-processing steps and the run
            progress("run", n, n)
        return out


def prepare_images(m, sources: Sequence[Any], progress: Callable[[int, int], Any] | None = None, *,
                   text_info=None, max_seconds: float | None = None) -> list:
    """Each image as ``embed_files`` hands it to ``m``'s vision arch (``m``: a ``models.Mmproj``):
    what its ``prepare`` hook makes (tiles, thumbnails, masks; a ``Prepared`` of several items),
    else pixels f32 [3, H, W] by ``m.image_config()``, made in parallel. ``graphdsl preprocess
    image --mmproj / --mode ARCH`` writes exactly these. ``progress(done, total)`` after each image."""
    from ..preprocess import preprocess_images
    arch = m.archs["image"]
    if arch.prepare is None:  # in parallel; progress comes back on this thread after each image
        return preprocess_images(sources, m.image_config(), progress=progress)
    return _each(arch, m, sources, progress, text_info, max_seconds)


def prepare_audios(m, sources: Sequence[Any], max_seconds: float | None = None,
                   progress: Callable[[int, int], Any] | None = None, *, text_info=None) -> list:
    """Each clip as ``embed_files`` hands it to ``m``'s audio arch: what its ``prepare`` hook
    makes (Phi-4's log-mel (n_frames, n_mel)), else Whisper log-mel windows, a list of
    [n_mel, 3000]. ``graphdsl preprocess audio --mmproj / --mode ARCH`` writes exactly these.
    ``progress(done, total)`` after each clip."""
    from ..preprocess import whisper_chunks
    from ..preprocess.audio import N_FRAMES
    arch = m.archs["audio"]
    if arch.prepare is not None:
        return _each(arch, m, sources, progress, text_info, max_seconds)
    if m.audio.cfg.n_frames != N_FRAMES:
        raise ValueError(f"{m.path}: the audio encoder takes windows of {m.audio.cfg.n_frames} frames, "
                         f"Whisper's log-mel gives {N_FRAMES}")
    seconds = {} if max_seconds is None else {"max_seconds": max_seconds}
    out = []
    for a in sources:
        out.append(whisper_chunks(a, m.audio.cfg.n_mel, **seconds)[0])
        if progress is not None:
            progress(len(out), len(sources))
    return out


def _each(arch, m, sources, progress, text_info, max_seconds) -> list:
    """``arch.prepare`` on each source, in turn."""
    if arch.needs_text and text_info is None:
        raise ValueError(f"{m.path}: a {arch.name} {arch.modality} carries marker tokens between its slices; "
                         "give the text model (its vocabulary has them)")
    out = []
    for src in sources:
        out.append(arch.prepare(src, m, text_info, max_seconds))
        if progress is not None:
            progress(len(out), len(sources))
    return out


def _flat(items: list) -> list:
    """Items with an image expanded into a list of items (slices and markers) spliced in place."""
    return [x for it in items for x in (it if isinstance(it, list) else [it])]


def _split_prompt(prompt: str, tm, tokenizer, kinds: Mapping[str, str]) -> list:
    """A text prompt -> [ids (int32), "image", ids, "audio", ...], tokenized once with the markers special."""
    from ..models import text as text_models
    from ..preprocess import TextTokenizer, chunk_prompt
    from ..preprocess.text import ImageChunk, TextChunk
    if tokenizer is None:
        tokenizer = text_models.tokenizer_of(tm.info)
    elif isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = TextTokenizer.from_file(tokenizer)
    chunks = chunk_prompt(prompt, tokenizer=tokenizer, n_tokens={"image": 1, "audio": 1}, markers=kinds)
    return [c.ids if isinstance(c, TextChunk) else "image" if isinstance(c, ImageChunk) else "audio" for c in chunks]


def _split_tokens(tokens, kinds: Mapping[str, str]) -> list:
    """Ids with marker strings ("1,2,<image>,3" or [1, 2, "<image>", 3]) -> [ids, "image", ids]."""
    if isinstance(tokens, str):
        tokens = [t for t in re.split(r"[\s,]+", tokens.strip()) if t]
    pieces: list = []
    run: list[int] = []
    for t in tokens:
        if isinstance(t, str) and t in kinds:
            if run:
                pieces.append(np.asarray(run, np.int32))
                run = []
            pieces.append(kinds[t])
            continue
        if (isinstance(t, (int, np.integer)) and not isinstance(t, bool)) or (
                isinstance(t, str) and re.fullmatch(r"-?\d+", t)):
            run.append(int(t))
        else:
            raise ValueError(f"[embed_files] token {t!r} is neither an integer id nor a marker "
                             f"({', '.join(kinds)})")
    if run:
        pieces.append(np.asarray(run, np.int32))
    return pieces
