"""The architecture registry: every record complete, and config -> config_to_gguf -> GGUF file ->
config_from_gguf the identity for each registered mmproj architecture (canonical configs: the
fields a file cannot hold, such as the width of a projector that is absent, at their defaults)."""
from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from graphdsl.convert.writer import write_gguf
from graphdsl.gguf_io import MMPROJ_ARCH, load_mmproj
from graphdsl.models import ARCHS, arch_for, clip, registry, siglip

CANONICAL = {a.name: a.examples for a in ARCHS.values()}
MMPROJ_ARCHS = [a for a in ARCHS.values() if a.modality in ("image", "audio")]


def _file(tmp_path, arch, cfg):
    rng = np.random.default_rng(0)
    shapes = arch.block and {k: n.shape for k, n in _weights(arch, cfg).items()}
    tensors = {k: ((rng.standard_normal(s) * 0.1).astype(np.float32), "f32") for k, s in shapes.items()}
    path = tmp_path / f"{arch.name}.gguf"
    kv = [("general.name", arch.name), *arch.config_to_gguf(cfg)]
    write_gguf(str(path), MMPROJ_ARCH, kv, tensors)
    return path


def _weights(arch, cfg):
    from graphdsl.models.common import declared_weights
    return declared_weights(arch.block(cfg))


def _plain(cfg):
    return dataclasses.replace(cfg, wtypes={})


def test_every_record_is_complete():
    assert {"clip", "siglip", "whisper_enc", "text"} <= set(ARCHS)
    for a in ARCHS.values():
        for fn in (a.config_from_hf, a.config_from_gguf, a.config_to_gguf, a.hf_to_gguf):
            assert callable(fn), (a.name, fn)
        assert a.modality != "image" or a.image is not None, f"{a.name}: a vision arch needs its pre-processing"
        assert a.modality == "text" or a.projectors, f"{a.name} serves no projector type"
        # MiniCPM-V and MobileVLM ship as HF remote code: no model type to convert, files only
        assert not a.hf_model_types or registry.for_hf(a.hf_model_types[0]) is a


@pytest.mark.parametrize("arch", MMPROJ_ARCHS, ids=lambda a: a.name)
def test_config_survives_a_gguf_file(tmp_path, arch):
    assert arch.examples, f"{arch.name} registers no example configs (Arch.examples)"
    for cfg in CANONICAL[arch.name]:
        path = _file(tmp_path, arch, cfg)
        m, _ = load_mmproj(path)
        section = "vision" if arch.modality == "image" else "audio"
        assert arch_for(m, section) is arch
        assert _plain(arch.config_from_gguf(m)) == _plain(cfg)


def test_a_config_field_the_file_loses_is_caught(tmp_path):
    """Negative control: a config_to_gguf that forgets a key (the feature layers) breaks the identity."""
    arch, cfg = ARCHS["clip"], CANONICAL["clip"][1]
    lossy = dataclasses.replace(arch, config_to_gguf=lambda c: [kv for kv in clip.config_to_gguf(c)
                                                                 if kv[0] != "clip.vision.feature_layer"])
    m, _ = load_mmproj(_file(tmp_path, lossy, cfg))
    assert _plain(arch.config_from_gguf(m)) != _plain(cfg)


def test_unknown_projector_lists_the_registered_ones(tmp_path):
    arch, cfg = ARCHS["clip"], CANONICAL["clip"][0]
    path = tmp_path / "x.gguf"
    kv = [(k, "adapter" if k == "clip.projector_type" else v) for k, v in arch.config_to_gguf(cfg)]
    shapes = {k: n.shape for k, n in _weights(arch, cfg).items()}
    write_gguf(str(path), MMPROJ_ARCH, kv, {k: (np.zeros(s, np.float32), "f32") for k, s in shapes.items()})
    m, _ = load_mmproj(path)
    known = ", ".join(sorted({p for a in ARCHS.values() if a.modality == "image" for p in a.projectors}))
    with pytest.raises(ValueError, match=rf"projector type 'adapter' is not supported by graphdsl.models "
                                         rf"\(supported: {re.escape(known)}\)"):
        arch_for(m, "vision")


def test_unknown_hf_model_type_lists_the_convertible_ones():
    with pytest.raises(ValueError, match=r"cannot convert HF model_type 'mobilevlm'; supported: .*llava"):
        registry.for_hf("mobilevlm")


def test_hf_to_gguf_says_which_keys_no_rule_matched():
    """A checkpoint under a prefix the converter does not strip: the error shows its keys."""
    cfg = CANONICAL["clip"][1]
    sd = {f"wrapper.vision.{k}": v for k, v in {"embeddings.class_embedding": np.zeros(32, np.float32)}.items()}
    with pytest.raises(ValueError, match=r"missing .*v\.class_embd.*matched no rule after stripping the prefixes "
                                         r"\['model\.vision_tower\.vision_model\.'.*'wrapper\.vision\.embeddings"):
        clip.hf_to_gguf(sd, cfg)


def test_a_config_of_another_registered_arch_is_refused():
    with pytest.raises(ValueError, match=r"an HF model_type .llava. is built by graphdsl.models.clip"):
        siglip.config_from_hf({"model_type": "llava", "vision_config": {}})


def test_a_user_block_needs_no_file_types():
    """Block.__call__ used to read cfg.wtypes, an AttributeError for a user's own config."""
    from graphdsl import Graph, ops
    from graphdsl.models.common import Block

    class Scale(Block):
        kind = "image"

        def _build(self, x):
            return ops.scale(x, self.cfg.k, 0.0)

    @dataclasses.dataclass(frozen=True)
    class Cfg:
        k: float = 2.0

    g = Graph("u")
    assert Scale(Cfg())(g.input("x", (2, 3))).shape == (2, 3)


def test_a_wrapper_around_another_arch_s_tower_is_refused():
    """A LLaVA config holding a SigLIP tower is not a CLIP one (it would be read with CLIP's eps/act)."""
    d = {"model_type": "llava", "vision_config": {"model_type": "siglip_vision_model"}, "text_config": {}}
    with pytest.raises(ValueError, match=r"vision_config.model_type 'siglip_vision_model' is built by "
                                         r"graphdsl.models.siglip"):
        clip.config_from_hf(d)


@pytest.mark.parametrize("layers", [(2, 1), (1, 1), (0,)])
def test_feature_layers_llama_cpp_would_misread_are_not_written(layers):
    """llama.cpp concatenates feature layers ascending and once each (and needs a block)."""
    cfg = dataclasses.replace(CANONICAL["clip"][1], feature_layer=layers)
    with pytest.raises(ValueError, match="cannot be written as llama.cpp reads them"):
        clip.config_to_gguf(cfg)
