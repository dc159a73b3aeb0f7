"""Small shared utilities: seeding, device choice, the CPU's capabilities, atomic checkpoints,
parameter counts and the repository's paths.

Nothing here is specific to a lesson, and nothing here imports another module of the package.
Every lesson's setup cell calls ``seed_everything`` and ``get_device`` (and
``presets.get_preset``); training code calls ``save_checkpoint`` / ``load_checkpoint``.
"""
from __future__ import annotations

import dataclasses
import functools
import io
import os
import pickle
import platform
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

# --------------------------------------------------------------------------- seeding
def seed_everything(seed: int = 0, deterministic: bool = True) -> torch.Generator:
    """Seed Python, NumPy and PyTorch (CPU and CUDA); return a fresh torch.Generator.

    With ``deterministic`` the cuDNN autotuner is switched off so that the same seed gives
    the same numbers on the same machine.
    """
    if not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    return torch.Generator().manual_seed(seed)


def get_rng_state() -> dict[str, Any]:
    """Every random number generator's state, so a resumed run draws the same numbers."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),  # (int, tuple of ints, None): plain values
        # NumPy's state as a tensor and plain numbers, so the checkpoint loads with weights_only
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``get_rng_state`` captured."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- devices
def get_device(prefer: str | None = None) -> torch.device:
    """The best available device: CUDA, then Apple MPS, then CPU.

    ``prefer`` ("cpu", "cuda", "mps") overrides the choice; asking for a device that is not
    available raises a ValueError that says which are.
    """
    available = ["cpu"]
    if torch.backends.mps.is_available():
        available.insert(0, "mps")
    if torch.cuda.is_available():
        available.insert(0, "cuda")
    if prefer is not None:
        name = str(prefer).split(":")[0]
        if name not in available:
            raise ValueError(f"device {prefer!r} is not available here; available: {available}")
        return torch.device(prefer)
    return torch.device(available[0])


# --------------------------------------------------------------------------- the CPU
def _torch_flag(fn_path: str) -> bool:
    """Call a private torch probe such as ``torch.cpu._is_avx512_bf16_supported`` (False where
    this torch build lacks it)."""
    obj = torch
    try:
        for part in fn_path.split("."):
            obj = getattr(obj, part)
        return bool(obj())
    except Exception:  # older or newer torch: the probe moved or does not exist
        return False


def _linux_cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("flags", "features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.lru_cache(maxsize=None)
def cpu_bf16_native() -> bool:
    """Whether this CPU computes bfloat16 matrix products natively, so bf16 autocast is the
    fast path (about 2-4x float32) rather than an emulation (7-40x *slower* than float32).

    x86: oneDNN must run its bf16 kernels here (``torch.ops.mkldnn._is_mkldnn_bf16_supported``,
    which also honours ``ONEDNN_MAX_CPU_ISA``) *and* the CPU must have the AVX512_BF16 or AMX
    instructions (``torch.cpu._is_avx512_bf16_supported``, ``torch.cpu._is_amx_tile_supported``).
    Plain AVX-512 or AVX2 CPUs (most AMD Zen 2/3 and older Intel machines) answer False.
    64-bit Arm on Linux: the ``bf16`` extension in /proc/cpuinfo and oneDNN's bf16 support.
    Anything else (macOS, other architectures): False.
    """
    if not _torch_flag("ops.mkldnn._is_mkldnn_bf16_supported"):
        return False
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "i386", "i686"):
        return _torch_flag("cpu._is_avx512_bf16_supported") or _torch_flag("cpu._is_amx_tile_supported")
    if machine in ("aarch64", "arm64") and platform.system() == "Linux":
        return "bf16" in _linux_cpu_flags()
    return False


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux, else ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_summary() -> str:
    """One line naming the CPU, the instruction set PyTorch uses and whether bf16 is native,
    printed by every benchmark so that a figure says where it was measured."""
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # torch < 2.1
        capability = "unknown"
    return (f"{cpu_name()}, {os.cpu_count()} cores, PyTorch CPU capability {capability}, "
            f"bf16 native: {'yes' if cpu_bf16_native() else 'no'}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")


# --------------------------------------------------------------------------- checkpoints
def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash at any moment leaves either the old file
    or the new one, never a torn one: write a temp file beside it, fsync, rename, fsync dir."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a write that was killed
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual file mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # some filesystems (and Windows) cannot fsync a directory
        pass


def _to_plain(config: Any) -> Any:
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    return config


def save_checkpoint(path: str | os.PathLike, *, model: torch.nn.Module | None = None,
                    optimizer: torch.optim.Optimizer | None = None, config: Any = None,
                    step: int = 0, extra: dict | None = None, rng: bool = True) -> Path:
    """Save a training checkpoint atomically.

    It records the model and optimizer state, the config (a dataclass is stored as a dict),
    the step, every RNG's state (so a resumed run continues exactly) and any ``extra``.
    """
    if model is not None:
        check_finite(model.state_dict(), f"saving {path}")
    state = {
        "format": "dalle_mini_impl.checkpoint/1",
        "config": _to_plain(config),
        "step": int(step),
        "model": model.state_dict() if model is not None else None,
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "rng": get_rng_state() if rng else None,
        "extra": extra or {},
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def safe_load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True``: tensors and plain Python values only. A file
    that asks to build any other object (a pickle can run code while it loads) is refused with
    a ValueError before anything runs; so is a torn or foreign file."""
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        asks_for = [line.strip() for line in str(exc).splitlines() if "GLOBAL" in line]
        if asks_for:  # a pickle that names a function or class to call while loading
            raise ValueError(f"{path} holds Python objects other than tensors and plain values, which could "
                             "run code when loaded; it was not loaded. Use files written by dalle_mini_impl "
                             f"(or convert this one where you trust it). It asks for: {asks_for[0]}") from None
        raise ValueError(f"{path} is not a readable checkpoint (not a PyTorch file, or damaged); "
                         "it may be from another program") from None
    except Exception as exc:  # a torn or foreign file
        raise ValueError(f"{path} is not a readable checkpoint ({exc}); "
                         "it may be from another program or damaged") from exc


def check_finite(state: dict, what: str) -> None:
    """Raise a ValueError naming the first tensor of ``state`` with a NaN or an infinity."""
    for name, value in state.items():
        if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"{what}: {name} holds NaN or infinite values; not written (the run diverged: "
                             "lower --lr, or resume from the last good resume.pt)")


def load_checkpoint(path: str | os.PathLike, *, model: torch.nn.Module | None = None,
                    optimizer: torch.optim.Optimizer | None = None, restore_rng: bool = False,
                    map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by ``save_checkpoint``; optionally load its states into
    ``model`` and ``optimizer`` and restore the RNGs. Returns the whole checkpoint dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: check the path, or train first")
    state = safe_load(path, map_location)
    if not isinstance(state, dict) or state.get("format", "").split("/")[0] != "dalle_mini_impl.checkpoint":
        raise ValueError(f"{path} was not written by dalle_mini_impl.save_checkpoint")
    restore_checkpoint(state, model=model, optimizer=optimizer, restore_rng=restore_rng, where=path)
    return state


def restore_checkpoint(state: dict[str, Any], *, model: torch.nn.Module | None = None,
                       optimizer: torch.optim.Optimizer | None = None, restore_rng: bool = False,
                       where: str | os.PathLike = "the checkpoint") -> None:
    """Put a loaded checkpoint's states back: into ``model`` and ``optimizer``, and the RNGs.
    (A resume reads resume.pt once, checks it is the same run, then calls this.)"""
    if model is not None:
        if state["model"] is None:
            raise ValueError(f"{where} holds no model weights")
        model.load_state_dict(state["model"])
    if optimizer is not None:
        if state["optimizer"] is None:
            raise ValueError(f"{where} holds no optimizer state")
        optimizer.load_state_dict(state["optimizer"])
    if restore_rng and state.get("rng") is not None:
        set_rng_state(state["rng"])


def count_parameters(module: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (optionally only those with requires_grad)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def count_parameters_meta(build) -> int:
    """Parameters of ``build()``, a module constructed on the meta device (no memory): how the
    12-billion-parameter prior is counted on a laptop."""
    with torch.device("meta"):
        model = build()
    return sum(p.numel() for p in model.parameters())


def free_cores() -> int:
    """Cores not already kept busy by other processes (the 1-minute load average), at least 1:
    a default thread count that does not oversubscribe a shared machine (two busy OpenMP teams
    on two cores can slow a run tenfold)."""
    n = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):  # Windows
        load = 0.0
    return max(1, min(n, n - int(load + 0.5)))


def repo_root() -> Path:
    """The repository root (the folder that holds ``dalle_mini_impl``), for finding data/."""
    return Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """The shipped ``data/`` folder."""
    return repo_root() / "data"


def progress_bar(iterable=None, **kwargs):
    """A tqdm progress bar (a widget in Jupyter, text in a terminal). Headless runs (the course
    and test commands set ``DALLE_HEADLESS=1``) get none: nbval reads every output message, and
    thousands of progress updates only slow it down."""
    from tqdm.auto import tqdm

    if os.environ.get("DALLE_HEADLESS"):
        kwargs["disable"] = True
    return tqdm(iterable, **kwargs)
