"""Scaling out: what DALL-E did across machines, simulated in one process (paper 2.5, E).

The 12B model did not fit one 16 GB V100, so each parameter was **sharded** over the
m = 8 GPUs of a machine, and the gradient all-reduce between machines -- the bottleneck on
their cluster -- was shrunk with **PowerSGD** (Vogels et al. 2019): each gradient shard G is
sent as two low-rank factors, P and Q, with G ~ P Q^T, and the part the factors miss is kept
in an **error buffer** and added to the next step's gradient (error feedback).

Appendix E.1 counts what one resblock sends per GPU (d = d_model, rank r, m GPUs a machine,
each shard factorised at rank r/m):

    shard gradient                 P                  Q
    4 x  d x (d/m)  (qkv, out)     d x (r/m)          (d/m) x (r/m)
    1 x  d x (4d/m) (MLP in)       d x (r/m)          (4d/m) x (r/m)
    1 x  (4d/m) x d (MLP out)      (4d/m) x (r/m)     d x (r/m)
    total  12 d^2 / m              6 d r (m + 2) / m^2

so the factors are r (m + 2) / (2 d m) of the gradient -- 5r / (8 d) for m = 8 -- and the
**compression rate is 1 - 5r/(8 d_model)**: about 85% at the paper's sizes.

``resblock_shard_shapes`` and ``PowerSGD`` let a test count those numbers on real tensors;
``powersgd_compression_rate`` is the formula. On real GPUs, use PyTorch's own
``torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook`` with DDP (see the README).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


def powersgd_compression_rate(rank: int, d_model: int, gpus_per_machine: int = 8) -> float:
    """Share of inter-machine traffic saved: 1 - r (m + 2) / (2 d m); 1 - 5r/(8d) at m = 8."""
    if rank <= 0 or d_model <= 0 or gpus_per_machine <= 0:
        raise ValueError("rank, d_model and gpus_per_machine must be positive")
    m = gpus_per_machine
    return 1.0 - rank * (m + 2) / (2.0 * d_model * m)


def resblock_shard_shapes(d_model: int, gpus_per_machine: int = 8) -> list[tuple[int, int]]:
    """Per-GPU gradient shard shapes of one resblock (appendix E.1, table 2): the qkv and
    post-attention matrices and the first MLP matrix are sharded along axis 1, the second
    MLP matrix along axis 0."""
    d, m = d_model, gpus_per_machine
    if d % m:
        raise ValueError(f"d_model ({d}) must be divisible by the GPUs per machine ({m})")
    return [(d, d // m)] * 4 + [(d, 4 * d // m), (4 * d // m, d)]


@dataclass
class PowerSGD:
    """Rank-``rank`` PowerSGD with error feedback for one gradient matrix, as DALL-E used it:
    Q is a random Gaussian matrix fixed at the start and never updated (paper 2.5), P is
    orthogonalised with Householder QR (``torch.linalg.qr``) after adding eps * I (E.2 step 5).

    ``compress(grad)`` returns (P, Q) -- what would be all-reduced -- and keeps the residual in
    ``error``; ``decompress(P, Q)`` gives the gradient the optimizer uses, P Q^T.
    """

    shape: tuple[int, int]
    rank: int
    seed: int = 0
    eps: float = 1e-6
    error: torch.Tensor = field(init=False)
    q: torch.Tensor = field(init=False)

    def __post_init__(self):
        n, k = self.shape
        if not 0 < self.rank <= min(n, k):
            raise ValueError(f"rank must be in 1..{min(n, k)} for a {n}x{k} matrix, got {self.rank}")
        g = torch.Generator().manual_seed(self.seed)
        self.q = torch.randn(k, self.rank, generator=g)  # fixed, never updated
        self.error = torch.zeros(n, k)

    def compress(self, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if tuple(grad.shape) != tuple(self.shape):
            raise ValueError(f"expected a gradient of shape {self.shape}, got {tuple(grad.shape)}")
        m = self.error + grad.float()           # error feedback: (n, k)
        p = m @ self.q                          # (n, r)
        p = p + self.eps * torch.eye(*p.shape)  # keep it away from rank-deficient
        p, _ = torch.linalg.qr(p)               # orthonormal columns (Householder)
        q = m.T @ p                             # (k, r)
        self.error = m - p @ q.T                # what the factors missed, sent next time
        return p, q

    @staticmethod
    def decompress(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return p @ q.T


def simulate_resblock_traffic(d_model: int, rank: int, gpus_per_machine: int = 8, seed: int = 0) -> dict:
    """Compress one resblock's shard gradients (random) with PowerSGD at rank r/m per shard and
    count the elements sent: the measured ratio and rate, beside the paper's formula."""
    m = gpus_per_machine
    if rank % m:
        raise ValueError(f"rank ({rank}) must be divisible by the GPUs per machine ({m})")
    g = torch.Generator().manual_seed(seed)
    sent = full = 0
    for i, shape in enumerate(resblock_shard_shapes(d_model, m)):
        comp = PowerSGD(shape, rank // m, seed=seed + i)
        p, q = comp.compress(torch.randn(shape, generator=g))
        sent += p.numel() + q.numel()
        full += shape[0] * shape[1]
    return {"elements_full": full, "elements_sent": sent, "ratio": sent / full,
            "rate": 1 - sent / full, "formula_rate": powersgd_compression_rate(rank, d_model, m)}
