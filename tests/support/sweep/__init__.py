"""The config sweep (issue 23 item 2): every registered arch, random but valid non-default configs of
model and processor, run as a user runs it: HF folder (``save_pretrained`` of a small random-weight
model and its processor) -> ``graphdsl convert`` -> ``graphdsl embed`` (subprocesses) against what
HF's processor and model give the decoder.

``ENTRIES`` (``sweep.table``) holds one ``Entry`` per arch: a generator of (HF config, processor
kwargs, media) from a seeded ``numpy`` generator, how to build the HF model and processor, and its
reference. Case ``i`` of arch ``a`` is seeded by ``(a, i)`` alone, so a failure is reproduced by
the command line ``Case.command`` prints (``tests/support/sweep_run.py``).
"""
from .core import BOUND, Case, Entry, Result, case, run_arch  # noqa: F401
from .table import ENTRIES  # noqa: F401
