"""GPU fast paths with CPU fallbacks, in one place: what takes the CPU toy to a GPU system.

The training commands ask this module, never ``torch.cuda`` directly, which fast path a
device gets, so that every choice is a small function a CPU-only test can check:

* ``amp_dtype(device)`` -- the autocast dtype of ``precision.pick_precision`` (the one
  policy): bfloat16 where the device computes it natively (``torch.cuda.is_bf16_supported()``
  on CUDA; AVX512_BF16/AMX or Arm bf16 on a CPU), float16 on an older CUDA card (it then needs
  lesson 07's loss scaling), float32 elsewhere (AVX2-only CPUs, MPS).
* ``make_adamw(params, device, ...)`` -- AdamW with ``fused=True`` on CUDA only (one kernel
  for the whole update; the CPU build has it too since torch 2.4, but it is not faster there,
  and older CPU builds lack it, so CPU keeps the default implementation).
* ``maybe_compile(module, enabled)`` / ``compile_blocks(blocks, enabled)`` -- ``torch.compile``
  (off by default). On CPU the default inductor backend needs a C++ compiler; without one
  this raises a clear error at once instead of failing at the first forward pass.
* ``loader_kwargs(device)`` / ``token_batches(...)`` -- the pre-tokenised data: on CUDA a
  ``DataLoader`` with worker processes and pinned (page-locked) memory, so the next batch is
  gathered while the GPU computes and copied with ``non_blocking=True``; on CPU plain tensor
  indexing, as before (workers only cost start-up time there).
"""
from __future__ import annotations

import os
import shutil
import warnings
from typing import Callable, Iterable, Iterator

import torch

from ..precision import pick_precision

__all__ = ["amp_dtype", "fused_adamw_ok", "make_adamw", "maybe_compile", "compile_blocks", "loader_kwargs",
           "token_batches"]


def _device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def amp_dtype(device=None, bf16_supported: bool | None = None) -> torch.dtype:
    """The autocast dtype training uses on ``device`` (see the module docstring).

    The decision is ``precision.pick_precision``'s (lesson 07), so the two never disagree;
    ``bf16_supported`` overrides the detection (tests use it)."""
    return pick_precision(_device(device), bf16_supported=bf16_supported).dtype


def fused_adamw_ok(device) -> bool:
    """Whether AdamW gets ``fused=True``: on CUDA only."""
    return _device(device).type == "cuda"


def make_adamw(params: Iterable, device, lr: float, betas=(0.9, 0.999), eps: float = 1e-8,
               weight_decay: float = 0.0) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` over ``params`` (tensors or param groups), fused on CUDA."""
    kwargs = {"fused": True} if fused_adamw_ok(device) else {}
    return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, **kwargs)


def _cpu_compiler() -> str | None:
    try:
        from torch._inductor import config as inductor_config
        cxx = inductor_config.cpp.cxx
        names = [c for c in (cxx if isinstance(cxx, (tuple, list)) else (cxx,)) if c]
    except Exception:  # pragma: no cover - inductor layout changed
        names = []
    for name in [*names, "g++", "clang++", "c++"]:
        if shutil.which(name):
            return shutil.which(name)
    return None


def maybe_compile(module: torch.nn.Module, enabled: bool, device=None, backend: str = "inductor",
                  **kwargs):
    """``torch.compile(module)`` if ``enabled``, else ``module`` unchanged.

    Compilation is lazy (it happens at the first call); the checks that can fail early are
    made here: torch.compile must exist, and on CPU the inductor backend needs a C++ compiler.
    The compiled module shares its parameters with ``module``: save and load ``module``."""
    if not enabled:
        return module
    if not hasattr(torch, "compile"):
        raise RuntimeError(f"--compile needs torch >= 2.0 (this is {torch.__version__})")
    if backend == "inductor" and _device(device).type == "cpu" and _cpu_compiler() is None:
        raise RuntimeError("--compile on CPU needs a C++ compiler (g++ or clang++) for "
                           "torch.compile's inductor backend, and none was found: install one "
                           "(e.g. `apt install g++`) or train without --compile")
    return torch.compile(module, backend=backend, **kwargs)


def compile_blocks(blocks, enabled: bool, device=None, backend: str = "inductor") -> None:
    """Compile each module of ``blocks`` in place (``nn.Module.compile``): the transformer's
    resblocks, which are pure tensor code. The embeddings read token values (data-dependent
    branches) and stay eager. In place, so parameter names and checkpoints do not change, and
    it composes with DDP and FSDP (compile after sharding)."""
    if not enabled:
        return

    maybe_compile(torch.nn.Identity(), True, device, backend)  # the early checks only
    # attention.py caches each layer's mask with lru_cache; dynamo traces through the cache
    # (the mask becomes part of the graph) and says so once per layer: known, harmless
    warnings.filterwarnings("ignore", message=r"Dynamo detected a call to a `functools.lru_cache`")
    for block in blocks:
        block.compile(backend=backend)


def loader_kwargs(device, workers: int | None = None) -> dict:
    """DataLoader settings for ``device``: pinned memory and worker processes on CUDA
    (``workers`` default: min(4, CPU count)); none of either elsewhere."""
    cuda = _device(device).type == "cuda"
    if workers is None:
        workers = min(4, os.cpu_count() or 1) if cuda else 0
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    return {"pin_memory": cuda, "num_workers": workers}


class _StepSampler:
    """Yields ``indices(step)`` for each step, lazily (a long run has many steps)."""

    def __init__(self, indices, steps):
        self.indices, self.steps = indices, steps

    def __len__(self):
        return len(self.steps)

    def __iter__(self):
        return (self.indices(step) for step in self.steps)


class _Gather(torch.utils.data.Dataset):
    """Indexed by a whole batch of indices: returns the rows of every tensor at once."""

    def __init__(self, tensors):
        self.tensors = tensors

    def __len__(self):
        return len(self.tensors[0])

    def __getitem__(self, idx):
        return tuple(t[idx] for t in self.tensors)


def token_batches(tensors: tuple[torch.Tensor, ...], indices: Callable[[int], torch.Tensor],
                  steps: range, device, workers: int | None = None) -> Iterator[tuple[torch.Tensor, ...]]:
    """One tuple of batches per step in ``steps``: ``tuple(t[indices(step)] for t in tensors)``
    on ``device``. The order is that of ``indices`` (a function of the step, so a resumed
    run draws the same batches). On CUDA (or with ``workers`` > 0) a ``DataLoader`` gathers
    the batches in worker processes into pinned memory; on CPU, plain indexing."""
    device = _device(device)
    kw = loader_kwargs(device, workers)
    if kw["num_workers"] == 0 and not kw["pin_memory"]:
        for step in steps:
            idx = indices(step)
            yield tuple(t[idx].to(device) for t in tensors)
        return
    loader = torch.utils.data.DataLoader(_Gather(tensors), batch_size=None,
                                         sampler=_StepSampler(indices, steps), **kw)
    for batch in loader:
        yield tuple(t.to(device, non_blocking=True) for t in batch)
