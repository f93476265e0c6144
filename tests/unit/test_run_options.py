"""RunOptions: one value with one set of defaults, resolved the same way by every layer."""
import dataclasses
import inspect
import pickle

import numpy as np
import pytest

import graphdsl
from graphdsl import Graph, RunOptions, ops
from graphdsl.dataset.run import model_config
from graphdsl.embed import Embedder, FileEmbedder, embed_files
from graphdsl.models import text


def test_one_default_everywhere():
    """No layer keeps a default of its own: each signature leaves the option unset (None) and
    resolves it through RunOptions, whose backend is "auto" (the best devices present)."""
    assert RunOptions().backend == "auto" and RunOptions().precision == "f32" and RunOptions().check_finite
    for fn in (graphdsl.compile, Embedder.__init__, FileEmbedder.__init__, embed_files, model_config):
        params = inspect.signature(fn).parameters
        assert "options" in params, fn.__qualname__
        for name in ("backend", "precision", "n_threads"):
            assert params[name].default is None, (fn.__qualname__, name)
    assert Embedder(None, {}).options == RunOptions()
    cfg = model_config()
    assert {k: cfg[k] for k in RunOptions().as_dict()} == RunOptions().as_dict()


def test_of_folds_keywords_into_options():
    base = RunOptions(n_threads=2)
    assert RunOptions.of(base, precision="fast") == RunOptions(n_threads=2, precision="fast")
    assert RunOptions.of(base, n_threads=2) == base  # the same value twice is no conflict
    assert RunOptions.of(None, backend="cpu", n_threads=None) == RunOptions(backend="cpu")  # None: not given
    assert RunOptions.of(RunOptions(), backend="cpu").backend == "cpu"  # a field left at its default is unset
    with pytest.raises(TypeError, match=r"unknown option\(s\) threads"):
        RunOptions.of(base, threads=2)
    with pytest.raises(TypeError, match="options must be a RunOptions"):
        RunOptions.of({"backend": "cpu"})
    with pytest.raises(ValueError, match=r"n_threads=4 contradicts options.n_threads=2"):
        RunOptions.of(base, n_threads=4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.backend = "cpu"
    assert pickle.loads(pickle.dumps(base)) == base  # sent to worker processes


def _graph():
    g = Graph("mlp")
    x = g.input("x", (3, 8))
    g.output("y", ops.linear(x, g.weight("w", (4, 8))))
    return g, {"w": np.ones((4, 8), np.float32)}, np.ones((3, 8), np.float32)


def test_compile_takes_options():
    from graphdsl.backends.reference import ReferenceExecutor
    g, w, x = _graph()
    run = graphdsl.compile(g, options=RunOptions(backend="reference"), weights=w)
    assert isinstance(run, ReferenceExecutor)
    np.testing.assert_array_equal(run(x=x)["y"], np.full((3, 4), 8, np.float32))
    with pytest.raises(ValueError, match="backend='cpu' contradicts options.backend='reference'"):
        graphdsl.compile(g, "cpu", options=RunOptions(backend="reference"))
    cpu = graphdsl.compile(g, options=RunOptions(backend="cpu", n_threads=1), weights=w)
    assert not isinstance(cpu, ReferenceExecutor)
    np.testing.assert_array_equal(cpu(x=x)["y"], run(x=x)["y"])


def test_embedder_compiles_with_its_options():
    tb = text.TextEmbedding(text.TextConfig(8, 4))
    table = np.arange(32, dtype=np.float32).reshape(8, 4)
    emb = Embedder(tb, options=RunOptions(backend="reference"), weights={"token_embd.weight": table})
    np.testing.assert_array_equal(emb([np.array([1, 3], np.int32)]).embd, table[[1, 3]])
    from graphdsl.backends.reference import ReferenceExecutor
    assert all(isinstance(e, ReferenceExecutor) for e in emb._exes.values())
    assert (emb.backend, emb.precision) == ("reference", "f32")
    with pytest.raises(ValueError, match="n_threads=2 contradicts options.n_threads=1"):
        Embedder(tb, options=RunOptions(backend="reference", n_threads=1), n_threads=2)


def test_dataset_config_carries_the_options_to_workers():
    cfg = model_config(options=RunOptions(precision="fast", strict=True), n_threads=3)
    assert (cfg["precision"], cfg["strict"], cfg["n_threads"], cfg["backend"]) == ("fast", True, 3, "auto")
    # the workers build FileEmbedder(**cfg): every key is one of its keywords
    assert set(cfg) <= set(inspect.signature(FileEmbedder.__init__).parameters)
    with pytest.raises(TypeError, match="gpu"):
        model_config(gpu=True)
