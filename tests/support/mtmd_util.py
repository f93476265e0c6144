"""The graphdsl side of the mtmd comparisons: find the mtmd venv (skip cleanly without it), write
the tiny text GGUF ``mtmd_init_from_file`` needs, and run ``tests/support/mtmd_ref.py`` in a subprocess."""
from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from paths import ROOT, SUPPORT
MARKERS = ("<image>", "</image>", "<slice>", "</slice>")
# what mtmd wraps other projectors' media in (Gemma 3, Voxtral): tokenized as text, so in the vocabulary
WRAPPERS = ("<start_of_image>", "<end_of_image>", "[BEGIN_AUDIO]")


@functools.lru_cache(maxsize=1)
def _probe() -> tuple[str | None, str]:
    py = os.environ.get("GRAPHDSL_MTMD_PYTHON") or str(ROOT / ".venv-mtmd" / "bin" / "python")
    if not Path(py).exists():
        return None, f"no mtmd venv at {py} (make test-mtmd builds it)"
    r = subprocess.run([py, "-c", "import llama_cpp.mtmd_cpp"], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        return None, f"{py} cannot import llama_cpp.mtmd_cpp: {r.stderr.strip()[-300:]}"
    return py, ""


def mtmd_python() -> str:
    """The mtmd venv's python; skips (fails under GRAPHDSL_MTMD_REQUIRED) when there is none."""
    py, why = _probe()
    if py is None:
        if os.environ.get("GRAPHDSL_MTMD_REQUIRED"):
            pytest.fail(why)
        pytest.skip(why)
    return py


def write_text_gguf(path, n_embd: int, seed: int = 0, extra: tuple[str, ...] = ()) -> dict[str, int]:
    """A one-layer llama GGUF of width n_embd with an SPM vocabulary that has MiniCPM-V's markers
    (user-defined tokens), the byte token for "\\n" and ``extra`` user-defined tokens (what mtmd wraps
    a projector's media in: Qwen's <|vision_start|>); returns token text -> id."""
    import gguf
    rng = np.random.default_rng(seed)
    toks = ["<unk>", "<s>", "</s>", *MARKERS, "<0x0A>", *WRAPPERS, *extra] + [f"\u2581w{i}" for i in range(24)]
    types = [2, 3, 3] + [4] * len(MARKERS) + [6] + [4] * (len(WRAPPERS) + len(extra)) + [1] * 24
    w = gguf.GGUFWriter(str(path), "llama")
    n_ff, n_head = 2 * n_embd, max(1, n_embd // 32)
    w.add_context_length(64)
    w.add_embedding_length(n_embd)
    w.add_block_count(1)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_tokenizer_model("llama")
    w.add_token_list(toks)
    w.add_token_scores([0.0] * len(toks))
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)

    def t(name, *shape):
        w.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))
    t("token_embd.weight", len(toks), n_embd)
    w.add_tensor("output_norm.weight", np.ones(n_embd, np.float32))
    t("output.weight", len(toks), n_embd)
    w.add_tensor("blk.0.attn_norm.weight", np.ones(n_embd, np.float32))
    w.add_tensor("blk.0.ffn_norm.weight", np.ones(n_embd, np.float32))
    for n in ("attn_q", "attn_k", "attn_v", "attn_output"):
        t(f"blk.0.{n}.weight", n_embd, n_embd)
    t("blk.0.ffn_gate.weight", n_ff, n_embd)
    t("blk.0.ffn_up.weight", n_ff, n_embd)
    t("blk.0.ffn_down.weight", n_embd, n_ff)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {("\n" if s == "<0x0A>" else s): i for i, s in enumerate(toks)}


def run_mtmd(mmproj, text, image, workdir, *, threads: int = 2, repeat: int = 1, flash: int = -1) -> dict:
    """mtmd's chunks for one image: {"kinds": [...], "tokens.i" | "embd.i", "nxny.i", "time.i"}."""
    out = Path(workdir) / f"mtmd_{Path(mmproj).stem}_{Path(image).stem}.npz"
    cmd = [mtmd_python(), str(SUPPORT / "mtmd_ref.py"), "--mmproj", str(mmproj), "--text", str(text),
           "--image", str(image), "--out", str(out), "--threads", str(threads), "--repeat", str(repeat),
           "--flash", str(flash)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise AssertionError(f"mtmd_ref failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    with np.load(out) as z:
        return {k: z[k] for k in z.files}


def rel_l2(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


if __name__ == "__main__":  # a quick manual check: python tests/support/mtmd_util.py
    print(_probe(), file=sys.stderr)
