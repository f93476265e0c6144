"""CPU pre-processing, one module per modality: the "tokenizers" that turn raw inputs into what
``build_inp_embd`` consumes.

- ``image``: any image Pillow opens -> float32 [3, H, W] (CLIP, SigLIP, LLaVA-pad modes).
- ``audio``: PCM or audio files -> Whisper log-mel float32 [n_mel, 3000] windows.
- ``text``: HF tokenizer.json -> int32 ids; prompts with media markers -> chunks.
- ``batch``: the above over many inputs on a thread pool.

Pure NumPy / Pillow (+ soxr, soundfile, tokenizers imported on first use); nothing here needs
the compiled extension.
"""

from .anyres import AnyresConfig, AnyresImage, anyres_images
from .audio import load_audio, log_mel_spectrogram, mel_filters, whisper_chunks, whisper_features
from .batch import parallel_map, preprocess_audio, preprocess_images, stack_images
from .idefics3 import (Idefics3ImageConfig, Idefics3Images, Idefics3Prompt, idefics3_images, idefics3_prompt,
                       stack_idefics3)
from .pixtral import PixtralImageConfig, pixtral_image, pixtral_size
from .image import ImageConfig, load_image, preprocess_image
from .qwen2vl import Qwen2VLImageConfig, qwen2vl_image, smart_resize
from .text import AudioChunk, Chunk, ImageChunk, TextChunk, TextTokenizer, chunk_prompt

__all__ = [
    "AnyresConfig",
    "AnyresImage",
    "anyres_images",
    "Idefics3ImageConfig",
    "Idefics3Images",
    "Idefics3Prompt",
    "idefics3_images",
    "idefics3_prompt",
    "stack_idefics3",
    "PixtralImageConfig",
    "pixtral_image",
    "pixtral_size",
    "AudioChunk",
    "Chunk",
    "ImageChunk",
    "ImageConfig",
    "TextChunk",
    "TextTokenizer",
    "chunk_prompt",
    "load_audio",
    "load_image",
    "log_mel_spectrogram",
    "mel_filters",
    "parallel_map",
    "Qwen2VLImageConfig",
    "qwen2vl_image",
    "smart_resize",
    "preprocess_audio",
    "preprocess_image",
    "preprocess_images",
    "stack_images",
    "whisper_chunks",
    "whisper_features",
]
