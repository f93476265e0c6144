"""Text pre-processing: prompt -> token ids, and a mixed prompt -> a list of chunks.

Tokenization is the ``tokenizers`` library running a HF ``tokenizer.json``: no tokenizer is
written here. A prompt with media markers (``<image>``, ``<audio>``) is encoded *once*, with the
markers registered as special tokens, and the id sequence is then cut at the marker ids. This is
how HF's LLaVA-style processors treat their ``<image>`` token, so special tokens ([CLS] ...
[SEP], BOS) appear once for the whole prompt and whitespace next to a marker is tokenized as it
would be without the cut.

Each media chunk reserves the number of positions its encoder produces, given by the caller as an
int or a callable of the chunk's reference (e.g. ``lambda mel: 1500``), so a later stage can lay
out the decoder's input sequence without running any encoder.

Example:
    >>> tok = TextTokenizer.from_file("tokenizer.json")
    >>> chunks = chunk_prompt("USER: <image> what is this?", tokenizer=tok, media=[img],
    ...                       n_tokens={"image": 576})
    >>> [type(c).__name__ for c in chunks]
    ['TextChunk', 'ImageChunk', 'TextChunk']
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

DEFAULT_MARKERS: Mapping[str, str] = {"<image>": "image", "<audio>": "audio"}


@dataclasses.dataclass(frozen=True, eq=False)
class TextChunk:
    """Token ids, int32 [n_tokens]."""

    ids: np.ndarray

    @property
    def n_tokens(self) -> int:
        return int(self.ids.shape[0])


@dataclasses.dataclass(frozen=True)
class ImageChunk:
    """One image: ``ref`` is the caller's handle (path, array, index); ``n_tokens`` the
    positions its encoder + projector will produce."""

    ref: Any
    n_tokens: int


@dataclasses.dataclass(frozen=True)
class AudioChunk:
    """One audio clip (or one 30 s window of it); fields as ImageChunk."""

    ref: Any
    n_tokens: int


Chunk = TextChunk | ImageChunk | AudioChunk
_MEDIA = {"image": ImageChunk, "audio": AudioChunk}


class TextTokenizer:
    """A HF ``tokenizer.json`` (through ``tokenizers``) that returns int32 NumPy ids.

    Padding and truncation stored in the tokenizer.json are switched off (HF's
    ``AutoTokenizer`` does the same by default): the chunk list decides the sequence, and a
    silent cut at e.g. 128 tokens could drop media markers.

    Args:
        tokenizer: a ``tokenizers.Tokenizer`` (its padding and truncation are switched off in
            place).
    """

    def __init__(self, tokenizer: Any):
        self._tok = tokenizer
        self._tok.no_padding()
        self._tok.no_truncation()
        self._with_markers: dict[tuple[str, ...], Any] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> TextTokenizer:
        """Load ``tokenizer.json`` (a file, or a directory that contains one)."""
        from tokenizers import Tokenizer

        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "tokenizer.json")
        try:
            return cls(Tokenizer.from_file(path))
        except Exception as e:  # tokenizers raises a bare Exception for unreadable JSON
            raise ValueError(f"[TextTokenizer] cannot load {path!r}: {e}") from e

    @classmethod
    def from_str(cls, json_text: str, source: str = "[TextTokenizer] string") -> TextTokenizer:
        """Load a tokenizer.json held in a string; ``source`` names it in errors ("FILE: KEY")."""
        from tokenizers import Tokenizer

        try:
            return cls(Tokenizer.from_str(json_text))
        except Exception as e:  # tokenizers raises a bare Exception naming neither file nor key
            raise ValueError(f"{source}: not a valid tokenizer.json: {e}") from e

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def encode(self, text: str, add_special_tokens: bool = True) -> np.ndarray:
        """Token ids of ``text``: int32 [n_tokens]."""
        return np.asarray(self._tok.encode(text, add_special_tokens=add_special_tokens).ids, dtype=np.int32)

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> list[np.ndarray]:
        """Token ids of many texts; ``tokenizers`` runs the batch on its own Rust thread pool."""
        encs = self._tok.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        return [np.asarray(e.ids, dtype=np.int32) for e in encs]

    def decode(self, ids: Sequence[int] | np.ndarray, skip_special_tokens: bool = True) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def with_markers(self, markers: Sequence[str]) -> tuple[Any, dict[int, str]]:
        """A copy of the tokenizer that knows ``markers`` as special tokens, and their ids.

        The copy is made once per marker set; the original tokenizer is left untouched so that
        plain ``encode`` never produces an id outside the model's vocabulary."""
        key = tuple(sorted(markers))
        with self._lock:
            if key not in self._with_markers:
                from tokenizers import AddedToken, Tokenizer

                tok = Tokenizer.from_str(self._tok.to_str())
                tok.no_padding()
                tok.no_truncation()
                tok.add_special_tokens([AddedToken(m, special=True, normalized=False) for m in key])
                self._with_markers[key] = (tok, {tok.token_to_id(m): m for m in key})
            return self._with_markers[key]


def _positions(kind: str, ref: Any, n_tokens: Mapping[str, int | Callable[[Any], int]]) -> int:
    if kind not in n_tokens:
        raise ValueError(f"[chunk_prompt] no n_tokens given for {kind!r} (have {sorted(n_tokens)})")
    spec = n_tokens[kind]
    n = spec(ref) if callable(spec) else spec
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"[chunk_prompt] n_tokens for {kind!r} must be a positive int, got {n!r}")
    return int(n)


def chunk_prompt(
    prompt: str | Sequence[int] | np.ndarray,
    *,
    tokenizer: TextTokenizer | None = None,
    media: Sequence[Any] | None = None,
    n_tokens: Mapping[str, int | Callable[[Any], int]],
    markers: Mapping[str, str] = DEFAULT_MARKERS,
    marker_ids: Mapping[int, str] | None = None,
    add_special_tokens: bool = True,
) -> list[Chunk]:
    """Split a prompt at its media markers into text and media chunks, in prompt order.

    Args:
        prompt: text (needs ``tokenizer``), or pre-tokenized ids in which media are marked by
            the ids in ``marker_ids``.
        tokenizer: the model's tokenizer, for a text prompt.
        media: one reference per marker, in prompt order (paths, arrays, ...); None: each
            media chunk's ref is its ordinal among the markers (0, 1, ...).
        n_tokens: per media kind ("image", "audio"), the positions one item occupies: an int,
            or a callable taking the item's ref.
        markers: marker text -> media kind, for a text prompt.
        marker_ids: marker id -> media kind, for an id prompt (default: the ids of ``markers``
            in ``tokenizer``, when one is given).
        add_special_tokens: let the tokenizer add its special tokens around the whole prompt.

    Returns:
        list of TextChunk (int32 ids) / ImageChunk / AudioChunk; empty text between markers
        yields no chunk. The total sequence length is ``sum(c.n_tokens for c in chunks)``.

    Raises:
        ValueError: unknown media kind, missing ``n_tokens``, or a marker count that does not
            match ``len(media)``.
    """
    for kind in set(markers.values()) | set((marker_ids or {}).values()):
        if kind not in _MEDIA:
            raise ValueError(f"[chunk_prompt] unknown media kind {kind!r}; known: {sorted(_MEDIA)}")
    if isinstance(prompt, str):
        if tokenizer is None:
            raise ValueError("[chunk_prompt] a text prompt needs a tokenizer")
        tok, id_to_marker = tokenizer.with_markers(list(markers))
        ids = np.asarray(tok.encode(prompt, add_special_tokens=add_special_tokens).ids, dtype=np.int64)
        kind_of = {i: markers[m] for i, m in id_to_marker.items()}
    else:
        ids = np.asarray(prompt, dtype=np.int64).reshape(-1)
        if marker_ids is None:
            if tokenizer is None:
                raise ValueError("[chunk_prompt] an id prompt needs marker_ids or a tokenizer that has the markers")
            marker_ids = {i: markers[m] for m in markers if (i := tokenizer.token_to_id(m)) is not None}
        kind_of = dict(marker_ids)

    is_marker = np.isin(ids, np.fromiter(kind_of, dtype=np.int64, count=len(kind_of)))
    where = np.flatnonzero(is_marker)
    if media is not None and len(media) != len(where):
        raise ValueError(f"[chunk_prompt] prompt has {len(where)} media markers but {len(media)} media were given")

    chunks: list[Chunk] = []
    start = 0
    for k, pos in enumerate(where):
        if pos > start:
            chunks.append(TextChunk(ids[start:pos].astype(np.int32)))
        kind = kind_of[int(ids[pos])]
        ref = k if media is None else media[k]
        chunks.append(_MEDIA[kind](ref, _positions(kind, ref, n_tokens)))
        start = pos + 1
    if start < len(ids):
        chunks.append(TextChunk(ids[start:].astype(np.int32)))
    return chunks
