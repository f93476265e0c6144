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

Every media model is a ``models.base.Block`` (the protocol: its hooks and their defaults are
documented there) and goes through one path: ``build_items(g, kind, datas, batch_kinds) ->
(feeds, outs, key)``, called once per kind with all items of that kind in batch order. The
default stacks items of equal row shape (``rows(data)``) into one input ``{kind}.{j}``; a model
whose items do not stack (images of any size packed into one sequence, anyres tiles plus newline
rows, slices with marker rows) overrides it. ``Embedder`` declares every model's weights by
calling it on its ``example`` input. A model with per-layer outputs (``n_per_layer``: Qwen3-VL's
deepstack features) gives wider rows, which embed splits into ``Embeddings.embd`` and
``Embeddings.per_layer``.

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

from .batch import as_item, build_mixed, cross_kinds, mrope_positions
from .embedder import Embedder
from .files import FileEmbedder, embed_files, prepare_audios, prepare_images
from .result import INPUT_MODES, MODALITIES, Embeddings, Span

__all__ = ["Embedder", "Embeddings", "FileEmbedder", "INPUT_MODES", "MODALITIES", "Span", "as_item", "build_mixed",
           "cross_kinds", "embed_files", "mrope_positions", "prepare_audios", "prepare_images"]
