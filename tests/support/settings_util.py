"""Helpers for the settings tests: HF classes of each arch's model types, GGUF copies with a key
dropped or changed (negative controls), and the comparison every settings test makes."""
from __future__ import annotations

import importlib.util

import numpy as np
from hf_refs import need_torch

from graphdsl.convert.writer import write_gguf
from graphdsl.gguf_io import read_gguf
from graphdsl.models import settings as st

_SCALAR = {"u8": int, "u16": int, "u32": int, "u64": np.uint64, "i8": np.int32, "i16": np.int32,
           "i32": np.int32, "i64": np.int64, "f32": float, "f64": np.float64, "bool": bool, "str": str}


def rewrite_gguf(src, dst, drop=(), change=None) -> None:
    """Copy an f32 GGUF file without the keys in ``drop`` and with ``change`` {key: value} applied."""
    f = read_gguf(str(src))
    kv = []
    for key, v in f.metadata.items():
        if key in drop or key in ("general.architecture", "general.alignment"):
            continue
        t = f.value_types[key]
        kv.append((key, list(np.asarray(v).tolist()) if t.startswith("arr") else _SCALAR[t](v)))
    kv = [(k, (change or {}).get(k, v)) for k, v in kv] + [
        (k, v) for k, v in (change or {}).items() if k not in f.metadata]
    tensors = {n: (np.asarray(t.array, np.float32), "f32") for n, t in f.tensors.items()}
    write_gguf(str(dst), f.architecture, kv, tensors)


def hf_classes(model_type: str):
    """(config class instance with defaults, [image processor / feature extractor instances]) for an
    HF model_type; processors that need torchvision get tests/support/phi4_hf.py's workaround."""
    need_torch()
    import transformers
    from transformers import AutoConfig
    from transformers.models.auto.feature_extraction_auto import FEATURE_EXTRACTOR_MAPPING_NAMES
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES
    if model_type == "llava/pixtral":  # LLaVA around a Pixtral tower: Pixtral's processor
        from transformers import LlavaConfig, PixtralImageProcessorPil, PixtralVisionConfig
        return LlavaConfig(vision_config=PixtralVisionConfig()), [PixtralImageProcessorPil()]
    model_type = model_type.split("/")[0]
    cfg = AutoConfig.for_model(model_type)
    procs = []
    names = IMAGE_PROCESSOR_MAPPING_NAMES.get(model_type)
    if names:
        name = names.get("pil") or names.get("torchvision") if isinstance(names, dict) else names
        if name and name.startswith("Phi4"):
            procs.append(_phi4_processor_dict())
        elif name:
            procs.append(getattr(transformers, name)())
    fe = FEATURE_EXTRACTOR_MAPPING_NAMES.get(model_type)
    if fe:
        procs.append(getattr(transformers, fe)())
    return cfg, procs


def _phi4_processor_dict() -> dict:
    """Phi4MultimodalImageProcessor().to_dict(), made in a fresh Python (see tests/support/phi4_hf.py)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    import pytest
    from phi4_hf import TV_SITE
    if importlib.util.find_spec("torchvision") is None and not (TV_SITE / "torchvision").is_dir():
        pytest.skip("needs torchvision 0.28.0 in build/tv-site (make install)")
    code = (f"import sys, json; sys.path.insert(0, {str(Path(__file__).parent)!r}); from phi4_hf import "
            "torchvision_transforms; torchvision_transforms()\n"
            "from transformers.models.phi4_multimodal.image_processing_phi4_multimodal import "
            "Phi4MultimodalImageProcessor as P\nprint(json.dumps(P().to_dict(), default=str))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def processor_fields(procs) -> dict:
    out = {}
    for p in procs:
        d = p if isinstance(p, dict) else p.to_dict()
        out.update(st.leaves({k: (int(v) if hasattr(v, "value") and isinstance(v.value, int) else v)
                              for k, v in d.items()}))
    return out


def convert_and_match(folder, ref, embed, tmp_path, what: str, bound: float = 1e-5):
    """HF folder -> ``graphdsl convert`` -> ``embed(gguf, out) -> rows`` equals HF's ``ref`` (<= bound
    rel L2, same rows); returns the GGUF's path."""
    from cli_run import graphdsl
    from hf_refs import rel_err
    gguf = tmp_path / "m.gguf"
    graphdsl("convert", folder, "-o", gguf)
    got = embed(gguf, tmp_path / "e.npy")
    err = rel_err(got, ref) if got.shape == ref.shape else float("inf")
    print(f"{what}: {ref.shape[0]} rows, rel err {err:.2e}")
    assert err <= bound
    return gguf


def controls_miss(gguf, ref, embed, keys, tmp_path) -> None:
    """Negative controls: the file with each carried key dropped (a name) or set to a wrong value
    ((name, value)) no longer matches ``ref``: other rows, rel L2 > 1e-3, or ``embed`` returns None
    (a file that no longer loads)."""
    from hf_refs import rel_err
    for key in keys:
        key, value = key if isinstance(key, tuple) else (key, None)
        bad = tmp_path / "bad.gguf"
        rewrite_gguf(gguf, bad, drop=() if value is not None else (key,),
                     change={key: value} if value is not None else None)
        wrong = embed(bad, tmp_path / "w.npy")
        assert wrong is None or wrong.shape != ref.shape or rel_err(wrong, ref) > 1e-3, key


def convert_refuses(folder, tmp_path, preprocessor: dict, shown: str) -> str:
    """The folder's preprocessor_config.json with ``preprocessor`` merged in makes ``graphdsl convert``
    exit non-zero, write nothing and say ``preprocessor_config.json: SHOWN`` (the field and its value)."""
    import json
    import subprocess
    import sys
    conf_path = folder / "preprocessor_config.json"
    conf = json.loads(conf_path.read_text()) if conf_path.exists() else {}
    conf_path.write_text(json.dumps({**conf, **preprocessor}))
    out = tmp_path / "m.gguf"
    r = subprocess.run([sys.executable, "-m", "graphdsl.cli", "convert", str(folder), "-o", str(out)],
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode != 0 and not out.exists()
    assert f"preprocessor_config.json: {shown}" in r.stderr, r.stderr
    return r.stderr
