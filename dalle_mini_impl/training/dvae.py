"""Training the discrete VAE (stage 1; lessons 03-04).

``short_run`` trains a toy dVAE for a few hundred updates with the shipped recipe shortened
(AdamW, beta warm-up, tau annealing, the optional usage term): lesson 04 runs it live once and
``bench/elb_sweep.py`` runs it over configurations, seeds and precisions to give the lesson
the seed-to-seed spread its claims are checked against.
"""
from __future__ import annotations

import time

import torch

from .. import elb
from ..dvae import DiscreteVAE, DVAEConfig, train_step
from ..precision import Precision, as_precision
from ..utils import progress_bar, seed_everything


def short_run(train_images: torch.Tensor, probe: torch.Tensor, *, steps: int = 200, batch: int = 32,
              beta: float = 6.6, usage_weight: float = 0.1, usage_sharpness: float = 0.1,
              tau_const: float | None = None, likelihood: str = "mse", lr: float = 1e-3, seed: int = 0,
              precision: Precision | str | None = None, probe_every: int = 20,
              device: torch.device | str = "cpu", progress: bool = False) -> tuple[DiscreteVAE, dict]:
    """Train ``DVAEConfig.toy(likelihood=...)`` on ``train_images`` (N, 3, 32, 32) for ``steps``
    updates of ``batch`` random images: beta warmed up 0 -> ``beta`` over the first tenth,
    tau annealed 1 -> 1/16 over the run (or held at ``tau_const``). Every ``probe_every``
    updates the token perplexity of ``probe`` is recorded. Returns (model on the CPU,
    {"step": [...], "perplexity": [...], "seconds": s, "precision": name})."""
    device = torch.device(device)
    prec = as_precision(precision, device)
    gen = seed_everything(seed)
    model = DiscreteVAE(DVAEConfig.toy(likelihood=likelihood)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    beta_s, tau_s = elb.beta_schedule(max(1, steps // 10), beta), elb.tau_schedule(steps)
    curve = {"step": [], "perplexity": []}
    t0 = time.perf_counter()
    for step in progress_bar(range(steps), leave=False, disable=not progress):
        idx = torch.randint(0, len(train_images), (batch,), generator=gen)
        train_step(model, opt, train_images[idx].to(device), tau=tau_const or tau_s(step), beta=beta_s(step),
                   precision=prec, generator=gen if device.type == "cpu" else None,
                   usage_weight=usage_weight, usage_sharpness=usage_sharpness)
        if (step + 1) % probe_every == 0:
            ids = model.encode(probe).cpu()
            curve["step"].append(step + 1)
            curve["perplexity"].append(elb.perplexity(elb.codebook_usage(ids, model.config.n_codes)))
    curve.update(seconds=time.perf_counter() - t0, precision=prec.name)
    return model.cpu().eval(), curve
