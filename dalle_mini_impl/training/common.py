"""What every training command shares: the run log, the shared options, threads, the output
folder and the recorded command line.

A run writes into ``--out``: the model (what the lessons and ``generate`` load),
``resume.pt`` (weights, optimizer, RNG and step: what ``--resume`` reads; written atomically
by ``utils.save_checkpoint``), ``metrics.jsonl`` (one line per logged step) and
``metrics.json`` (the final evaluation).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import signal
import sys
import threading
from pathlib import Path

import torch

from ..precision import PRECISION_CHOICES
from ..utils import data_dir

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


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text}")
    return value


def nonnegative_int(text: str) -> int:
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = _number(text, float)
    if not 0 < value < float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def nonnegative_float(text: str) -> float:
    value = _number(text, float)
    if not 0 <= value < float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def decay(text: str) -> float:
    """argparse type: an EMA decay in [0, 1) (0: off)."""
    value = _number(text, float)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1) (e.g. 0.999; 0 turns it off), got {text}")
    return value


def _number(text: str, kind):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole number' if kind is int else 'number'}") from None


def add_common_args(p: argparse.ArgumentParser, *, steps: int | None = None, out: str | None = None,
                    ckpt_every: int = 500, preset_help: str = "cpu, gpu16 or gpu80 (default: by device)") -> None:
    """The options every command has. ``steps`` / ``out``: their defaults (None: required)."""
    p.add_argument("--dataset", default="shapes", help="shapes, digits, folder:PATH or coco:JSON")
    p.add_argument("--steps", type=positive_int, required=steps is None, default=steps,
                   help="optimizer updates in total" + (f" (default {steps})" if steps else ""))
    p.add_argument("--out", required=out is None, default=out, help="output folder (checkpoints and metrics)")
    p.add_argument("--preset", default=None, help=preset_help)
    p.add_argument("--batch-size", type=positive_int, default=None, help="default: the preset's")
    p.add_argument("--lr", type=positive_float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best available)")
    add_precision_args(p)
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    p.add_argument("--log-every", type=positive_int, default=50)
    p.add_argument("--ckpt-every", type=positive_int, default=ckpt_every)
    p.add_argument("--resume", action="store_true", help="continue from OUT/resume.pt")
    p.add_argument("--stop-after", type=positive_int, default=None,
                   help="stop after this many updates in this call (save resume.pt; continue with --resume)")
    p.add_argument("--overwrite-shipped", action="store_true",
                   help="allow --out inside the repository's data/ folder (regenerating a shipped model)")


class StateOf:
    """Gives ``save_checkpoint`` a ready state dict where it expects a module or optimizer."""

    def __init__(self, state: dict):
        self._state = state

    def state_dict(self) -> dict:
        return self._state


def guard_shipped(out: str | Path, allowed: bool) -> None:
    """Refuse to write into the repository's shipped ``data/`` (the lessons read it) unless
    ``--overwrite-shipped`` says so."""
    target = Path(out).expanduser().resolve()
    shipped = data_dir().resolve()
    if not allowed and (target == shipped or shipped in target.parents) and target.exists():
        raise ValueError(f"--out {out} is inside the shipped data/ folder, which the lessons read: write to "
                         "another folder (e.g. runs/...), or add --overwrite-shipped to regenerate the shipped file")


def settings_from_args(cls, args: argparse.Namespace):
    """A settings dataclass from parsed options (its fields are the options' dests); a
    command's ``from_args = classmethod(settings_from_args)``."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def plain_args(args: argparse.Namespace) -> dict:
    """The parsed options as a plain dict (stored in resume.pt: no functions, nothing to run)."""
    return {k: v for k, v in vars(args).items() if k != "func"}


# --------------------------------------------------------------------------- trust
class GracefulStop:
    """Ctrl-C (SIGINT) and SIGTERM (what a cluster sends before preemption) set a flag instead
    of raising inside a step; the loop checks ``requested`` at step boundaries, saves and stops.
    So a checkpoint labelled step n always holds exactly n updates. A second Ctrl-C while the
    first is pending stops at once (``KeyboardInterrupt``), as a user who insists expects."""

    def __init__(self):
        self.requested = False
        self._old: dict = {}

    def _handler(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def agreed(self, world: int = 1) -> bool:
        """Whether to stop now; under torchrun every rank must agree (one all-reduce)."""
        if world < 2:
            return self.requested
        import torch.distributed as dist
        flag = torch.tensor([float(self.requested)])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


class NonFiniteGuard:
    """Counts updates skipped because a loss or gradient was inf or NaN (``Precision.step``
    skipped them: no weight changed) and stops the run after ``limit`` in a row."""

    def __init__(self, limit: int):
        self.limit, self.in_a_row, self.total = limit, 0, 0

    def update(self, applied: bool, step: int) -> None:
        self.in_a_row = 0 if applied else self.in_a_row + 1
        self.total += int(not applied)
        if self.limit and self.in_a_row >= self.limit:
            raise SystemExit(f"error: {self.in_a_row} updates in a row had an inf or NaN loss or gradient "
                             f"(step {step}); none changed a weight, and the run stops here. Lower --lr, "
                             "or check the data; resume.pt holds the last good state")


def data_digest(images: torch.Tensor, captions: list[str] | None = None) -> str:
    """A hash of the training data's content (pixels as 8-bit values, and the captions): a
    repainted image or an edited caption changes it."""
    h = hashlib.sha256()
    h.update(str(tuple(images.shape)).encode())
    for start in range(0, len(images), 4096):
        h.update((images[start:start + 4096].float().clamp(0, 1) * 255).round().to(torch.uint8).numpy().tobytes())
    for c in captions or []:
        h.update(c.encode("utf-8", "surrogatepass") + b"\0")
    return h.hexdigest()[:20]


def held_out_split(n: int, n_held: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept indices in order, held-out indices): ``n_held`` of ``n`` items drawn at random from
    ``seed``, so the same run (and its resumes) always holds out the same ones."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919))
    return order[n_held:].sort().values, order[:n_held]


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def check_resume(saved: dict, now: dict, may_change: set[str], steps_key: str = "steps") -> list[str]:
    """Compare the settings stored in resume.pt with this call's. Options that change the run
    (data, seed, sizes, optimiser, schedule, precision) must be equal: a ValueError names each
    difference. Those in ``may_change`` (intervals, threads, ...) may differ, and so may
    ``steps_key`` (the run is extended or shortened). Returns one note per allowed difference."""
    refused, notes = [], []
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key), now.get(key)
        if _same(a, b) or key in ("resume", "stop_after", "out"):
            continue
        if key == steps_key and isinstance(a, int) and isinstance(b, int):
            notes.append(f"--{key.replace('_', '-')} {a} -> {b}: the run is {'extended' if b > a else 'shortened'}; "
                         "the step-size schedule changes from this step on")
        elif key in may_change:
            notes.append(f"--{key.replace('_', '-')} {a} -> {b}")
        else:
            refused.append(f"--{key.replace('_', '-')}: {a!r} in resume.pt, {b!r} now")
    if refused:
        raise ValueError("--resume continues the run saved in resume.pt, and these differ from it: "
                         + "; ".join(refused) + ". Give the same options, or start a new run in another --out")
    return notes


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def truncate_log(path: Path, step: int) -> None:
    """Drop the lines of ``metrics.jsonl`` logged after ``step`` (the run is resumed from there,
    and will log those steps again)."""
    path = Path(path)
    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step]
    path.write_text("".join(line + "\n" for line in keep))


def drop_mask(n: int, p: float, seed: int, step: int, rank: int = 0) -> torch.Tensor:
    """(n,) bool, each True with probability ``p``, drawn from (seed, step, rank): a resumed run
    draws the same ones."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + step) * 64 + rank)
    return torch.rand(n, generator=g) < p


def drop_captions(text_ids: torch.Tensor, p: float, empty: torch.Tensor, seed: int, step: int,
                  rank: int = 0) -> torch.Tensor:
    """Replace each caption of a batch (B, T) by the empty caption (``empty``, (T,): every
    position padding) with probability ``p``, drawn from (seed, step, rank) so that a resumed run
    drops the same ones: the unconditional model that classifier-free guidance subtracts
    (GLIDE 2.3) is the same network, trained on the dropped captions."""
    drop = drop_mask(len(text_ids), p, seed, step, rank).to(text_ids.device)  # (B,)
    return torch.where(drop[:, None], empty.to(text_ids.device, text_ids.dtype)[None], text_ids)


def objects_arg(text: str):
    """argparse type of ``--objects``: 1, 2 or 1,2 (objects per shapes image)."""
    try:
        parts = tuple(int(p) for p in text.split(","))
    except ValueError:
        parts = ()
    if not parts or any(p not in (1, 2) for p in parts):
        raise argparse.ArgumentTypeError(f"takes 1, 2 or 1,2, got {text}")
    return parts[0] if len(parts) == 1 else parts


@torch.no_grad()
def update_ema(ema: dict, module: torch.nn.Module, decay: float) -> None:
    """ema <- decay ema + (1 - decay) weights, for every float tensor of ``module``'s state
    (others, e.g. counters, are copied)."""
    for k, v in module.state_dict().items():
        if v.is_floating_point():
            ema[k].lerp_(v, 1 - decay)
        else:
            ema[k].copy_(v)


def with_weights(module: torch.nn.Module, state: dict | None, fn):
    """Run ``fn`` with ``state`` (e.g. the EMA weights) loaded into ``module`` (if any), then
    restore the module's own weights."""
    if state is None:
        return fn()
    current = {k: v.detach().clone() for k, v in module.state_dict().items()}
    module.load_state_dict(state)
    try:
        return fn()
    finally:
        module.load_state_dict(current)
