"""Dataset-scale embedding: a folder or manifest -> sharded, resumable Parquet (`graphdsl embed-dataset`).

    >>> from graphdsl.dataset import embed_dataset, read_output
    >>> embed_dataset("images/", "out/", mmproj="mmproj.gguf", workers=2)      # doctest: +SKIP
    >>> read_output("out/").to_pandas()                                         # doctest: +SKIP

Input (`manifest`): a folder of images / audio files, or a CSV / JSONL / Parquet manifest of
(id, prompt | tokens, images, audios). Output (`shards`): OUT/part-NNNNN.parquet with columns
id, n_tokens, spans, embeddings, and OUT/_manifest.json; shard files are written atomically and
a rerun skips the finished ones. Execution (`run`): in-process, a local pool of worker
processes, or Ray Data actors (`ray_runner`), each holding one compiled Embedder over the
memory-mapped weights; all three give the same files. Needs pyarrow (`graphdsl[dataset]`).
"""
from .manifest import Item, read_manifest
from .integrity import DamagedShardWarning
from .run import embed_dataset, progress_note, warnings_as_lines
from .shards import read_output

__all__ = ["DamagedShardWarning", "Item", "embed_dataset", "progress_note", "read_manifest", "read_output",
           "warnings_as_lines"]
