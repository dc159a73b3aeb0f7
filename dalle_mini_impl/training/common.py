"""What every training command shares: the run log, the shared options, threads, the output
folder and the recorded command line.

A run writes into ``--out``: the model (what the lessons and ``generate`` load),
``resume.pt`` (weights, optimizer, RNG and step: what ``--resume`` reads; written atomically
by ``utils.save_checkpoint``), ``metrics.jsonl`` (one line per logged step) and
``metrics.json`` (the final evaluation).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from ..precision import PRECISION_CHOICES

PROG = "python -m dalle_mini_impl.training"


class RunLog:
    """Append one JSON object per line to ``path`` and echo a short line to stdout."""

    def __init__(self, path: Path, quiet: bool = False):
        self.path, self.quiet = Path(path), quiet
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if not self.quiet:
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()),
                  flush=True)


def fresh_log(out: Path, resume: bool) -> Path:
    """``OUT/metrics.jsonl``; a fresh run starts it empty, a resumed one appends."""
    path = Path(out) / "metrics.jsonl"
    if not resume and path.exists():
        path.unlink()
    return path


def command_line() -> str | None:
    """The command that started this process, as a user would retype it (recorded in the
    saved model), or None when training was called from Python."""
    started = sys.argv[0].replace("\\", "/") if sys.argv else ""
    if not started.endswith(("training/__main__.py", "dalle_mini_impl/train.py")):
        return None
    return f"{PROG} " + " ".join(sys.argv[1:])


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


class _DeprecatedBF16(argparse.Action):
    """``--bf16`` / ``--no-bf16``: the old switch, kept as an alias of ``--precision``."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        value = "fp32" if option_string == "--no-bf16" else "bf16"
        print(f"warning: {option_string} is deprecated; use --precision {value} "
              "(or --precision auto, the default)", file=sys.stderr)
        namespace.precision = value


def add_precision_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=list(PRECISION_CHOICES), default=None,
                   help="autocast precision (default: $DALLE_PRECISION, else auto: bf16 where the "
                        "device computes it natively, fp16 on older GPUs, else float32)")
    p.add_argument("--bf16", "--no-bf16", action=_DeprecatedBF16, dest="precision",
                   help="deprecated: use --precision bf16 / fp32")


def add_common_args(p: argparse.ArgumentParser, *, steps: int | None = None, out: str | None = None,
                    ckpt_every: int = 500, preset_help: str = "cpu, gpu16 or gpu80 (default: by device)") -> None:
    """The options every command has. ``steps`` / ``out``: their defaults (None: required)."""
    p.add_argument("--dataset", default="shapes", help="shapes, digits, folder:PATH or coco:JSON")
    p.add_argument("--steps", type=int, required=steps is None, default=steps, help="optimizer updates in total")
    p.add_argument("--out", required=out is None, default=out, help="output folder (checkpoints and metrics)")
    p.add_argument("--preset", default=None, help=preset_help)
    p.add_argument("--batch-size", type=int, default=None, help="default: the preset's")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best available)")
    add_precision_args(p)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--ckpt-every", type=int, default=ckpt_every)
    p.add_argument("--resume", action="store_true", help="continue from OUT/resume.pt")
    p.add_argument("--stop-after", type=int, default=None,
                   help="stop after this many updates in this call (save resume.pt; continue with --resume)")


def plain_args(args: argparse.Namespace) -> dict:
    """The parsed options as a plain dict (stored in resume.pt: no functions, nothing to run)."""
    return {k: v for k, v in vars(args).items() if k != "func"}
