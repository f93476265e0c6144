"""The type stub graphdsl/_ggml/*.pyi names exactly what the extension binds.

It is generated (`make stub`, pybind11-stubgen); this test says when to run that again.
"""
import ast
from pathlib import Path

import pytest

from graphdsl import _ggml

STUBS = Path(__file__).parents[2] / "graphdsl" / "_ggml"


def _stub_names(path: Path) -> dict[str, set[str]]:
    """Top-level names ("" key) and, per class, its members, as the stub declares them."""
    tree = ast.parse(path.read_text())
    out: dict[str, set[str]] = {"": set()}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            out[""].add(node.name)
        if isinstance(node, ast.ClassDef):
            out[node.name] = {n.name if isinstance(n, ast.FunctionDef) else n.target.id
                              for n in node.body if isinstance(n, (ast.FunctionDef, ast.AnnAssign))}
    return out


def _public(obj) -> set[str]:
    return {n for n in vars(obj) if not n.startswith("_")}


@pytest.mark.parametrize("module,stub", [(_ggml, "__init__.pyi"), (_ggml.ops, "ops.pyi")], ids=["_ggml", "ops"])
def test_stub_matches_the_extension(module, stub):
    declared = _stub_names(STUBS / stub)
    bound = {n for n in _public(module) if n != "ops" and callable(getattr(module, n))}
    assert declared[""] == bound, "run `make stub`"
    for cls in (c for c in declared if c):
        members = {n for n in declared[cls] if not n.startswith("_")}
        assert members == _public(getattr(module, cls)), f"{cls}: run `make stub`"
