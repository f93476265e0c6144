"""The sweep's table: one entry per registered arch (adding an arch is one line here and its
generator beside the others); tests/cli/test_sweep.py fails when a registered arch has none."""
from __future__ import annotations

from .clip_siglip import CLIP, LLAVA_NEXT, SIGLIP
from .deepstack import QWEN3VL
from .omni import QWEN2_5OMNI, QWEN2_5OMNI_AUDIO
from .qwen2audio import QWEN2AUDIO
from .audio_text import PHI4_AUDIO, TEXT, WHISPER
from .resizing import IDEFICS3, MLLAMA, PIXTRAL, QWEN2_5VL, QWEN2VL
from .special import MINICPMV, MOBILEVLM, PHI4_VISION
from .tiles import INTERNVL

ENTRIES = {e.arch: e for e in (CLIP, SIGLIP, LLAVA_NEXT, IDEFICS3, PIXTRAL, QWEN2VL, QWEN2_5VL, MLLAMA, WHISPER,
                               PHI4_AUDIO, TEXT, PHI4_VISION, MINICPMV, MOBILEVLM, QWEN3VL,
                               QWEN2_5OMNI, QWEN2_5OMNI_AUDIO, INTERNVL, QWEN2AUDIO)}
