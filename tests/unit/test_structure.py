"""The package's drawn structure (scripts/structure.py, issue 24): no import circle, no import back up
a floor but the `graphdsl.compile` facade, and no file in graphdsl/ over 400 lines."""
from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("structure", REPO / "scripts" / "structure.py")
structure = sys.modules["structure"] = importlib.util.module_from_spec(_spec)  # dataclasses look it up
_spec.loader.exec_module(structure)

# graphdsl/__init__.py's compile() and devices() reach the backends lazily, so that `import graphdsl`
# stays light; the one import allowed to point up the floors.
FACADE = ("graphdsl", "graphdsl.backends.")


@pytest.mark.parametrize("packages", [False, True], ids=["files", "packages"])
def test_no_circles(packages):
    s = structure.structure(packages=packages)
    assert s.circles == [], f"import circles: {s.circles}"


def test_at_most_the_facade_goes_back_up():
    s = structure.structure()
    other = [f"{i.src}:{i.line} -> {i.dst}" for i, _, _ in s.back_up
             if not (i.src == FACADE[0] and i.dst.startswith(FACADE[1]))]
    assert other == [], f"imports back up a floor: {other}"
    assert len(s.back_up) <= 1


def test_no_file_over_400_lines():
    long = {p.relative_to(REPO).as_posix(): n for p in sorted((REPO / "graphdsl").rglob("*.py"))
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400}
    assert long == {}


def _tree(tmp_path, files: dict[str, str]) -> Path:
    root = tmp_path / "graphdsl"
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
    return root


def test_finds_a_circle_and_the_import_back_up(tmp_path):
    # the negative control: a lazy import from a package's __init__ into the CLI that imports it
    root = _tree(tmp_path, {
        "__init__.py": "",
        "cli.py": "from . import parser\n",
        "parser.py": "from .conv import x\n",
        "conv/__init__.py": "from .writer import w\ndef main():\n    from ..cli import main\n",
        "conv/writer.py": "import graphdsl.fileio\n",
        "fileio.py": "",
    })
    s = structure.structure(root)
    assert s.circles == [["cli.py", "conv/__init__.py", "parser.py"]]
    assert [(i.src, i.dst) for i, _, _ in s.back_up] == [("graphdsl.conv", "graphdsl.cli")]
    assert s.floor["fileio.py"] == 0 and s.floor["conv/writer.py"] == 1
    assert s.floor["cli.py"] > s.floor["parser.py"]


def test_clean_tree_has_no_circle(tmp_path):
    root = _tree(tmp_path, {
        "__init__.py": "from . import graph\ndef compile():\n    from .backends.ggml import E\n",
        "graph.py": "",
        "backends/__init__.py": "",
        "backends/ggml.py": "from graphdsl import graph, _ggml\n",
        "_ggml/__init__.pyi": "",
    })
    s = structure.structure(root)
    assert s.circles == [] and s.back_up == []
    assert s.floor["__init__.py"] == 2 and s.floor["backends/ggml.py"] == 1
