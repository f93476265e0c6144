"""The media-model protocol (models.base.Block) as embed uses it: one build path for every model,
per-layer outputs (Qwen3-VL's deepstack layout), the defaults, and the typed Arch record."""
import dataclasses

import numpy as np
import pytest
from target import BACKEND, assert_close

from graphdsl import blocks
from graphdsl.embed import Embedder, build_mixed
from graphdsl.models import registry, text
from graphdsl.models.base import Block

N_OUT, D_IN = 6, 4


class _Cfg:
    n_out = N_OUT


class _Deep(Block):
    """Rows (n, 4) -> (n, N_OUT * (1 + n_per_layer)): the embedding, then each layer's features."""

    kind = "image"
    example = ((1, 2, D_IN), "f32")

    def __init__(self, n_per_layer: int, width: int | None = None):
        super().__init__(_Cfg())
        self.n_per_layer = n_per_layer
        self.width = width or N_OUT * (1 + n_per_layer)

    def rows(self, data):
        return np.asarray(data, np.float32)[None]

    def _build(self, x):
        return blocks.linear(x, "deep.proj", self.width, bias=False)


def _batch(rng):
    ids_a, ids_b = np.array([1, 2, 3], np.int32), np.array([4], np.int32)
    x, y = (rng.standard_normal((n, D_IN)).astype(np.float32) for n in (2, 5))
    return [ids_a, ("image", x), ids_b, ("image", y)], (ids_a, x, ids_b, y)


@pytest.mark.parametrize("backend", ["reference", BACKEND])
def test_per_layer_outputs_split_into_embd_and_per_layer(backend):
    rng = np.random.default_rng(0)
    n_layer = 2
    w = rng.standard_normal((N_OUT * (1 + n_layer), D_IN)).astype(np.float32)
    table = rng.standard_normal((8, N_OUT)).astype(np.float32)
    emb = Embedder(text.TextEmbedding(text.TextConfig(8, N_OUT)), {"image": _Deep(n_layer)}, backend=backend,
                   weights={"deep.proj.weight": w, "token_embd.weight": table})
    items, (ids_a, x, ids_b, y) = _batch(rng)
    out = emb(items)
    assert [(s.kind, s.start, s.n_tokens) for s in out.spans] == [("text", 0, 3), ("image", 3, 2), ("text", 5, 1),
                                                                   ("image", 6, 5)]
    full = {3: x @ w.T, 6: y @ w.T}  # (n, N_OUT * 3): [embedding | layer 0 | layer 1]
    want_embd = np.concatenate([table[ids_a], full[3][:, :N_OUT], table[ids_b], full[6][:, :N_OUT]])
    assert_close(out.embd, want_embd)
    assert out.per_layer.shape == (n_layer, 11, N_OUT)
    want = np.zeros((n_layer, 11, N_OUT), np.float32)
    for start, f in full.items():
        for layer in range(n_layer):
            want[layer, start:start + len(f)] = f[:, N_OUT * (1 + layer):N_OUT * (2 + layer)]
    assert_close(out.per_layer, want)
    assert not out.per_layer[:, [0, 1, 2, 5]].any()  # text rows: nothing is added there
    # negative control: reading the layers in the other order (layer-major within a row) misses
    swapped = want[::-1]
    assert not np.allclose(out.per_layer, swapped, atol=1e-3)


def test_per_layer_is_none_without_such_models_and_the_width_is_checked():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((N_OUT, D_IN)).astype(np.float32)
    plain = Embedder(None, {"image": _Deep(0)}, backend="reference", weights={"deep.proj.weight": w})
    assert plain([("image", np.ones((2, D_IN), np.float32))]).per_layer is None
    with pytest.raises(RuntimeError, match=r"n_per_layer 2: its rows must be inline and 6 x 3 = 18 wide"):
        build_mixed([("image", np.ones((2, D_IN), np.float32))], None, {"image": _Deep(2, width=12)})
    with pytest.raises(RuntimeError, match="must be inline"):  # deepstack rows are never cross memories
        build_mixed([("image", np.ones((2, D_IN), np.float32))], None, {"image": _Deep(2)}, cross={"image"})


def test_stacked_items_key_the_cache_by_their_groups():
    """[a, b, a'] and [a, a', b] feed arrays of the same shapes; the default build_items' key tells
    them apart, so the second batch does not reuse the first one's graph (which would put b second)."""
    rng = np.random.default_rng(2)
    w = rng.standard_normal((N_OUT, D_IN)).astype(np.float32)
    emb = Embedder(None, {"image": _Deep(0)}, backend="reference", weights={"deep.proj.weight": w})
    a, a2, b = (rng.standard_normal((n, D_IN)).astype(np.float32) for n in (2, 2, 3))
    for order in ([a, b, a2], [a, a2, b]):
        out = emb([("image", d) for d in order])
        assert_close(out.embd, np.concatenate(order) @ w.T)
    assert len(emb._exes) == 2


def test_media_models_must_be_blocks_and_the_defaults_say_what_is_missing():
    class Duck:
        example = ((1, 2, D_IN), "f32")
    with pytest.raises(TypeError, match=r"the 'image' model is a Duck, not a graphdsl.models.base.Block"):
        build_mixed([("image", np.ones((2, D_IN)))], None, {"image": Duck()})
    deep = _Deep(0)
    assert (deep.output, deep.has_positions, deep.valid_rows(None), dict(deep.image_kw)) == ("inline", False, None, {})
    with pytest.raises(NotImplementedError, match="no M-RoPE positions"):
        deep.positions(None, 0)
    with pytest.raises(NotImplementedError, match="through build_items, not rows"):
        Block(None).rows(None)


def test_arch_records_are_typed():
    fields = {f.name for f in dataclasses.fields(registry.Arch)}
    assert "extra" not in fields and "frames" not in fields
    assert {"prepare", "needs_text", "companions", "hf_dir", "text_conversion"} <= fields
    archs = registry.ARCHS
    assert archs["phi4_vision"].companions == ("phi4_audio",) and archs["minicpmv"].needs_text
    assert archs["pixtral"].hf_dir is not None and archs["phi4_audio"].prepare is not None
    assert isinstance(archs["text"].text_conversion, registry.TextConversion)
    for a in archs.values():
        assert all(c in archs for c in a.companions), a.name
        if a.modality != "text":
            assert issubclass(a.block, Block) and a.block.output == a.output, a.name


def test_register_refuses_a_media_block_outside_the_protocol():
    clip = registry.ARCHS["clip"]
    with pytest.raises(RuntimeError, match="must be a models.base.Block"):
        registry.register(dataclasses.replace(clip, name="not_a_block", block=object, hf_model_types=()))
    with pytest.raises(RuntimeError, match="must be a models.base.Block whose output is the arch's 'cross'"):
        registry.register(dataclasses.replace(clip, name="wrong_output", output="cross", hf_model_types=()))
    with pytest.raises(RuntimeError, match="declares no text_conversion"):
        registry.register(dataclasses.replace(registry.ARCHS["text"], name="bare_text", text_conversion=None,
                                              hf_model_types=()))
    assert not {"not_a_block", "wrong_output", "bare_text"} & set(registry.ARCHS)
