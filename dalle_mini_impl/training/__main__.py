"""``python -m dalle_mini_impl.training dvae | dalle | clip | judge ...``: the one training
command line (``--help`` on each subcommand lists its options)."""
from __future__ import annotations

import argparse

from . import clip, dalle, dvae, judge
from .common import PROG


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Train a model of the DALL-E course.")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (dvae, dalle, clip, judge):
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
