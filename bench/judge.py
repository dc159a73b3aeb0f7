"""The shipped shapes judge, measured: attribute accuracy on fresh one- and two-object scenes
of every colour-shape pair (scenes its training never drew). Trains nothing and writes nothing.

    .venv/bin/python bench/judge.py [--n 2000]

Target: >= 0.99 on every attribute. (Training a judge is ``python -m dalle_mini_impl.training
judge``; it writes to runs/ unless told to overwrite the shipped file.)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dalle_mini_impl.datasets.shapes import ShapesDataset  # noqa: E402
from dalle_mini_impl.judge import attribute_accuracy, load_judge  # noqa: E402
from dalle_mini_impl.utils import cpu_summary  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000, help="scenes per test set")
    args = p.parse_args(argv)
    print(cpu_summary())
    judge = load_judge()
    result = {}
    for objects, seed in ((1, 98_765), (2, 98_766)):
        acc = attribute_accuracy(judge, ShapesDataset(args.n, seed=seed, split="all", n_objects=objects))
        result[objects] = acc
        print(f"{objects} object(s), {args.n} scenes:", {k: round(v, 4) for k, v in acc.items()})
    return result


if __name__ == "__main__":
    main()
