"""GGUF files in llama.cpp's conventions.

- reader.py: a validating, memory-mapped GGUF reader (`read_gguf`, `GGUFFile`, `GGUFTensor`;
  `metadata_value`: one metadata key, type-checked).
- mmproj.py: multimodal projector files (`load_mmproj`, `MmprojConfig`), llama.cpp's loader
  quirks and tensor checks; `tn`, a tensor's name in llama.cpp's files.
- text.py: text-model files (`load_text`): token embeddings and the tokenizer.ggml.* vocabulary.
- finite.py: NaN / inf in weights (`nonfinite`, `check_finite`), what `from_gguf` refuses.

    >>> f = read_gguf("mmproj.gguf")                     # doctest: +SKIP
    >>> cfg, tensors = load_mmproj("mmproj.gguf")         # doctest: +SKIP
    >>> arr, dtype, shape = tensors["v.blk.0.attn_q.weight"]  # doctest: +SKIP
"""
from .mmproj import (  # noqa: F401
    FFN_SWAP_PROJECTORS,
    KEY_ACT,
    KEY_AUDIO_MM_ACT,
    KEY_FEATURE_LAYER,
    KEY_MM_ACT,
    KEY_SELECT,
    LLAVA_PROJECTORS,
    MMPROJ_ARCH,
    PROJECTOR_TYPES,
    WHISPER_PROJECTORS,
    AudioConfig,
    MmprojConfig,
    VisionConfig,
    load_mmproj,
    tn,
)
from .finite import check_finite, nonfinite  # noqa: F401
from .reader import (  # noqa: F401
    MAX_DIMS,
    MAX_NAME,
    GGUFError,
    GGUFFile,
    GGUFTensor,
    MissingTensor,
    TensorTable,
    metadata_value,
    read_gguf,
    weights_of,
)
from .text import TextInfo, load_text  # noqa: F401

__all__ = ["AudioConfig", "GGUFError", "GGUFFile", "GGUFTensor", "MissingTensor", "MmprojConfig", "TensorTable",
           "TextInfo", "VisionConfig", "check_finite", "load_mmproj", "load_text", "metadata_value", "nonfinite",
           "read_gguf", "tn", "weights_of"]
