"""The examples in the docstrings of the modules a new model is written against run, and say
what they print (graph, ops, blocks, inp_embd, models, the package)."""
from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest


def _modules():
    names = ["graphdsl", "graphdsl.graph", "graphdsl.inp_embd", "graphdsl.options"]
    for pkg in ("graphdsl.ops", "graphdsl.blocks", "graphdsl.models"):
        mod = importlib.import_module(pkg)
        names += [pkg] + [f"{pkg}.{m.name}" for m in pkgutil.iter_modules(mod.__path__)]
    return names


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples_run(name):
    mod = importlib.import_module(name)
    res = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert res.failed == 0, f"{res.failed} of {res.attempted} examples in {name} failed (run pytest --doctest-modules)"


def test_a_wrong_example_fails():
    """Negative control: doctest really compares."""
    def f():
        """
        >>> 1 + 1
        3
        """
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(verbose=False)
    for t in finder.find(f, "f", globs={}):
        runner.run(t, out=lambda s: None)
    assert runner.failures == 1
