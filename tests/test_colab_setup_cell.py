"""tools/colab_setup_cell.py: the notebooks' standard first cell is silent and offline
outside Colab, and on Colab clones, installs without touching torch, and finds the package."""
import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import colab_setup_cell  # noqa: E402


def test_cell_is_silent_and_fixes_sys_path_outside_colab():
    """Run as a notebook would, from notebooks/, in a fresh interpreter: no output at all,
    and the repository root first on sys.path."""
    code = colab_setup_cell.CELL + "\nimport dalle_mini_impl; print(sys.path[0]); print(dalle_mini_impl.__file__)"
    compile(colab_setup_cell.CELL, "<setup cell>", "exec")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT / "notebooks", capture_output=True,
                          text=True, timeout=60, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    path0, module = proc.stdout.splitlines()
    assert Path(path0) == ROOT and Path(module).is_relative_to(ROOT)
    # the cell itself printed nothing: only the two lines the test added
    silent = subprocess.run([sys.executable, "-c", colab_setup_cell.CELL], cwd=ROOT / "notebooks",
                            capture_output=True, text=True, timeout=60)
    assert silent.returncode == 0 and silent.stdout == "" and silent.stderr == ""


def _run_on_fake_colab(monkeypatch, tmp_path, url):
    calls = []
    monkeypatch.chdir(tmp_path)  # outside the repository
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    monkeypatch.setattr(os, "chdir", lambda p: calls.append(["chdir", str(p)]))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("dalle_mini_impl", "tokenizers") else real(name, *a))
    monkeypatch.setattr(sys, "path", list(sys.path))
    exec(colab_setup_cell.CELL.replace('"<this repository\'s URL>"', repr(url)), {})
    return calls


def test_on_colab_clones_and_installs_without_torch(monkeypatch, tmp_path):
    calls = _run_on_fake_colab(monkeypatch, tmp_path, "https://example.invalid/course.git")
    assert calls[0][:3] == ["git", "clone", "-q"] and calls[0][3] == "https://example.invalid/course.git"
    assert calls[1][-4:] == ["-q", "--no-deps", "-e", "/content/dalle-from-scratch"]
    assert calls[2][-1] == "tokenizers"  # only what is missing
    assert not any("torch" in " ".join(map(str, c)) for c in calls)
    assert calls[-1] == ["chdir", "/content/dalle-from-scratch/notebooks"]


def test_on_colab_without_a_url_says_what_to_set(monkeypatch, tmp_path):
    with pytest.raises(RuntimeError, match="REPO_URL"):
        _run_on_fake_colab(monkeypatch, tmp_path, "<this repository's URL>")


def test_tool_rewrites_only_the_first_code_cell(tmp_path):
    nb = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": ["# t"]},
                    {"cell_type": "code", "metadata": {}, "source": ["import sys"], "outputs": [],
                     "execution_count": 1},
                    {"cell_type": "code", "metadata": {}, "source": ["x = 1"], "outputs": [],
                     "execution_count": 2}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "a.ipynb"
    path.write_text(json.dumps(nb, indent=1))
    assert colab_setup_cell.apply(path) is True
    out = json.loads(path.read_text())
    assert "".join(out["cells"][1]["source"]) == colab_setup_cell.CELL
    assert out["cells"][1]["execution_count"] == 1 and out["cells"][2]["source"] == ["x = 1"]
    assert colab_setup_cell.apply(path) is False  # idempotent
    with pytest.raises(ValueError, match="not a notebook"):
        colab_setup_cell.apply(tmp_path / "missing.ipynb")


def test_course_notebooks_use_the_cell():
    for name in ("00_course_map_and_data", "01_autoencoder", "02_vae", "05_bpe_tokenizer",
                 "06_sparse_transformer", "07_mixed_precision"):
        nb = json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text())
        assert "".join(colab_setup_cell.first_code_cell(nb)["source"]) == colab_setup_cell.CELL, name


def test_on_colab_the_url_can_come_from_the_environment(monkeypatch, tmp_path):
    """One place for users of a fork: %env DALLE_REPO_URL=... instead of editing 11 notebooks."""
    monkeypatch.setenv("DALLE_REPO_URL", "https://example.invalid/fork.git")
    calls = _run_on_fake_colab(monkeypatch, tmp_path, "<this repository's URL>")
    assert calls[0][3] == "https://example.invalid/fork.git"
