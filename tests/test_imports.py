"""The package's import graph, read with ``ast`` (nothing is imported): no cycles, no upward
imports, and no import of the package's own modules inside a function (those hide cycles).

Layers, lowest first; a module may import its own layer and those below it:

0. ``utils``
1. ``presets``, ``datasets``, ``viz``
2. the lesson (model) modules: never the training code
3. ``training`` (everything that trains)
4. the command-line front ends: ``__main__``, ``course``, ``train`` (deprecated alias)
"""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "dalle_mini_impl"
FRONT_ENDS = {"__main__", "course", "train"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) or "__init__"


def layer(name: str) -> int:
    top = name.split(".")[0]
    if top == "utils":
        return 0
    if top in ("presets", "datasets", "viz"):
        return 1
    if top == "training":
        return 3
    if top in FRONT_ENDS or name == "__init__":
        return 4 if top in FRONT_ENDS else 1
    return 2


def _resolve(mod: str, node: ast.ImportFrom) -> list[str]:
    """Package modules named by a ``from ... import ...`` in module ``mod`` (relative or absolute)."""
    if node.level:
        base = mod.split(".")
        is_package = (PKG / Path(*base) / "__init__.py").is_file() if mod != "__init__" else True
        keep = len(base) - node.level + (1 if is_package else 0)
        parent = [] if mod == "__init__" else base[:max(keep, 0)]
        target = parent + (node.module.split(".") if node.module else [])
    elif node.module and node.module.split(".")[0] == "dalle_mini_impl":
        target = node.module.split(".")[1:]
    else:
        return []
    names = []
    for alias in node.names:  # "from . import bpe" names a module; "from .x import f" a function
        candidate = target + [alias.name]
        if (PKG / Path(*candidate)).with_suffix(".py").is_file() or (PKG / Path(*candidate) / "__init__.py").is_file():
            names.append(".".join(candidate))
        elif target:
            names.append(".".join(target))
    return names


def graph() -> tuple[dict[str, set[str]], list[str]]:
    edges: dict[str, set[str]] = {}
    inside_functions = []
    for path in sorted(PKG.rglob("*.py")):
        mod = module_name(path)
        tree = ast.parse(path.read_text(), str(path))
        edges[mod] = set()
        funcs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        nested = {id(n) for f in funcs for n in ast.walk(f) if n is not f}
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.ImportFrom):
                targets = _resolve(mod, node)
            elif isinstance(node, ast.Import):
                targets = [a.name.split(".", 1)[1] for a in node.names if a.name.startswith("dalle_mini_impl.")]
            targets = [t for t in targets if t != mod]
            edges[mod].update(targets)
            if targets and id(node) in nested:
                inside_functions.append(f"{mod}: line {node.lineno} imports {sorted(set(targets))}")
    return edges, inside_functions


def test_the_graph_is_read():
    edges, _ = graph()
    assert "training.dalle" in edges and "dalle" in edges["training.dalle"]
    assert "transformer" in edges["dalle"] and "tokenizer" in edges["dalle"]


def test_no_import_of_the_package_inside_functions():
    _, inside = graph()
    assert not inside, "\n".join(inside)


def test_no_upward_import():
    edges, _ = graph()
    upward = [f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
              for a, targets in edges.items() for b in targets if layer(b) > layer(a)]
    assert not upward, "\n".join(upward)


def test_model_modules_never_import_training():
    edges, _ = graph()
    bad = [(a, b) for a, t in edges.items() for b in t if layer(a) <= 2 and b.split(".")[0] == "training"]
    assert not bad, bad


def test_no_cycle():
    edges, _ = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt.startswith(node + "."):
                continue  # a package importing its own submodules (``training/__init__`` does not)
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
