"""llama.cpp's own converter (convert_hf_to_gguf.py --mmproj) as a writer of test files.

It comes from the llama-cpp-python sdist on PyPI (the same version scripts/build_mtmd.sh builds),
unpacked once into ~/.cache/graphdsl (or $GRAPHDSL_LCP_CONVERT: a llama.cpp checkout) and run in
a subprocess with its own gguf-py. Without it the tests that need it skip, naming what failed.
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "0.3.36"
PARTS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")  # what the converter imports


def _cache() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "graphdsl" / f"llama-cpp-python-{VERSION}-convert"


@functools.lru_cache(maxsize=1)
def _probe() -> tuple[Path | None, str]:
    given = os.environ.get("GRAPHDSL_LCP_CONVERT")
    if given:
        ok = (Path(given) / "convert_hf_to_gguf.py").exists()
        return (Path(given), "") if ok else (None, f"GRAPHDSL_LCP_CONVERT={given} has no convert_hf_to_gguf.py")
    dest = _cache()
    if (dest / "convert_hf_to_gguf.py").exists():
        return dest, ""
    with tempfile.TemporaryDirectory() as tmp:
        r = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                            f"llama-cpp-python=={VERSION}", "-d", tmp], capture_output=True, text=True, timeout=900)
        sdists = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if r.returncode != 0 or not sdists:
            return None, f"pip download llama-cpp-python=={VERSION} failed: {r.stderr.strip()[-300:]}"
        root = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
        part = Path(tmp) / "part"
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python >= 3.10.12 / 3.11.4
        try:
            with tarfile.open(sdists[0]) as tar:
                members = [m for m in tar.getmembers() if m.name.startswith(root)
                           and any(m.name[len(root):].startswith(p) for p in PARTS) and (m.isfile() or m.isdir())]
                tar.extractall(part, members=members, **safe)
        except (OSError, tarfile.TarError) as e:
            return None, f"cannot unpack {sdists[0].name}: {e}"
        if not (part / root / "convert_hf_to_gguf.py").exists():
            return None, f"{sdists[0].name} has no {root}convert_hf_to_gguf.py"
        dest.parent.mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(dir=dest.parent))  # renamed into place whole: no half cache
        shutil.move(str(part / root), str(staged / "llama.cpp"))
        try:
            os.replace(staged / "llama.cpp", dest)
        except OSError:  # another process got there first
            pass
        shutil.rmtree(staged, ignore_errors=True)
    return dest, ""


def converter() -> Path:
    """The folder holding convert_hf_to_gguf.py; skips (fails under GRAPHDSL_LCP_REQUIRED) without it."""
    import pytest
    where, why = _probe()
    if where is None:
        if os.environ.get("GRAPHDSL_LCP_REQUIRED"):
            pytest.fail(why)
        pytest.skip(why)
    return where


def convert(folder, out, outtype: str) -> Path:
    """``convert_hf_to_gguf.py --mmproj --outtype OUTTYPE --outfile OUT FOLDER``; asserts it exits 0."""
    script = converter() / "convert_hf_to_gguf.py"
    r = subprocess.run([sys.executable, str(script), "--mmproj", "--outtype", outtype, "--outfile", str(out),
                        str(folder)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"convert_hf_to_gguf.py failed ({r.returncode}):\n{r.stderr[-3000:]}"
    return Path(out)


def hub_layout(folder, renames: list[tuple[str, str]]) -> None:
    """Rename the saved weights' prefixes to the Hub's layout, which llama.cpp's converter reads:
    transformers 5 saves some models under its own module names (Gemma 3's ``vision_tower.``
    without ``vision_model.``)."""
    from safetensors.torch import load_file, save_file
    path = Path(folder) / "model.safetensors"
    sd = load_file(path)

    def rename(k):
        for a, b in renames:
            if k.startswith(a) and not k.startswith(b):
                return b + k[len(a):]
        return k
    save_file({rename(k): v for k, v in sd.items()}, path, metadata={"format": "pt"})
