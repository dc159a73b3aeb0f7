"""The evidence lower bound (ELB) of DALL-E's two training stages, its schedules and the
codebook-health numbers that show whether a dVAE is using its codes.

Paper: Ramesh et al. 2021, section 2 (eq. 1), section 2.1 and appendix A.2.

DALL-E models images x, captions y and image tokens z with
p_{theta,psi}(x, y, z) = p_theta(x | y, z) p_psi(y, z) and maximises (eq. 1)

    ln p(x, y) >= E_{z ~ q_phi(z | x)} [ ln p_theta(x | y, z) ]
                  - beta * KL( q_phi(y, z | x) || p_psi(y, z) )

* Stage 1 (the dVAE, lesson 03): p_psi is the uniform prior over K codes at every grid
  cell, so the KL splits into one term per cell, KL(q || U) = log K - H(q) (``kl_to_uniform``).
  The bound holds for beta = 1; the paper warms beta up from 0 to 6.6 (``Schedule``) and
  anneals the gumbel-softmax temperature tau from 1 to 1/16.
* Stage 2 (the transformer prior, lesson 08): phi and theta are frozen and q_phi is read as
  a point mass at its argmax tokens z*, so the only term that depends on psi is
  -KL(delta_{z*} || p_psi) = ln p_psi(y, z*): maximising the ELB is minimising the prior's
  cross-entropy on the tokens (``stage2_nll``).

Codebook health (``codebook_usage``, ``perplexity``, ``dead_codes``): a dVAE that routes
every cell through a handful of codes wastes its vocabulary; the exponential of the entropy
of the code-usage histogram says how many codes it effectively uses.

The usage term (``usage_kl``; not in the paper). Averaged over the data, the KL to the
uniform prior splits in two (Hoffman & Johnson 2016):

    E_x KL(q(z | x) || U) = I(x; z) + KL(q_bar || U),     q_bar = E_x q(z | x),

the information the codes carry about the image plus how far the *aggregate* code usage is
from uniform. Only the second part fights codebook collapse, and beta weighs both alike. On
the course's shapes (77% of grid cells are plain black background) the toy dVAE collapses
onto a few codes under the paper's objective alone; adding ``usage_weight * usage_kl`` (the
batch's q_bar, computed from logits sharpened by ``sharpness`` so that it tracks the *argmax*
codes that stage 2 will see) keeps hundreds of codes in use. wav2vec 2.0's "diversity loss"
is the same idea. Lesson 04 measures the difference.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .vae import bits_per_dim  # lesson 02's eq. (3); the bound in bits per dimension

__all__ = ["entropy", "kl_to_uniform", "usage_kl", "ELBTerms", "elb_stage1", "stage2_nll", "bits_per_dim",
           "Schedule", "beta_schedule", "tau_schedule", "codebook_usage", "perplexity",
           "dead_codes"]


# --------------------------------------------------------------------------- KL to the uniform prior
def entropy(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """H(q) = -sum_k q_k ln q_k (nats) of the categorical q = softmax(logits) along ``dim``."""
    logq = F.log_softmax(logits.float(), dim=dim)
    return -(logq.exp() * logq).sum(dim)


def kl_to_uniform(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """KL(q || U_K) = sum_k q_k ln(q_k K) = ln K - H(q) >= 0, per position (nats).

    ``logits``: (B, K, h, w) encoder logits; returns (B, h, w). Computed as the sum, not as
    ``ln K - H``, so it stays >= 0 in floating point too.
    """
    k = logits.shape[dim]
    logq = F.log_softmax(logits.float(), dim=dim)
    return (logq.exp() * (logq + math.log(k))).sum(dim).clamp_min(0.0)


def usage_kl(logits: torch.Tensor, sharpness: float = 0.1, dim: int = 1) -> torch.Tensor:
    """KL(q_bar || U_K) = ln K - H(q_bar) of the batch's average code distribution (nats, scalar).

    ``logits``: (B, K, h, w); q_bar is the mean over the batch and the grid of
    softmax(logits / sharpness). ``sharpness`` < 1 moves each cell's q toward the one-hot of
    its argmax, so q_bar moves toward the usage histogram of the codes ``encode`` picks (with
    sharpness = 1 the term can be satisfied by making every q broad, which is not the point).
    It only moves toward it: on the shipped toy dVAE, whose q are broad, sharpness 0.1 gives
    0.04 nats where the argmax histogram's KL to uniform is 0.57 (lesson 04 measures this).
    0 when every code is used equally, ln K when one code takes every cell.
    """
    if sharpness <= 0:
        raise ValueError(f"sharpness must be > 0, got {sharpness}")
    k = logits.shape[dim]
    q = F.softmax(logits.float() / sharpness, dim=dim).movedim(dim, -1).reshape(-1, k).mean(0)
    return (q * (q.clamp_min(1e-12).log() + math.log(k))).sum().clamp_min(0.0)


# --------------------------------------------------------------------------- the two stages
@dataclass
class ELBTerms:
    """One batch's bound, per image, in nats: ``elb = -(recon_nll + kl)`` when beta = 1.
    ``loss`` is what training minimises: (recon_nll + beta * kl) per data dimension."""

    loss: torch.Tensor       # scalar, nats per dimension (what backward() sees)
    recon_nll: torch.Tensor  # scalar, -E[ln p_theta(x | z)] per image
    kl: torch.Tensor         # scalar, KL(q_phi(z | x) || U) per image (sum over grid cells)
    beta: float
    n_dims: int              # data dimensions per image (C * H * W)
    usage: torch.Tensor | None = None  # scalar, usage_kl of the batch (None when not used)

    @property
    def elb(self) -> torch.Tensor:
        """The true bound (beta = 1) per image, nats; higher is better."""
        return -(self.recon_nll + self.kl)


def elb_stage1(recon_nll: torch.Tensor, logits: torch.Tensor, beta: float, n_dims: int,
               usage_weight: float = 0.0, usage_sharpness: float = 0.1) -> ELBTerms:
    """Stage 1 of eq. 1 with the uniform prior (plus, if ``usage_weight`` > 0, the usage term
    ``usage_weight * usage_kl(logits, usage_sharpness)``, which is not part of the bound).

    Args:
        recon_nll: (B,) -ln p_theta(x | z) per image (sum over its pixels), nats.
        logits: (B, K, h, w) encoder logits of q_phi(z | x).
        beta: KL weight (1 gives the true bound).
        n_dims: data dimensions per image (C * H * W); the loss is per dimension so that
            the learning rate does not depend on the image size.
        usage_weight: weight of ``usage_kl`` (nats of aggregate-usage KL per batch, added to
            the per-dimension loss); 0 trains exactly the paper's objective.
    """
    if recon_nll.ndim != 1 or logits.ndim != 4 or recon_nll.shape[0] != logits.shape[0]:
        raise ValueError(f"expected recon_nll (B,) and logits (B, K, h, w), got "
                         f"{tuple(recon_nll.shape)} and {tuple(logits.shape)}")
    kl = kl_to_uniform(logits).flatten(1).sum(1)  # (B,)
    recon, kl = recon_nll.mean(), kl.mean()
    loss = (recon + beta * kl) / n_dims
    usage = None
    if usage_weight:
        usage = usage_kl(logits, usage_sharpness)
        loss = loss + usage_weight * usage
    return ELBTerms(loss=loss, recon_nll=recon, kl=kl, beta=float(beta), n_dims=int(n_dims), usage=usage)


def stage2_nll(prior_logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Stage 2 of eq. 1: with q_phi a point mass at the dVAE's argmax tokens, the ELB's only
    psi-dependent term is ln p_psi(tokens). Returns -ln p_psi per sequence (nats), (B,).

    ``prior_logits``: (B, T, V) next-token logits; ``tokens``: (B, T) the targets.
    """
    if prior_logits.shape[:2] != tokens.shape:
        raise ValueError(f"prior_logits (B, T, V) {tuple(prior_logits.shape)} do not match "
                         f"tokens (B, T) {tuple(tokens.shape)}")
    nll = F.cross_entropy(prior_logits.float().transpose(1, 2), tokens, reduction="none")
    return nll.sum(1)


# --------------------------------------------------------------------------- schedules
@dataclass
class Schedule:
    """A value that moves from ``start`` to ``end`` over ``steps`` updates, then stays.

    ``kind`` "cosine": start + (end - start) * (1 - cos(pi t)) / 2 with t = step / steps
    (the paper uses cosine schedules, appendix A.2); "linear": start + (end - start) t;
    "exp": geometric interpolation (start and end > 0). ``sched(step)`` gives the value.
    """

    start: float
    end: float
    steps: int
    kind: str = "cosine"

    def __post_init__(self):
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.kind not in ("cosine", "linear", "exp"):
            raise ValueError(f"kind must be 'cosine', 'linear' or 'exp', got {self.kind!r}")
        if self.kind == "exp" and (self.start <= 0 or self.end <= 0):
            raise ValueError("an 'exp' schedule needs start and end > 0")

    def __call__(self, step: int) -> float:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if self.steps == 0 or step >= self.steps:
            return float(self.end)
        t = step / self.steps
        if self.kind == "cosine":
            return float(self.start + (self.end - self.start) * 0.5 * (1.0 - math.cos(math.pi * t)))
        if self.kind == "linear":
            return float(self.start + (self.end - self.start) * t)
        return float(self.start * (self.end / self.start) ** t)


def beta_schedule(steps: int = 5000, end: float = 6.6, start: float = 0.0, kind: str = "cosine") -> Schedule:
    """KL-weight warm-up; the paper's is 0 -> 6.6 over the first 5,000 updates."""
    return Schedule(start, end, steps, kind)


def tau_schedule(steps: int = 150_000, start: float = 1.0, end: float = 1.0 / 16, kind: str = "cosine") -> Schedule:
    """Gumbel-softmax temperature annealing; the paper's is 1 -> 1/16 over 150,000 updates."""
    return Schedule(start, end, steps, kind)


# --------------------------------------------------------------------------- codebook health
def codebook_usage(ids: torch.Tensor, n_codes: int) -> torch.Tensor:
    """Histogram (n_codes,) of how often each code appears in ``ids`` (any shape, long)."""
    if ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"ids must be integer token ids, got {ids.dtype}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= n_codes):
        raise ValueError(f"ids must lie in [0, {n_codes}); got range [{int(ids.min())}, {int(ids.max())}]")
    return torch.bincount(ids.flatten().long(), minlength=n_codes)


def perplexity(counts: torch.Tensor) -> float:
    """exp(H(p)) of the usage distribution p = counts / sum: the number of equally used
    codes that would have the same entropy (1 = one code, K = all codes equally)."""
    p = counts.double() / counts.sum().clamp_min(1)
    h = -(p[p > 0] * p[p > 0].log()).sum()
    return float(h.exp())


def dead_codes(counts: torch.Tensor) -> int:
    """How many codes were never chosen."""
    return int((counts == 0).sum())


@torch.no_grad()
def codebook_report(logits: torch.Tensor) -> dict[str, float]:
    """Codebook health and the two halves of the KL, from encoder logits (N, K, g, g) of
    held-out images (lesson 04): token perplexity and dead codes of the argmax tokens;
    ``kl`` = E_x KL(q || U) per cell (nats), split into ``info`` = I(x; z) and ``agg`` =
    KL(q_bar || U) (soft q); ``hist_kl`` = KL(token histogram || U) = ln K - ln perplexity."""
    logits = logits.float()
    K = logits.shape[1]
    counts = codebook_usage(logits.argmax(1), K)
    kl = kl_to_uniform(logits).mean().item()
    agg = usage_kl(logits, sharpness=1.0).item()
    ppl = perplexity(counts)
    return {"perplexity": ppl, "dead": dead_codes(counts), "kl": kl, "info": kl - agg, "agg": agg,
            "hist_kl": math.log(K) - math.log(ppl)}
