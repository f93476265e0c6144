"""Draw graphdsl's structure from its own imports: files on floors, the circles, the imports back up.

    python scripts/structure.py              # one node per file (the measure of issue 24's done-when)
    python scripts/structure.py --packages   # each subpackage graphdsl/x/ as one node

Imports are read with `ast` (nothing is imported): `import graphdsl.x`, `from .x import y`, `from
graphdsl import x`, at module level and inside functions, and `importlib.import_module("graphdsl.x")`
or the CLI's `need("graphdsl.x")` by a literal name (as function-level imports). `from P import N`
names the module P.N where that file exists, else P itself (its __init__.py); `graphdsl._ggml`
(compiled, no source) is no node.
The parent packages Python also runs on the way are not edges, or every submodule would form a
circle with its package's __init__.py.

Nodes: one per file. The issue's circles name files (`convert/__init__.py`, `dataset/run.py`), and a
package as one node would hide them, or invent circles between packages whose files import each
other one way per file (convert/hf.py -> models/settings.py beside a models -> convert import).
`--packages` shows that coarser view; a package whose files form a circle stays split there too.

Circles: strongly connected components over all imports, module level and function level.
Floors: a node's floor is the longest path down to a leaf (floor 0 imports nothing in graphdsl),
circles collapsed, where inside a circle only its module-level imports count: the function-level
imports inside a circle are the ones that close it, and those that reach a node on a higher floor
than their importer "go back up" (a lower module reaching, lazily, into one that stands on it).
Outside circles every import points down by construction, so no circle means no import back up.
"""
from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "graphdsl"


@dataclass(frozen=True)
class Import:
    src: str  # importing module, dotted ("graphdsl.cli.parser")
    dst: str  # imported module, dotted
    line: int
    lazy: bool  # inside a function: runs when called, not when the module loads


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under root (packages by their __init__.py)."""
    out = {}
    for p in sorted(root.rglob("*.py")):
        parts = p.relative_to(root.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


# Imports by a literal name at run time: importlib's, and the CLI's `need` (graphdsl.cli.common), which
# wraps it to say which part is missing.
DYNAMIC = ("import_module", "need", "__import__")


def _dynamic(node) -> bool:
    if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)):
        return False
    name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
    return name in DYNAMIC and isinstance(node.args[0].value, str)


def _targets(mod: str, is_pkg: bool, node, known, root: Path) -> list[str]:
    if isinstance(node, ast.Call):
        return [node.args[0].value] if node.args[0].value.split(".")[0] == "graphdsl" else []
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "graphdsl"]
    if node.level:
        base = mod.split(".") if is_pkg else mod.split(".")[:-1]
        base = base[:len(base) - node.level + 1]
        pkg = ".".join(base + ([node.module] if node.module else []))
    else:
        pkg = node.module or ""
    if pkg.split(".")[0] != "graphdsl":
        return []
    out = []
    for a in node.names:  # a submodule by name, else a name defined in the package's __init__.py
        sub = f"{pkg}.{a.name}"
        out.append(sub if sub in known or _compiled(sub, root) else pkg)
    return list(dict.fromkeys(out))


def _compiled(name: str, root: Path) -> bool:
    """A module without Python source (graphdsl._ggml, the C++ bindings, known by its stub folder)."""
    return root.parent.joinpath(*name.split(".")).is_dir()


def imports(root: Path = ROOT) -> list[Import]:
    known = modules(root)
    found = []
    for mod, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        is_pkg = path.name == "__init__.py"

        def walk(node, lazy):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)) or _dynamic(child):
                    for dst in _targets(mod, is_pkg, child, known, root):
                        # `import graphdsl.x.name` names the module graphdsl.x
                        while dst not in known and "." in dst and not _compiled(dst, root):
                            dst = dst.rsplit(".", 1)[0]
                        if dst != mod and dst in known:  # the compiled bindings are no node
                            found.append(Import(mod, dst, child.lineno, lazy))
                walk(child, lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))
        walk(tree, False)
    return found


def sccs(nodes, edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative), each sorted."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for start in nodes:
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                out.append(sorted(comp))
    return out


def _file_edges(imps) -> dict[str, set[str]]:
    e = defaultdict(set)
    for i in imps:
        e[i.src].add(i.dst)
    return e


def _head(m: str) -> str:
    """The top-level name a module belongs to: "cli" for graphdsl.cli.parser, "__init__" for graphdsl."""
    parts = m.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def grouping(known, imps, root: Path = ROOT, packages: bool = False) -> dict[str, str]:
    """Module -> node name: its file ("convert/__init__.py"), or with `packages` its package ("convert/")."""
    inner = [c for c in sccs(list(known), _file_edges(imps)) if len(c) > 1 and len({_head(m) for m in c}) == 1]
    split = {_head(c[0]) for c in inner}
    node = {}
    for m, path in known.items():
        rel = path.relative_to(root).as_posix()
        in_pkg = "/" in rel
        node[m] = rel if not packages or not in_pkg or _head(m) in split else f"{_head(m)}/"
    return node


@dataclass
class Structure:
    nodes: list[str]
    floor: dict[str, int]
    circles: list[list[str]]
    back_up: list[tuple[Import, str, str]]  # (import, importer's node, target's node)
    edges: list[tuple[str, str, Import]]


def _floors(nodes, edges) -> dict[str, int]:
    """Longest path down to a leaf, each circle of `edges` collapsed into one node."""
    comp = {n: k for k, c in enumerate(sccs(nodes, edges)) for n in c}
    down = defaultdict(set)
    for a, bs in edges.items():
        down[comp[a]] |= {comp[b] for b in bs if comp[b] != comp[a]}
    memo: dict[int, int] = {}
    for c in sorted(set(comp.values())):  # Tarjan numbers a component after all it reaches
        memo[c] = 1 + max((memo[d] for d in down[c]), default=-1)
    return {n: memo[comp[n]] for n in nodes}


def structure(root: Path = ROOT, packages: bool = False) -> Structure:
    known = modules(root)
    imps = imports(root)
    node = grouping(known, imps, root, packages)
    edges = [(node[i.src], node[i.dst], i) for i in imps if node[i.src] != node[i.dst]]
    every = sorted(set(node.values()))
    allg = defaultdict(set)
    for a, b, _ in edges:
        allg[a].add(b)
    circles = [c for c in sccs(every, allg) if len(c) > 1]
    # Inside a circle only the module-level imports place the nodes on floors: the function-level
    # imports there are the ones that close it, and those that reach a higher floor go back up.
    within = {n: k for k, c in enumerate(circles) for n in c}
    placed = defaultdict(set)
    for a, b, i in edges:
        if not (i.lazy and a in within and within.get(b) == within[a]):
            placed[a].add(b)
    floor = _floors(every, placed)
    back = [(i, a, b) for a, b, i in edges if floor[b] > floor[a]]
    return Structure(every, floor, circles, back, edges)


def report(s: Structure, out=sys.stdout) -> None:
    def say(*a):
        print(*a, file=out)
    n_floors = max(s.floor.values(), default=-1) + 1
    say(f"{len(s.nodes)} nodes on {n_floors} floors, {len(s.circles)} circle(s), "
        f"{len(s.back_up)} import(s) back up a floor")
    for f in range(n_floors - 1, -1, -1):
        say(f"  floor {f:>2}: " + "  ".join(n for n in s.nodes if s.floor[n] == f))
    say("circles:" if s.circles else "circles: none")
    for c in s.circles:
        say("  " + " <-> ".join(c) + "   via " + ", ".join(
            f"{i.src}:{i.line}{' (lazy)' if i.lazy else ''} -> {i.dst}"
            for a, b, i in s.edges if a in c and b in c))
    say("imports back up a floor:" if s.back_up else "imports back up a floor: none")
    for i, a, b in s.back_up:
        say(f"  {a} (floor {s.floor[a]}) -> {b} (floor {s.floor[b]}): {i.src}:{i.line} imports {i.dst}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packages", action="store_true", help="each subpackage one node (default: each file)")
    ap.add_argument("--root", type=Path, default=ROOT, help="the package folder (default: graphdsl/)")
    args = ap.parse_args(argv)
    try:
        report(structure(args.root, args.packages))
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        sys.stdout = None
    return 0


if __name__ == "__main__":
    sys.exit(main())
