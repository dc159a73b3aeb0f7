"""Deprecated alias: ``python -m dalle_mini_impl.train ...`` runs
``python -m dalle_mini_impl.training ...`` (the same subcommands and options) after a note.
It will be removed in the next release; the training code lives in ``training/``."""
from __future__ import annotations

import sys

from .training import __main__ as _training

NOTE = ("note: `python -m dalle_mini_impl.train` is deprecated and will be removed in the next release; "
        "use `python -m dalle_mini_impl.training` (same subcommands and options)")


def main(argv: list[str] | None = None) -> int:
    print(NOTE, file=sys.stderr)
    return _training.main(argv)


if __name__ == "__main__":
    print(NOTE, file=sys.stderr)
    raise SystemExit(_training.cli())
