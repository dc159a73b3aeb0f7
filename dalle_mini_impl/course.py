"""Run the course: execute every lesson notebook in order, headless, in place.

    python -m dalle_mini_impl.course                 # every notebook in notebooks/
    python -m dalle_mini_impl.course notebooks/03_dvae_codebook.ipynb   # just some

Each notebook runs with notebooks/ as its working directory and is written back with its
outputs and execution counts (the form nbval checks). Timings per notebook are printed,
then where the executed notebooks and the sample images (outputs/*.png) are.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from .utils import repo_root


def run_notebook(path: Path, timeout: int = 900) -> float:
    """Execute one notebook in place; return its wall time in seconds."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    elapsed = time.perf_counter() - start
    nb.metadata.pop("widgets", None)  # no widget state is saved: widgets are skipped headless
    nbformat.write(nb, path)
    return elapsed


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    os.environ.setdefault("DALLE_HEADLESS", "1")
    os.environ.setdefault("PYTHONHASHSEED", "0")
    root = repo_root()
    paths = [Path(a).resolve() for a in argv] or sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if not paths:
        print("no notebooks found", file=sys.stderr)
        return 1
    total = 0.0
    for p in paths:
        if not p.is_file():
            print(f"no such notebook: {p}", file=sys.stderr)
            return 1
        print(f"running {p.relative_to(root)} ...", flush=True)
        try:
            t = run_notebook(p)
        except Exception as exc:  # show which cell failed, then stop
            print(f"FAILED {p.name}: {exc}", file=sys.stderr)
            return 1
        total += t
        print(f"  done in {t:.1f} s", flush=True)
    print(f"\nexecuted {len(paths)} notebook(s) in {total:.1f} s; they are in {root / 'notebooks'} "
          "(outputs saved in place)")
    images = sorted((root / "outputs").glob("*.png"))
    if images:
        print("sample images:")
        for im in images:
            print(f"  {im.relative_to(root)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
