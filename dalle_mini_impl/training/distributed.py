"""Training on several processes: DistributedDataParallel or FSDP2, under ``torchrun``.

Each process takes ``batch_size / world_size`` pairs of every global batch
(``DistributedSampler``'s permutation; ``batch_indices``), DistributedDataParallel averages
the gradients (NCCL on CUDA, gloo on CPU), and rank 0 logs and saves. ``--fsdp`` shards the
weights, gradients and AdamW state over the processes instead (FSDP2 ``fully_shard``, per
resblock; bf16 or float32), and checkpoints are gathered into the same single-file format.

The paper (section 2.5, appendix E) sharded parameters within a machine and compressed the
gradients between machines with PowerSGD; ``powersgd.py`` simulates that in one process.
"""
from __future__ import annotations

import os
from functools import lru_cache

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.utils.data import DistributedSampler

from ..utils import get_device


def setup(device_arg: str | None) -> tuple[int, int, torch.device]:
    """(world, rank, device). Under torchrun (WORLD_SIZE > 1) joins the process group:
    NCCL on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = get_device(device_arg)
    if world == 1:
        return 1, 0, device
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return world, rank, device


def teardown(world: int) -> None:
    if world > 1 and dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


@lru_cache(maxsize=2)
def _epoch_order(n_items: int, world: int, rank: int, seed: int, epoch: int) -> torch.Tensor:
    sampler = DistributedSampler(range(n_items), num_replicas=world, rank=rank, shuffle=True,
                                 seed=seed, drop_last=True)
    sampler.set_epoch(epoch)
    return torch.tensor(list(sampler))


def batch_indices(n_items: int, local_batch: int, step: int, seed: int, world: int = 1,
                  rank: int = 0) -> torch.Tensor:
    """Indices of this rank's part of the global batch at ``step``: a function of (seed, step)
    only, so a resumed run draws the same batches. Epoch e is DistributedSampler's
    permutation for set_epoch(e); ranks take interleaved slices of it, so the union over
    ranks of one step is the batch a single process would take with the global batch size."""
    per_epoch = (n_items // world) // local_batch
    if per_epoch < 1:
        raise ValueError(f"the dataset has {n_items} pairs, fewer than one batch of "
                         f"{local_batch * world}: use a smaller --batch-size")
    epoch, i = divmod(step, per_epoch)
    return _epoch_order(n_items, world, rank, seed, epoch)[i * local_batch:(i + 1) * local_batch]


def check_fsdp(world: int, precision_name: str, ema: float, sample_every: int) -> None:
    """--fsdp runs only under torchrun, in bf16 or float32 (fp16's loss scaler is not sharded),
    without the options that need the whole model on one process."""
    if world < 2:
        raise SystemExit("--fsdp shards the model over several processes: start it with torchrun, "
                         "e.g. `torchrun --nproc_per_node 8 -m dalle_mini_impl.training dalle --fsdp ...` "
                         "(one process has nothing to shard; drop --fsdp)")
    if precision_name == "fp16":
        raise SystemExit("--fsdp is not supported in fp16 (its loss scaler is not sharded): use a bf16 "
                         "GPU (A100, H100, L4), --precision fp32, or drop --fsdp")
    if ema:
        raise SystemExit("--ema is not supported with --fsdp (the EMA copy would not be sharded)")
    if sample_every:
        raise SystemExit("--sample-every is not supported with --fsdp; sample from the saved model")


def shard(prior: torch.nn.Module) -> None:
    """FSDP2: each resblock, then the rest, sharded over the processes (parameters become
    DTensors; each process keeps 1/world of every weight, gradient and AdamW state)."""
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError as exc:  # torch < 2.6
        raise SystemExit(f"--fsdp needs torch.distributed.fsdp.fully_shard (torch >= 2.6): {exc}")
    for block in prior.blocks:
        fully_shard(block)
    fully_shard(prior)


def wrap_ddp(prior: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    from torch.nn.parallel import DistributedDataParallel as DDP
    return DDP(prior, device_ids=[device.index] if device.type == "cuda" else None)


def full_state(prior: torch.nn.Module, opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    """The whole (unsharded) model and optimizer state dicts on rank 0 (a collective: every
    rank calls it); other ranks get empty dicts."""
    return get_state_dict(prior, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state(prior: torch.nn.Module, opt: torch.optim.Optimizer, model_state: dict,
                    optim_state: dict) -> None:
    """Every rank reads the whole state and keeps its shard."""
    set_state_dict(prior, opt, model_state_dict=model_state, optim_state_dict=optim_state,
                   options=StateDictOptions(full_state_dict=True))


def sync_gradients(net: torch.nn.Module, fsdp: bool, world: int, sync: bool) -> None:
    """Gradient accumulation: all-reduce (DDP) or reduce-scatter (FSDP) only on the last
    micro-batch of a step."""
    if world < 2:
        return
    if fsdp:
        net.set_requires_gradient_sync(sync)
    else:
        net.require_backward_grad_sync = sync
