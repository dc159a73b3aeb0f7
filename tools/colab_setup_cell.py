"""Rewrite the first code cell of course notebooks to the standard setup cell.

    .venv/bin/python tools/colab_setup_cell.py notebooks/00_course_map_and_data.ipynb [...]

The cell (``CELL``) makes ``import dalle_mini_impl`` work wherever the notebook runs:

* anywhere: it walks up from the working directory to the folder holding
  ``dalle_mini_impl/`` and puts it on ``sys.path`` (what the old first cell did);
* on Colab (``"google.colab" in sys.modules``), when the package is still not importable: it
  clones ``REPO_URL`` into ``/content/dalle-from-scratch``, installs the package with
  ``pip install -q --no-deps -e .`` (so Colab keeps its own torch and libraries), installs
  only those of the package's other dependencies that are missing, and changes into
  ``notebooks/`` so the lessons' relative paths hold.

It prints nothing and touches no network outside Colab (nbval compares outputs). Only the
cell's source changes; its outputs (none) and execution count stay, so a notebook committed
with outputs still passes nbval without re-running.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

MARK = "# Setup: find the course package"  # the first line: how a rewritten cell is recognised

# The course repository's git URL: the one place it is written. Set it here and run this tool on
# every notebook; a fork's user can instead set DALLE_REPO_URL on Colab (%env DALLE_REPO_URL=...).
REPO_URL = "<this repository's URL>"

CELL = '''# Setup: find the course package `dalle_mini_impl` (on Colab: fetch and install it first).
REPO_URL = __import__("os").environ.get("DALLE_REPO_URL") or "<this repository's URL>"  # see README, "On Colab"
import sys, pathlib, importlib.util
ROOT = next((p for p in (pathlib.Path.cwd(), *pathlib.Path.cwd().parents) if (p / "dalle_mini_impl").is_dir()), None)
if ROOT is None and "google.colab" in sys.modules and importlib.util.find_spec("dalle_mini_impl") is None:
    import os, subprocess
    if REPO_URL.startswith("<"):
        raise RuntimeError("set the course repository's git URL: %env DALLE_REPO_URL=https://... in a cell "
                           "above, or REPO_URL in this cell")
    ROOT = pathlib.Path("/content/dalle-from-scratch")
    if not ROOT.is_dir():
        subprocess.run(["git", "clone", "-q", REPO_URL, str(ROOT)], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "-e", str(ROOT)], check=True)
    missing = [pip for mod, pip in [("numpy", "numpy"), ("scipy", "scipy"), ("sklearn", "scikit-learn"),
                                    ("PIL", "pillow"), ("matplotlib", "matplotlib"), ("tqdm", "tqdm"),
                                    ("tokenizers", "tokenizers"), ("ipywidgets", "ipywidgets")]
               if importlib.util.find_spec(mod) is None]  # never torch: keep Colab's
    if missing:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=True)
    os.chdir(ROOT / "notebooks")
if ROOT is not None and str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))'''.replace("<this repository's URL>", REPO_URL)


def first_code_cell(nb: dict) -> dict:
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            return cell
    raise ValueError("the notebook has no code cell")


def apply(path: str | Path) -> bool:
    """Rewrite ``path``'s first code cell to ``CELL``; True if the file changed."""
    path = Path(path)
    if path.suffix != ".ipynb" or not path.is_file():
        raise ValueError(f"{path} is not a notebook file (.ipynb)")
    text = path.read_text(encoding="utf-8")
    nb = json.loads(text)
    cell = first_code_cell(nb)
    if cell.get("outputs"):
        raise ValueError(f"{path}: the first code cell has outputs; this tool replaces only a "
                         "setup cell that prints nothing")
    lines = CELL.splitlines(keepends=True)
    if cell.get("source") == lines:
        return False
    cell["source"] = lines
    indent = 1 if text.startswith("{\n \"") else 2
    path.write_text(json.dumps(nb, indent=indent, ensure_ascii=False) + "\n", encoding="utf-8")
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Rewrite the first code cell of notebooks to the standard setup cell.")
    p.add_argument("notebooks", nargs="+")
    args = p.parse_args(argv)
    for nb in args.notebooks:
        print(f"{nb}: {'rewritten' if apply(nb) else 'already standard'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
