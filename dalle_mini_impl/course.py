"""Run the course: execute every lesson notebook in order, headless.

    python -m dalle_mini_impl.course                  # every notebook in notebooks/
    python -m dalle_mini_impl.course 03 08            # some lessons, by number or path
    python -m dalle_mini_impl.course --in-place       # write the outputs back into notebooks/

Each notebook runs with notebooks/ as its working directory, in the precision the package's
policy picks for this machine (``precision.pick_precision``: bf16 where the CPU or GPU computes
it natively, else float32; ``DALLE_PRECISION`` overrides it). The executed copies go to
``outputs/notebooks/`` (``--in-place``: back into ``notebooks/``, with their outputs and
execution counts -- the form nbval checks and the repository keeps). One line per lesson gives
its wall time; a table at the end repeats them with the precision and the torch threads used.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from .precision import pick_precision
from .utils import cpu_summary, repo_root


class _QuietKernelWarnings(logging.Filter):
    """jupyter_client warns on every kernel start that it talks to the kernel over TCP on
    localhost without encryption; that is how every local Jupyter works, and not news."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "without encryption" not in record.getMessage()


def run_notebook(path: Path, out: Path, timeout: int = 900) -> float:
    """Execute the notebook ``path`` (working directory: its folder) and write the executed
    notebook to ``out``; return the wall time in seconds."""
    import nbformat
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dalle_course_") as sockets:
        # local sockets (IPC), not TCP on localhost: nothing listens on the network, and the
        # kernel has no "running over TCP without encryption" to warn about (TCP on Windows)
        km = KernelManager(kernel_name="python3", **({} if os.name == "nt" else
                                                     {"transport": "ipc", "ip": os.path.join(sockets, "kernel")}))
        client = NotebookClient(nb, km=km, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}})
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*without encryption.*")
                client.execute()
        finally:
            if km.has_kernel:
                km.shutdown_kernel(now=True)
    elapsed = time.perf_counter() - start
    nb.metadata.pop("widgets", None)  # no widget state is saved: widgets are skipped headless
    out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out)
    return elapsed


def find_notebooks(names: list[str], root: Path) -> list[Path]:
    """Lessons by path or by number ("03", "3", "03_dvae_codebook"); all of them when empty."""
    book = root / "notebooks"
    every = sorted(book.glob("[0-9][0-9]_*.ipynb"))
    if not names:
        return every
    paths = []
    for name in names:
        p = Path(name)
        if p.is_file():
            paths.append(p.resolve())
            continue
        for base in (Path.cwd(), root, book):  # a path given from the repository or notebooks/
            if (base / p).is_file():
                paths.append((base / p).resolve())
                break
        else:
            stem = p.stem if p.suffix == ".ipynb" else p.name
            hits = [nb for nb in every if nb.stem == stem or nb.stem.split("_")[0] == stem.zfill(2)]
            if not hits:
                raise FileNotFoundError(f"no such notebook: {name!r} (give a lesson number such as 03, "
                                        f"or a path; the lessons are {', '.join(nb.stem for nb in every)})")
            paths.extend(hits)
    return paths


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dalle_mini_impl.course",
                                description="Run the lesson notebooks headless, in order, and time them.")
    p.add_argument("lessons", nargs="*", help="lesson numbers (03) or notebook paths (default: every lesson)")
    p.add_argument("--in-place", action="store_true",
                   help="write the executed notebooks back into notebooks/ (how the committed outputs "
                        "are made) instead of outputs/notebooks/")
    p.add_argument("--timeout", type=int, default=900, help="seconds a single cell may run")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("DALLE_HEADLESS", "1")
    os.environ.setdefault("PYTHONHASHSEED", "0")
    logging.getLogger().addFilter(_QuietKernelWarnings())
    for name in ("traitlets", "jupyter_client", "NotebookClient"):
        logging.getLogger(name).addFilter(_QuietKernelWarnings())
    root = repo_root()
    try:
        paths = find_notebooks(args.lessons, root)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    prec = pick_precision("cuda" if torch.cuda.is_available() else "cpu")
    threads = os.environ.get("OMP_NUM_THREADS") or str(torch.get_num_threads())
    print(f"machine: {cpu_summary()}")
    print(f"precision: {prec}; torch threads per lesson: {threads}", flush=True)
    times: list[tuple[str, float]] = []
    for p in paths:
        out = p if args.in_place else root / "outputs" / "notebooks" / p.name
        print(f"running {p.name} ...", flush=True)
        try:
            t = run_notebook(p, out, timeout=args.timeout)
        except Exception as exc:  # show which cell failed, then stop
            print(f"FAILED {p.name}: {exc}", file=sys.stderr)
            return 1
        times.append((p.stem, t))
        print(f"  done in {t:.1f} s", flush=True)
    where = "notebooks/ (in place)" if args.in_place else "outputs/notebooks/"
    print(f"\n{'lesson':34s} {'seconds':>8s}  precision  threads")
    for stem, t in times:
        print(f"{stem:34s} {t:8.1f}  {prec.name:9s}  {threads}")
    print(f"{'total':34s} {sum(t for _, t in times):8.1f}")
    print(f"executed notebooks: {where}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
