"""Reading HF checkpoint folders: config.json, *.safetensors (single or sharded) or pytorch_model.bin.

safetensors files are parsed here (an 8-byte header length, a JSON header, raw little-endian
data) and memory-mapped, so bf16 checkpoints load without torch; pytorch_model.bin needs torch.
Every tensor comes back as a NumPy array (bf16 widened to f32).
"""
from __future__ import annotations

import json
import os
import struct

import numpy as np

from .. import dtypes as dt

_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I64": np.int64,
              "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def load_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read JSON ({e})") from None


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """name -> array (memory-mapped where the dtype allows; bf16 becomes f32)."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: too short for a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise ValueError(f"{path}: header length {n} runs past the end of the file ({size} bytes)")
        try:
            header = json.loads(fh.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: bad safetensors header ({e})") from None
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n) if size > 8 + n else np.zeros(0, np.uint8)
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = np.dtype(_ST_DTYPES[info["dtype"]])
            shape = tuple(int(s) for s in info["shape"])
            a, b = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: tensor {name!r} has a bad header entry {info!r}") from None
        if not 0 <= a <= b <= data.size or b - a != int(np.prod(shape)) * dtype.itemsize:
            raise ValueError(f"{path}: tensor {name!r} data [{a}, {b}) does not fit shape {shape} {info['dtype']}")
        arr = data[a:b].view(dtype).reshape(shape)
        out[name] = dt.bf16_to_f32(arr) if info["dtype"] == "BF16" else arr
    return out


def read_torch_bin(path: str) -> dict[str, np.ndarray]:
    import torch  # only for pytorch_model.bin

    sd = torch.load(path, map_location="cpu", weights_only=True)
    return {k: (v.float() if v.dtype == torch.bfloat16 else v).numpy() for k, v in sd.items()
            if hasattr(v, "numpy")}


def load_state_dict(hf_dir: str) -> dict[str, np.ndarray]:
    """All tensors of an HF folder: model.safetensors, sharded safetensors (via the index) or .bin."""
    files = sorted(os.listdir(hf_dir))
    index = [f for f in files if f.endswith(".safetensors.index.json")]
    if index:
        shards = sorted(set(load_json(os.path.join(hf_dir, index[0])).get("weight_map", {}).values()))
    else:
        shards = [f for f in files if f.endswith(".safetensors")]
    if shards:
        sd: dict[str, np.ndarray] = {}
        for s in shards:
            sd.update(read_safetensors(os.path.join(hf_dir, s)))
        return sd
    bins = [f for f in files if f.startswith("pytorch_model") and f.endswith(".bin")]
    if bins:
        sd = {}
        for b in bins:
            sd.update(read_torch_bin(os.path.join(hf_dir, b)))
        return sd
    raise ValueError(f"{hf_dir}: no *.safetensors or pytorch_model*.bin checkpoint found")


def load_hf(hf_dir: str):
    """(config.json, a function returning the state dict, preprocessor_config.json or {}) of an HF
    model folder; the weights are read only when asked for (after the config was checked)."""
    if not os.path.isdir(hf_dir):
        raise ValueError(f"{hf_dir}: not a directory")
    config = load_json(os.path.join(hf_dir, "config.json"))
    return config, lambda: load_state_dict(hf_dir), load_preprocessor(hf_dir)


def load_tokenizer_config(hf_dir: str) -> dict:
    """The tokenizer's settings (tokenizer_config.json), {} without one."""
    path = os.path.join(hf_dir, "tokenizer_config.json")
    return load_json(path) if os.path.exists(path) else {}


def load_preprocessor(hf_dir: str) -> dict:
    """The image processor's / feature extractor's settings: preprocessor_config.json, else (what
    transformers 5's ``ProcessorMixin.save_pretrained`` writes instead) the ``image_processor``,
    ``feature_extractor`` and ``audio_processor`` parts of processor_config.json; {} without either."""
    pre_path = os.path.join(hf_dir, "preprocessor_config.json")
    if os.path.exists(pre_path):
        return load_json(pre_path)
    proc_path = os.path.join(hf_dir, "processor_config.json")
    if not os.path.exists(proc_path):
        return {}
    proc, out = load_json(proc_path), {}
    for part in ("feature_extractor", "audio_processor", "image_processor"):  # image last: its keys win
        sub = proc.get(part)
        if isinstance(sub, dict):
            out.update(sub)
    return out
