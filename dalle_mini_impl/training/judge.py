"""Training the shapes judge, the attribute classifier that grades generated images
(``judge.py``; the course's stand-in for the paper's human evaluation, section 3).

    python -m dalle_mini_impl.training judge --out data/judge_shapes.pt --overwrite-shipped

Measuring the shipped judge is a different command, which trains nothing: ``python bench/judge.py``.
"""
from __future__ import annotations

import argparse

from ..datasets.shapes import ShapesDataset
from ..judge import DEFAULT_PATH, attribute_accuracy, train_judge
from ..utils import save_checkpoint
from .common import add_precision_args, command_line, guard_shipped, positive_int, set_threads


def train_judge_command(args: argparse.Namespace) -> dict:
    """Train the judge, measure it on fresh one- and two-object scenes, save it."""
    set_threads(args.threads)
    guard_shipped(args.out, args.overwrite_shipped)
    model = train_judge(args.n_train, args.steps, seed=args.seed, precision=args.precision)
    test1 = ShapesDataset(2000, seed=98_765, split="all", n_objects=1)
    test2 = ShapesDataset(2000, seed=98_766, split="all", n_objects=2)
    acc1, acc2 = attribute_accuracy(model, test1), attribute_accuracy(model, test2)
    print("held-out attribute accuracy, one object:", {k: round(v, 4) for k, v in acc1.items()})
    print("held-out attribute accuracy, two objects:", {k: round(v, 4) for k, v in acc2.items()})
    save_checkpoint(args.out, model=model, config=model.config, step=args.steps, rng=False,
                    extra={"command": command_line(), "accuracy_one_object": acc1,
                           "accuracy_two_objects": acc2})
    print(f"saved {args.out}")
    return {"accuracy_one_object": acc1, "accuracy_two_objects": acc2}


def add_parser(sub) -> None:
    p = sub.add_parser("judge", help="the shapes judge that grades generated images (lessons 03, 08-10)")
    p.add_argument("--out", default="runs/judge_shapes.pt",
                   help=f"checkpoint file to write (the shipped one is data/{DEFAULT_PATH}: regenerating it "
                        "needs --overwrite-shipped)")
    p.add_argument("--overwrite-shipped", action="store_true", help="allow --out inside data/")
    p.add_argument("--steps", type=positive_int, default=1500)
    p.add_argument("--n-train", type=positive_int, default=30_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    add_precision_args(p)
    p.set_defaults(func=train_judge_command)
