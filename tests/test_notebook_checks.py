"""Every assert in a lesson's checks cell can fail: it tests a name the notebook computed, not
constants alone (``assert 256 * 256 * 3 // 1024 == 192`` checks arithmetic, not a claim)."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _bound_names(tree: ast.AST) -> set[str]:
    """Names a notebook binds by computing something (assignments, loops, with, functions);
    imports do not count: an imported constant is not a measurement."""
    names: set[str] = set()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign, ast.For, ast.comprehension, ast.NamedExpr)):
            targets = [node.target]
        elif isinstance(node, ast.With):
            targets = [item.optional_vars for item in node.items if item.optional_vars is not None]
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.arguments):
            names.update(a.arg for a in node.args + node.kwonlyargs)
        for target in targets:
            names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    return names


def constant_only_asserts(path: Path) -> list[str]:
    cells = ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    trees = []
    for src in cells:
        try:
            trees.append((src, ast.parse(src)))
        except SyntaxError:  # a cell with IPython magics
            continue
    bound = set().union(*(_bound_names(tree) for _, tree in trees))
    bad = []
    for src, tree in trees:
        if "all checks passed" not in src:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Assert):
                used = {n.id for n in ast.walk(node.test) if isinstance(n, ast.Name)}
                if not used & bound:
                    bad.append(ast.get_source_segment(src, node.test))
    return bad


def test_the_scanner_catches_a_constant_assert(tmp_path):
    nb = {"cells": [{"cell_type": "code", "source": ["x = 2\n"]},
                    {"cell_type": "code", "source": ["assert x == 2\nassert 3 * 4 == 12\nprint('all checks passed')"]}]}
    (tmp_path / "00_t.ipynb").write_text(json.dumps(nb))
    assert constant_only_asserts(tmp_path / "00_t.ipynb") == ["3 * 4 == 12"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_constant_only_assert(path):
    assert NOTEBOOKS, "no lessons found"
    assert not constant_only_asserts(path), constant_only_asserts(path)
