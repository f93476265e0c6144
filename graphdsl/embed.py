"""Mixed-batch embedding: a batch such as [text, image, text, audio, text] as ONE graph.

Text chunks go through the token table (get_rows), each media chunk through its encoder +
projector, and the results are concatenated in batch order into the decoder's input sequence
``(n_tokens_total, n_embd)``. Encoder outputs feed the concat directly: nothing is copied to the
host between stages. Media of one model and one input shape run as one batch (one set of
weights, batched matrix products): several images of a size, or all the 30 s windows of the
audio clips.

Items of a batch may be given as:

- ``preprocess.text.TextChunk`` or a 1-D integer array: token ids;
- ``preprocess.text.ImageChunk`` / ``AudioChunk`` whose ``ref`` is the pre-processed array
  (pixels f32 [3, H, W]; log-mel f32 [n_mel, k * 3000] or a list of [n_mel, 3000] windows);
- a pair ``(kind, array)``: kind "text", "embeddings" (f32 [n, n_embd], passed through) or a
  key of ``media`` ("image", "audio", ...).

A media model is called in one of two ways. The plain way: ``model.rows(data)`` gives the item's
rows of one fixed shape, items of equal row shape are stacked into one batch input and
``model(x)`` returns ``(B, n_per_row, d)``. A model whose items do not stack (images of any size
packed into one sequence with per-image attention, anyres tiles plus newline rows, slices with
marker rows) defines instead ``build_items(g, prefix, datas) -> (feeds, outs, key)``: it is called
once per kind with all items of that kind in batch order (and, if it takes ``batch_kinds``, the
kinds of the whole batch), adds its inputs (named ``prefix...``)
and nodes to ``g``, and returns the arrays to feed, one ``(n_i, d)`` Tensor per item, and a
hashable ``key`` for what shapes alone do not say (e.g. the per-image grids), which becomes part
of the compiled-graph cache key. It keeps ``example`` and ``__call__``: ``Embedder`` declares
every model's weights by calling it on its example input.

A kind may instead give cross-attention memories (``Embedder(..., cross={"audio"})``, or a model
whose ``output`` is "cross", as mllama's vision): its items add no rows to the sequence (their
span has n_tokens 0) and each becomes a ``cross.CrossMemory`` in ``Embeddings.cross``, with the
sequence rows that may attend to it (see ``graphdsl.cross``).

Each text chunk is embedded on its own (a BERT-style table restarts its positions per chunk).
A second group of one model reuses its weights; its node names get a ``_1`` suffix.

From files: ``embed_files(mmproj, text_model, images=[...], audios=[...], prompt="... <image> ...")``
reads an mmproj GGUF (and a text GGUF), pre-processes, tokenizes and runs one mixed batch.

Example:
    >>> from graphdsl.models import clip, text, whisper_enc
    >>> emb = Embedder(text.TextEmbedding(text_cfg),
    ...                {"image": clip.ClipVision(clip_cfg), "audio": whisper_enc.WhisperEncoder(wcfg)},
    ...                weights=weights)                       # strict: missing/extra/mis-shaped listed
    >>> out = emb([ids_a, ("image", pixels), ids_b, ("audio", mel), ids_c])
    >>> out.embd.shape, [(s.kind, s.start, s.n_tokens) for s in out.spans]   # doctest: +SKIP
"""
from __future__ import annotations

import inspect
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import dtypes as dt
from . import ops
from .cross import CrossMemory, cross_mask, cross_spans
from .graph import Graph, Tensor
from .inp_embd import build_inp_embd


@dataclass(frozen=True)
class Span:
    """Where chunk ``index`` of the batch lies in the output: rows [start, start + n_tokens)."""

    index: int
    kind: str
    start: int
    n_tokens: int


# Per-row modality codes (Embeddings.modality) and Phi-4-multimodal's InputMode values
# (Embeddings.input_mode: which LoRA its decoder applies, and which audio projector it uses).
MODALITIES = ("text", "image", "audio", "embeddings")
INPUT_MODES = {"language": 0, "vision": 1, "speech": 2, "vision_speech": 3}


@dataclass
class Embeddings:
    """The decoder input (n_tokens_total, n_embd) and one Span per chunk, in batch order.

    ``positions``: for media models with M-RoPE decoders (Qwen2-VL), the (3, n_tokens_total) int32
    (t, h, w) position ids of every row (``mrope_positions``); None otherwise.
    """

    embd: np.ndarray
    spans: list[Span]
    cross: list[CrossMemory] = field(default_factory=list)  # cross-attention memories, in batch order
    notes: list[str] = field(default_factory=list)  # per image, how its arch laid it out (slice grids)
    positions: np.ndarray | None = None

    def cross_mask(self, kind: str | None = None) -> np.ndarray:
        """(n_tokens, rows of the memories of ``kind`` (all: None)) 0/1: which memory rows each
        sequence row may attend to (``cross.cross_mask``)."""
        return cross_mask([m for m in self.cross if kind in (None, m.kind)], self.embd.shape[0])

    @property
    def modality(self) -> np.ndarray:
        """(n_tokens_total,) int8: each row's ``MODALITIES`` index (0 text, 1 image, 2 audio, 3
        embeddings; another media kind gets 1 + its position after those)."""
        out = np.zeros(sum(s.n_tokens for s in self.spans), np.int8)
        for s in self.spans:
            out[s.start:s.start + s.n_tokens] = MODALITIES.index(s.kind) if s.kind in MODALITIES else len(MODALITIES)
        return out

    @property
    def input_mode(self) -> int:
        """Phi-4-multimodal's ``input_mode`` for the batch (its processor's rule): 3 with images
        and audio, 1 with images, 2 with audio, 0 for text alone."""
        kinds = {s.kind for s in self.spans}
        return INPUT_MODES[{(True, True): "vision_speech", (True, False): "vision", (False, True): "speech",
                            (False, False): "language"}["image" in kinds, "audio" in kinds]]


def mrope_positions(items: Sequence[Any], spans: Sequence[Span], media: Mapping[str, Any]) -> np.ndarray | None:
    """M-RoPE ids (3, n_tokens_total) int32 as HF's ``get_rope_index`` numbers a sequence: text rows
    count on from the last position (the same id in t, h and w), a media item whose model defines
    ``positions(data, start) -> (ids (3, n_i), next)`` takes its own. None when no media model does.

    Each media item is its own run, even next to another (HF's get_rope_index groups adjacent
    image tokens into one run and fails there; Qwen's prompts bracket every image with
    <|vision_start|> / <|vision_end|> text tokens, so the two agree on every prompt HF accepts).
    """
    if not any(hasattr(m, "positions") for m in media.values()):
        return None
    out = np.zeros((3, sum(s.n_tokens for s in spans)), np.int32)
    pos = 0
    for item, span in zip(items, spans):
        kind, data = as_item(item)
        model = media.get(kind)
        if model is not None and hasattr(model, "positions"):
            ids, nxt = model.positions(data, pos)
        else:
            ids, nxt = np.arange(pos, pos + span.n_tokens)[None].repeat(3, 0), pos + span.n_tokens
        if ids.shape != (3, span.n_tokens):
            raise RuntimeError(f"[embed] {type(model).__name__}.positions gave {ids.shape} for item {span.index} "
                               f"of {span.n_tokens} rows")
        out[:, span.start:span.start + span.n_tokens] = ids
        pos = nxt
    return out


def as_item(item: Any) -> tuple[str, Any]:
    """Normalise one batch item to (kind, data)."""
    from .preprocess.text import AudioChunk, ImageChunk, TextChunk
    if isinstance(item, TextChunk):
        return "text", item.ids
    if isinstance(item, ImageChunk):
        return "image", item.ref
    if isinstance(item, AudioChunk):
        return "audio", item.ref
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
        return item
    if isinstance(item, np.ndarray) and item.ndim == 1 and np.issubdtype(item.dtype, np.integer):
        return "text", item
    raise ValueError(f"[embed] cannot tell the kind of batch item {type(item).__name__}; "
                     "pass a chunk from graphdsl.preprocess.text, an id array or a (kind, array) pair")


def build_mixed(items: Sequence[Any], text=None, media: Mapping[str, Any] | None = None, cross=None
                ) -> tuple[Graph, dict[str, np.ndarray], list[Span]]:
    """Build the one graph of a mixed batch.

    Args:
        items: the batch (see the module docstring).
        text: the text model (``models.text.TextEmbedding``), needed when there are text chunks.
        media: kind -> media model (``ClipVision``, ``SiglipVision``, ``WhisperEncoder`` ...).
        cross: kinds whose outputs are cross-attention memories (``cross_kinds``): their items
            give outputs ``cross.{i}`` instead of rows of ``embd``.

    Returns:
        (graph with output ``embd`` (absent when every item is cross), the inputs to feed it, spans).
    """
    return _build(items, text, media, cross)[:3]


def cross_kinds(media: Mapping[str, Any], cross=None) -> frozenset:
    """The kinds whose outputs are cross-attention memories: ``cross``, or (None) the media
    models that say ``output = "cross"``."""
    if cross is None:
        return frozenset(k for k, m in media.items() if getattr(m, "output", "inline") == "cross")
    if isinstance(cross, str) or set(cross) - set(media):
        raise ValueError(f"[embed] cross must be a collection of media kinds ({sorted(media)}), got {cross!r}")
    return frozenset(cross)


def _build(items: Sequence[Any], text=None, media: Mapping[str, Any] | None = None, cross=None):
    """build_mixed, plus the layout keys of the media built by ``build_items`` (see the module doc)."""
    media = dict(media or {})
    g = Graph("mixed_batch")
    feeds: dict[str, np.ndarray] = {}
    pieces: list[Tensor | None] = [None] * len(items)
    groups: dict[tuple, list[tuple[int, np.ndarray]]] = {}
    itemwise: dict[str, list[tuple[int, Any]]] = {}
    kinds = []
    for i, item in enumerate(items):
        kind, data = as_item(item)
        kinds.append(kind)
        if kind == "text":
            if text is None:
                raise ValueError(f"[embed] item {i} is text but no text model was given")
            ids = dt.as_i32(np.asarray(data), f"[embed] item {i} (text ids)").reshape(-1)
            feeds[f"text.{i}"] = ids
            pieces[i] = text(g.input(f"text.{i}", ids.shape, "i32"))
        elif kind == "embeddings":
            x = np.asarray(data, np.float32)
            feeds[f"embd.{i}"] = x
            pieces[i] = build_inp_embd("embeddings", g.input(f"embd.{i}", x.shape))
        elif kind in media and hasattr(media[kind], "build_items"):
            itemwise.setdefault(kind, []).append((i, data))
        elif kind in media:
            rows = media[kind].rows(data)
            groups.setdefault((kind, rows.shape[1:]), []).append((i, rows))
        else:
            raise ValueError(f"[embed] item {i} has kind {kind!r}; models given for: "
                             f"{sorted(['text', 'embeddings', *media])}")
    for gi, ((kind, _), members) in enumerate(groups.items()):
        batch = np.concatenate([rows for _, rows in members])
        name = f"{kind}.{gi}"
        feeds[name] = batch
        out = media[kind](g.input(name, batch.shape))  # (B, n_per_row, d)
        r0 = 0
        for i, rows in members:
            m = len(rows)
            piece = out if m == out.shape[0] else ops.view(out, 0, r0, r0 + m, name=f"chunk.{i}.rows")
            pieces[i] = ops.reshape(piece, (m * out.shape[1], out.shape[2]), name=f"chunk.{i}")
            r0 += m
    layout = []
    for kind, members in itemwise.items():
        prefix = f"{kind}.items"
        build_items = media[kind].build_items
        # a model may ask for the batch's kinds (Phi-4's audio projector follows whether it has an image)
        extra = {"batch_kinds": tuple(kinds)} if "batch_kinds" in inspect.signature(build_items).parameters else {}
        kfeeds, outs, key = build_items(g, prefix, [d for _, d in members], **extra)
        if len(outs) != len(members) or any(o.ndim != 2 for o in outs):
            raise RuntimeError(f"[embed] {type(media[kind]).__name__}.build_items returned "
                               f"{[o.shape for o in outs]} for {len(members)} items; want one (n_i, d) tensor each")
        stray = [k for k in kfeeds if not k.startswith(prefix) or k in feeds]
        if stray:
            raise RuntimeError(f"[embed] {type(media[kind]).__name__}.build_items feeds {stray}: names must "
                               f"start with {prefix!r} and be new")
        feeds.update(kfeeds)
        for (i, _), out in zip(members, outs):
            pieces[i] = out
        layout.append((kind, key))
    for i, item in enumerate(items):  # positions reserved by preprocess.text.chunk_prompt must match
        reserved = getattr(item, "n_tokens", None)
        if reserved is not None and reserved != pieces[i].shape[0]:
            raise ValueError(f"[embed] item {i} ({kinds[i]}) reserved {reserved} positions but its encoder "
                             f"gives {pieces[i].shape[0]}")
    xk = cross_kinds(media, cross)
    inline = [(i, k, p) for i, (k, p) in enumerate(zip(kinds, pieces)) if k not in xk]
    if len({p.shape[-1] for _, _, p in inline}) > 1:
        raise ValueError("[embed] chunks disagree on the embedding width: " +
                         ", ".join(f"{i}:{k}={p.shape[-1]}" for i, k, p in inline))
    if inline:
        ps = [p for _, _, p in inline]
        g.output("embd", ops.concat(ps, axis=0, name="embd") if len(ps) > 1 else ps[0])
    spans, start = [], 0
    for i, (k, p) in enumerate(zip(kinds, pieces)):
        if k in xk:
            g.output(f"cross.{i}", p)
        spans.append(Span(i, k, start, 0 if k in xk else p.shape[0]))
        start += spans[-1].n_tokens
    return g, feeds, spans, tuple(layout)


class Embedder:
    """Runs mixed batches; one compiled graph per batch layout (kinds and shapes), cached.

    Args:
        text: text model (or None for media-only batches).
        media: kind -> media model.
        backend, precision, n_threads: as ``graphdsl.compile``.
        weights: gguf-named weights of all the models (strictly checked), or call load_weights.
        cache_size: compiled layouts kept.
        cross: media kinds whose outputs are cross-attention memories (``Embeddings.cross``)
            rather than rows of the sequence; None: the models whose ``output`` is "cross".
    """

    def __init__(self, text=None, media: Mapping[str, Any] | None = None, *, backend: str = "cpu",
                 precision: str = "f32", n_threads: int | None = None, weights=None, cache_size: int = 8,
                 cross=None):
        self.text, self.media = text, dict(media or {})
        self.cross = cross_kinds(self.media, cross)
        self.backend, self.precision, self.n_threads = backend, precision, n_threads
        self.cache_size = cache_size
        self._exes: OrderedDict[tuple, Any] = OrderedDict()
        self._weights: dict[str, np.ndarray] | None = None
        if weights is not None:
            self.load_weights(weights)

    def weight_graph(self) -> Graph:
        """A graph that declares the weights of every model (built on each model's example input)."""
        g = Graph("embedder_weights")
        models = ([self.text] if self.text is not None else []) + list(self.media.values())
        for i, m in enumerate(models):
            shape, dtype = m.example
            out = m(g.input(f"example.{i}", shape, dtype))
            g.output(f"out.{i}", out)
        return g

    def load_weights(self, weights: Mapping[str, Any]) -> None:
        """Bind the weights of all models; missing, extra and mis-shaped ones are listed in one error."""
        from .backends.weights import check_weights
        self._weights = check_weights(self.weight_graph(), weights)
        for exe in self._exes.values():
            exe.load_weights({k: self._weights[k] for k in exe.graph.weights})

    def plan(self, items: Sequence[Any]) -> list[Span]:
        """The spans a batch will occupy, without running it."""
        return build_mixed(items, self.text, self.media, self.cross)[2]

    def __call__(self, items: Sequence[Any], *, capture: Sequence[str] = ()) -> Embeddings:
        if self._weights is None:
            raise ValueError("[embed] no weights bound: call load_weights() first")
        g, feeds, spans, layout = _build(items, self.text, self.media, self.cross)
        key = (tuple((k, v.shape, str(v.dtype)) for k, v in feeds.items()), layout)
        exe = self._exes.get(key)
        if exe is None:
            from . import compile as _compile
            exe = _compile(g, self.backend, precision=self.precision, n_threads=self.n_threads)
            exe.load_weights({k: self._weights[k] for k in g.weights})
            self._exes[key] = exe
            while len(self._exes) > self.cache_size:
                self._exes.popitem(last=False)
        else:
            self._exes.move_to_end(key)
        out = exe(feeds, capture=capture)
        return self._embeddings(out, items, spans)

    def _embeddings(self, out: Mapping[str, np.ndarray], items: Sequence[Any], spans: list[Span]) -> Embeddings:
        mems = [s for s in spans if s.kind in self.cross]
        n = sum(s.n_tokens for s in spans)
        width = out[f"cross.{mems[0].index}"].shape[-1] if mems else 0
        embd = out["embd"] if "embd" in out else np.zeros((0, width), np.float32)
        cross = []
        for kind in sorted({s.kind for s in mems}):
            ss = [s for s in mems if s.kind == kind]
            valid = getattr(self.media[kind], "valid_rows", None)
            for s, (a, b) in zip(ss, cross_spans([s.start for s in ss], n)):
                e = out[f"cross.{s.index}"]
                k = valid(as_item(items[s.index])[1]) if valid is not None else e.shape[0]
                cross.append(CrossMemory(s.index, kind, e, k, a, b))
        return Embeddings(embd, spans, cross=sorted(cross, key=lambda m: m.index),
                          positions=mrope_positions(items, spans, self.media))


# -- from files ---------------------------------------------------------------------------------------
def embed_files(mmproj: str | os.PathLike | None, text_model: str | os.PathLike | None = None, images: Sequence[Any] = (),
                audios: Sequence[Any] = (), prompt: str | None = None, tokens: Sequence[int | str] | str | None = None,
                *, backend: str = "auto", markers: Sequence[str] = ("<image>", "<audio>"), tokenizer: Any = None,
                precision: str = "f32", n_threads: int | None = None, check_finite: bool = True,
                max_seconds: float | None = None, progress: Callable[[str, int, int], None] | None = None
                ) -> Embeddings:
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
        backend, precision, n_threads: as ``graphdsl.compile``.
        markers: the (image, audio) marker strings.
        tokenizer: a tokenizer.json path or a ``preprocess.TextTokenizer`` (default: the text
            GGUF's own vocabulary, ``models.text.tokenizer_of``).
        check_finite: refuse GGUF weights holding NaN or inf (``models.from_gguf``).
        max_seconds: refuse longer audio (default: ``preprocess.audio.DEFAULT_MAX_SECONDS``).
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
    fe = FileEmbedder(mmproj, text_model, backend=backend, markers=markers, tokenizer=tokenizer, precision=precision,
                      n_threads=n_threads, check_finite=check_finite, max_seconds=max_seconds)
    fe.check(images, audios, prompt, tokens)
    if progress is not None:
        progress("loaded", 1, total)
    return fe(images, audios, prompt, tokens,
              progress=None if progress is None else lambda stage, done, _t: progress(stage, done + 1, total))


class FileEmbedder:
    """The models of ``embed_files`` loaded once (memory-mapped weights, one ``Embedder`` with its
    compiled layouts), to embed many (images, audios, prompt | tokens) items: ``graphdsl embed-dataset``.
    Arguments as ``embed_files``."""

    def __init__(self, mmproj: str | os.PathLike | None, text_model: str | os.PathLike | None = None, *,
                 backend: str = "auto", markers: Sequence[str] = ("<image>", "<audio>"), tokenizer: Any = None,
                 precision: str = "f32", n_threads: int | None = None, check_finite: bool = True,
                 max_seconds: float | None = None):
        from .models import from_gguf
        from .models import text as text_models
        if len(markers) != 2 or markers[0] == markers[1] or not all(isinstance(m, str) and m for m in markers):
            raise ValueError(f"[embed_files] markers must be two different strings (image, audio), got {markers!r}")
        if mmproj is None and text_model is None:
            raise ValueError("[embed_files] give an mmproj, a text model or both")
        self.markers, self.max_seconds = tuple(markers), max_seconds
        self.notes: list[str] = []  # per image of the last call: its arch's layout (slice grids)
        self.m = m = from_gguf(mmproj, check_finite=check_finite) if mmproj is not None else None
        self.tm = tm = text_models.from_gguf(text_model, check_finite=check_finite) if text_model is not None else None
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
                                 backend=backend, precision=precision, n_threads=n_threads, weights=weights)

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
        expand = m.archs["image"].extra.get("items") if images else None  # slices + marker tokens: several items
        if expand is not None:
            if tm is None:
                raise ValueError(f"{m.path}: a {m.archs['image'].name} image carries marker tokens between its "
                                 "slices; give the text model (its vocabulary has them)")
            for src in images:
                its, note = expand(src, m, tm.info)
                media["image"].append(its)
                self.notes.append(note)
                step("image")
        elif images:
            media["image"] = [("image", d) for d in prepare_images(m, images, lambda d, _t: d and step("image"))]
        if audios:
            media["audio"] = [("audio", d) for d in prepare_audios(m, audios, self.max_seconds,
                                                                    lambda _d, _t: step("audio"))]
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


def prepare_images(m, sources: Sequence[Any], progress: Callable[[int, int], Any] | None = None) -> list:
    """Each image as ``embed_files`` hands it to ``m``'s vision arch (``m``: a ``models.Mmproj``):
    its ``frames`` hook's item (tiles, thumbnails, masks) where the arch slices images, else
    pixels f32 [3, H, W] by ``m.image_config()``, made in parallel. ``graphdsl preprocess image
    --mmproj / --mode ARCH`` writes exactly these. ``progress(done, total)`` after each image."""
    from .preprocess import preprocess_images
    frames = m.archs["image"].frames  # tiles + a global view, for archs that slice images
    if frames is None:  # in parallel; progress comes back on this thread after each image
        return preprocess_images(sources, m.image_config(), progress=progress)
    out = []
    for src in sources:
        out.append(frames(src, m))
        if progress is not None:
            progress(len(out), len(sources))
    return out


def prepare_audios(m, sources: Sequence[Any], max_seconds: float | None = None,
                   progress: Callable[[int, int], Any] | None = None) -> list:
    """Each clip as ``embed_files`` hands it to ``m``'s audio arch: the arch's own features
    (its ``extra["audio"]`` hook: Phi-4's log-mel (n_frames, n_mel)) where it has them, else
    Whisper log-mel windows, a list of [n_mel, 3000]. ``graphdsl preprocess audio --mmproj /
    --mode ARCH`` writes exactly these. ``progress(done, total)`` after each clip."""
    from .preprocess import whisper_chunks
    from .preprocess.audio import N_FRAMES
    hook = m.archs["audio"].extra.get("audio")  # archs with their own features
    if hook is None and m.audio.cfg.n_frames != N_FRAMES:
        raise ValueError(f"{m.path}: the audio encoder takes windows of {m.audio.cfg.n_frames} frames, "
                         f"Whisper's log-mel gives {N_FRAMES}")
    seconds = {} if max_seconds is None else {"max_seconds": max_seconds}
    out = []
    for a in sources:
        out.append(hook(a, m, max_seconds) if hook is not None else whisper_chunks(a, m.audio.cfg.n_mel, **seconds)[0])
        if progress is not None:
            progress(len(out), len(sources))
    return out


def _flat(items: list) -> list:
    """Items with an image expanded into a list of items (slices and markers) spliced in place."""
    return [x for it in items for x in (it if isinstance(it, list) else [it])]


def _split_prompt(prompt: str, tm, tokenizer, kinds: Mapping[str, str]) -> list:
    """A text prompt -> [ids (int32), "image", ids, "audio", ...], tokenized once with the markers special."""
    from .models import text as text_models
    from .preprocess import TextTokenizer, chunk_prompt
    from .preprocess.text import ImageChunk, TextChunk
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
