"""``python -m dalle_mini_impl.training dvae | dalle | clip | judge | diffusion | prior ...``: the one training
command line (``--help`` on each subcommand lists its options)."""
from __future__ import annotations

import argparse
import sys

from . import clip, dalle, diffusion, dvae, judge, prior
from .common import PROG


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Train a model of the DALL-E course.")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (dvae, dalle, clip, judge, diffusion, prior):
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse and run; errors propagate (what tests and notebooks want)."""
    args = build_parser().parse_args(argv)
    args.func(args)
    return 0


def cli(argv: list[str] | None = None) -> int:
    """The shell entry point: a user error (a bad path, a bad dataset, a run that --resume
    cannot continue) is one line ``error: ...`` and exit status 2, as argparse does for bad
    options; anything else is a bug and keeps its traceback."""
    try:
        return main(argv)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(cli())
