"""Settings carried by construction (graphdsl.models.settings): every field of each arch's HF
config and processor classes is declared carried, refused or irrelevant, and what is declared
is honoured (tests/test_settings_<arch>.py compare non-default checkpoints with HF).
"""
from __future__ import annotations

import pytest
from settings_util import hf_classes, processor_fields

from graphdsl.models import registry
from graphdsl.models import settings as st

# HF's Phi-4 processor needs torchvision, which runs beside the venv in a child (tests/support/phi4_hf.py)
CASES = [pytest.param(a.name, t, id=t, marks=[pytest.mark.children] if t == "phi4_multimodal" else [])
         for a in registry.ARCHS.values() for t in a.hf_model_types]


def _settings(a):
    """An arch's declarations and those of the companion encoders converted from the same checkpoint
    (Phi-4-multimodal's audio beside its vision)."""
    return (*a.settings, *(s for n in a.companions for s in registry.ARCHS[n].settings))


@pytest.mark.parametrize("arch,model_type", CASES)
def test_every_hf_field_is_declared(arch, model_type):
    """The HF config (sub-configs included) and image processor / feature extractor of the model
    type, at their defaults: each field has a declaration; the failure lists the undeclared ones."""
    cfg, procs = hf_classes(model_type)
    a = registry.ARCHS[arch]
    fields = st.leaves(st.view(cfg.to_dict()))
    missing = [f"config.json: {p}" for p in st.undeclared(_settings(a), "config", fields)]
    missing += [f"preprocessor_config.json: {p}"
                for p in st.undeclared(_settings(a), "processor", processor_fields(procs))]
    assert not missing, f"{arch} ({model_type}) declares nothing for: " + ", ".join(missing)


@pytest.mark.parametrize("arch,model_type", CASES)
def test_declared_defaults_are_hf_defaults(arch, model_type):
    """A processor field carried with a fixed default, or refused unless at its default, names
    the default HF's class has (what a file without the key, or a checkpoint without the field,
    is read as)."""
    cfg, procs = hf_classes(model_type)
    fields = processor_fields(procs)
    a = registry.ARCHS[arch]
    wrong = []
    for s in _settings(a):
        if s.source != "processor" or s.path not in fields or callable(s.default) or s.default is st.MISSING:
            continue
        if not st._same(_plain(fields[s.path]), _plain(s.default)):
            wrong.append(f"{s.path}: declared {s.default!r}, HF {fields[s.path]!r}")
    assert not wrong, wrong


def _plain(v):
    return [_plain(x) for x in v] if isinstance(v, (list, tuple)) else v


def test_a_setting_takes_exactly_one_treatment():
    with pytest.raises(RuntimeError, match="exactly one"):
        st.Setting("processor", "x", carry="k", irrelevant="why", default=1)
    with pytest.raises(RuntimeError, match="needs HF's default"):
        st.Setting("processor", "x", carry="k")
    with pytest.raises(RuntimeError, match="reason"):
        st.Setting("config", "x", refuse=lambda v, ck: True)


def test_undeclared_lists_what_is_missing():
    """The introspection's negative control: a field nobody declares is listed, by path."""
    s = (st.irrelevant("config", "text_config.*", "decoder"), st.carried("config", "vision_config.a", "k"))
    fields = st.leaves({"text_config": {"x": 1}, "vision_config": {"a": 1, "b": 2}, "return_dict": True})
    assert st.undeclared(s, "config", fields) == ["vision_config.b"]


@pytest.mark.children
def test_refused_config_field_stops_convert(tmp_path):
    """A config.json field graphdsl cannot honour (BERT's relative positions) stops convert before
    any weight is read, naming the file, the field and the value; absolute positions convert."""
    import json
    import subprocess
    import sys

    from hf_refs import bert_tiny
    _, m = bert_tiny()
    folder = tmp_path / "hf"
    m.save_pretrained(folder)
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    (folder / "vocab.txt").write_text("\n".join(special + [f"w{i}" for i in range(m.config.vocab_size - 5)]) + "\n")
    conf = json.loads((folder / "config.json").read_text())
    outs = {}
    for kind in ("absolute", "relative_key"):
        (folder / "config.json").write_text(json.dumps({**conf, "position_embedding_type": kind}))
        out = tmp_path / f"{kind}.gguf"
        outs[kind] = subprocess.run([sys.executable, "-m", "graphdsl.cli", "convert", str(folder), "-o", str(out)],
                                    capture_output=True, text=True, timeout=300, check=False), out
    (ok, ok_out), (bad, bad_out) = outs["absolute"], outs["relative_key"]
    assert ok.returncode == 0 and ok_out.exists(), ok.stderr[-2000:]
    assert bad.returncode != 0 and not bad_out.exists()
    assert "config.json: position_embedding_type='relative_key' is not supported by graphdsl (text)" in bad.stderr
