"""Training the discrete VAE (stage 1; lessons 03-04; paper section 2.1 and appendix A.2).

    python -m dalle_mini_impl.training dvae --dataset shapes --steps 3000 --decoder-steps 2000 --out runs/dvae

``train_dvae(DVAESettings(...))`` is the command: AdamW on the ELB with beta warmed up and tau
annealed (``elb``'s schedules), the optional codebook-usage term, then optionally
``--decoder-steps`` updates of the decoder alone on the encoder's hard tokens
(``dvae.decoder_step``; not in the paper). The step itself is ``dvae.train_step``, which the
lessons call too. ``evaluate_dvae`` reports hard-token MSE and codebook health.

``short_run`` trains a toy dVAE for a few hundred updates with the shipped recipe shortened
(AdamW, beta warm-up, tau annealing, the optional usage term): lesson 04 runs it live once and
``bench/elb_sweep.py`` runs it over configurations, seeds and precisions to give the lesson
the seed-to-seed spread its claims are checked against.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .. import elb
from ..datasets import load_images
from ..dvae import DiscreteVAE, DVAEConfig, decoder_step, train_step
from ..precision import Precision, as_precision, pick_precision
from ..presets import get_preset
from ..utils import (get_device, load_checkpoint, progress_bar, restore_checkpoint, save_checkpoint,
                     seed_everything)
from ..viz import save_image_grid
from .common import (GracefulStop, NonFiniteGuard, RunLog, add_common_args, check_resume, command_line,
                     data_digest, fresh_log, guard_shipped, held_out_split, nonnegative_float, nonnegative_int,
                     positive_float, positive_int, set_threads, settings_from_args, truncate_log)


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


# --------------------------------------------------------------------------- the command
@dataclass
class DVAESettings:
    """Everything ``train dvae`` reads; the command line builds one (``None``: the preset's or
    the config's value)."""

    out: str
    steps: int
    dataset: str = "shapes"
    preset: str | None = None
    config: str = "toy"            # toy or paper (OpenAI's released shape)
    image_size: int | None = None
    grid: int | None = None
    n_codes: int | None = None
    n_hid: int | None = None
    n_blk_per_group: int | None = None
    codebook_dim: int | None = None
    likelihood: str | None = None  # logit_laplace or mse (default: the config's)
    batch_size: int | None = None
    lr: float | None = None        # default 1e-3
    lr_end_ratio: float = 0.05
    weight_decay: float = 0.0
    beta: float = 6.6
    beta_steps: int | None = None
    tau_start: float = 1.0
    tau_end: float = 1.0 / 16
    tau_steps: int | None = None
    usage_weight: float = 0.1
    usage_sharpness: float = 0.1
    decoder_steps: int = 0
    decoder_lr: float | None = None
    n_train: int = 20_000
    n_eval: int = 1_000
    seed: int = 0
    device: str | None = None
    precision: str | None = None
    threads: int | None = None
    log_every: int = 50
    ckpt_every: int = 500
    resume: bool = False
    stop_after: int | None = None
    overwrite_shipped: bool = False
    max_nonfinite: int = 10

    # may differ between a run and its --resume (the images are compared by content)
    MAY_CHANGE = frozenset({"log_every", "ckpt_every", "threads", "device", "precision", "dataset",
                            "max_nonfinite", "overwrite_shipped"})

    from_args = classmethod(settings_from_args)

    def model_config(self, device: torch.device) -> DVAEConfig:
        """The dVAE these settings build: the preset's sizes, overridden by the options."""
        if self.decoder_steps < 0:
            raise ValueError(f"--decoder-steps must be >= 0 (0 skips the decoder stage), got {self.decoder_steps}")
        preset = get_preset(self.preset, device)
        paper = self.config == "paper"
        changes = dict(image_size=self.image_size or (256 if paper else preset.image_size),
                       grid=self.grid or (32 if paper else preset.dvae_grid))
        if self.likelihood:
            changes["likelihood"] = self.likelihood
        if not paper:
            changes.update(n_codes=self.n_codes or preset.dvae_codes, n_hid=preset.dvae_hidden)
        elif self.n_codes:
            changes.update(n_codes=self.n_codes)
        for name in ("n_hid", "n_blk_per_group", "codebook_dim"):
            if getattr(self, name) is not None:
                changes[name] = getattr(self, name)
        return (DVAEConfig.paper if paper else DVAEConfig.toy)(**changes)


def _split(s: DVAESettings, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) images: shapes and digits have their own held-out split (shapes:
    unseen colour-shape pairs); a folder or COCO file keeps a seeded random tenth aside (not
    its last files, which for sorted names would be one corner of the data)."""
    train = load_images(s.dataset, s.n_train, "train", image_size, s.seed)
    name = s.dataset.split(":")[0].strip().lower()
    if name in ("shapes", "digits"):
        held = load_images(s.dataset, s.n_eval, "holdout" if name == "shapes" else "test", image_size, s.seed + 1)
        return train, held
    if len(train) < 2:
        raise ValueError(f"{s.dataset} has {len(train)} image(s): too few to keep any aside for "
                         "evaluation; add images (at least 2, better hundreds)")
    n_eval = min(s.n_eval, max(1, len(train) // 10))
    kept, held = held_out_split(len(train), n_eval, s.seed)
    return train[kept], train[held]


def train_dvae(s: DVAESettings) -> dict:
    """Stage 1: train (or resume) the discrete VAE; see the module docstring."""
    set_threads(s.threads)
    device = get_device(s.device)
    cfg = s.model_config(device)
    batch = s.batch_size or get_preset(s.preset, device).batch_size
    lr = s.lr or 1e-3
    guard_shipped(s.out, s.overwrite_shipped)
    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)

    g = seed_everything(s.seed)
    train, held = _split(s, cfg.image_size)
    if train.shape[1] != cfg.channels:
        raise ValueError(f"the dataset has {train.shape[1]}-channel images; this dVAE expects {cfg.channels}")

    model = DiscreteVAE(cfg).to(device)
    prec = pick_precision(device, s.precision)
    print(f"precision: {prec}", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=s.weight_decay)
    dec_lr = s.decoder_lr if s.decoder_lr is not None else lr / 2
    schedules = {"tau": elb.tau_schedule(s.tau_steps or s.steps, start=s.tau_start, end=s.tau_end),
                 "beta": elb.beta_schedule(s.beta_steps or max(1, s.steps // 5), end=s.beta),
                 "lr": elb.Schedule(lr, lr * s.lr_end_ratio, s.steps),
                 "decoder_lr": elb.Schedule(dec_lr, dec_lr * s.lr_end_ratio, s.decoder_steps), "ids": None}
    total = s.steps + s.decoder_steps  # stage 1 updates, then the hard-token decoder stage
    log = RunLog(fresh_log(out, s.resume))
    data = data_digest(train)
    guard = NonFiniteGuard(s.max_nonfinite)
    start = 0
    if s.resume:
        state = load_checkpoint(out / "resume.pt")
        saved = state["extra"]
        for note in check_resume(saved.get("settings", {}), asdict(s), DVAESettings.MAY_CHANGE,
                                 steps_key="decoder_steps"):
            print(f"resume: {note}", flush=True)
        if saved.get("data", data) != data or saved.get("precision", prec.name) != prec.name:
            raise ValueError("--resume: the training images or the precision differ from those of the run in "
                             "resume.pt; use the same, or start a new run in another --out")
        restore_checkpoint(state, model=model, optimizer=opt, restore_rng=True, where=out / "resume.pt")
        start = state["step"]
        g.set_state(state["extra"]["generator"])
        guard.total = saved.get("skipped_total", 0)
        truncate_log(out / "metrics.jsonl", start)
        print(f"resumed from step {start}")

    def save_resume(step: int) -> None:
        save_checkpoint(out / "resume.pt", model=model, optimizer=opt, config=cfg, step=step,
                        extra={"generator": g.get_state(), "settings": asdict(s), "data": data,
                               "precision": prec.name, "skipped_total": guard.total})

    train_dev = train.to(device)
    t0, seen = time.perf_counter(), 0
    stop = total if s.stop_after is None else min(total, start + s.stop_after)
    print(f"training a {cfg.n_codes}-code dVAE on {len(train):,} images: updates {start + 1}-{stop} of {total} "
          f"(a log line every {s.log_every})", flush=True)
    with GracefulStop() as interrupt:
        for step in range(start, stop):
            if interrupt.requested:  # Ctrl-C or SIGTERM, at a step boundary: save and stop
                save_resume(step)
                print(f"interrupted at step {step}: saved {out / 'resume.pt'}; continue with --resume", flush=True)
                raise SystemExit(130)
            rec = _one_update(s, model, opt, train_dev, batch, step, g, prec, schedules)
            guard.update(not rec["skipped"], step + 1)
            seen += batch
            if (step + 1) % s.log_every == 0 or step + 1 == total:
                rec.update(step=step + 1, images_per_s=seen / (time.perf_counter() - t0), skipped=guard.total)
                health = evaluate_dvae(model, held[:256])
                rec.update({f"val_{k}": health[k] for k in ("hard_mse", "perplexity", "dead_codes")})
                log.write(rec)
            if (step + 1) % s.ckpt_every == 0 and step + 1 < total:
                save_resume(step + 1)
                write_reconstructions(model, held, out / "recons" / f"step_{step + 1:06d}.png")
    train_time = time.perf_counter() - t0
    if stop < total:
        save_resume(stop)
        print(f"stopped at step {stop} of {total}; continue with --resume")
        return {"step": stop}

    metrics = evaluate_dvae(model, held)
    metrics.update(steps=s.steps, decoder_steps=s.decoder_steps, train_seconds=round(train_time, 1),
                   device=device.type, config=asdict(cfg), command=command_line())
    save_resume(total)
    write_reconstructions(model, held, out / "recons" / f"step_{total:06d}.png")
    model.save(out / "dvae.pt", step=total, extra={"metrics": {k: v for k, v in metrics.items()
                                                                if isinstance(v, (int, float))}})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps({k: v for k, v in metrics.items() if k != "config"}, indent=2))
    print(f"saved {out / 'dvae.pt'}; train stage 2 on it with --dvae {out / 'dvae.pt'}")
    return metrics


def _one_update(s: DVAESettings, model: DiscreteVAE, opt, train: torch.Tensor, batch: int, step: int,
                g: torch.Generator, prec: Precision, schedules: dict) -> dict:
    """Update ``step``: stage 1 (the ELB) for the first ``s.steps``, then the decoder stage."""
    idx = torch.randint(0, len(train), (batch,), generator=g).to(train.device)
    if step < s.steps:
        lr = schedules["lr"](step)
        rec = train_step(model, opt, train[idx], tau=schedules["tau"](step), beta=schedules["beta"](step), lr=lr,
                         precision=prec, generator=g if train.device.type == "cpu" else None,
                         usage_weight=s.usage_weight, usage_sharpness=s.usage_sharpness)
    else:  # the encoder is final: fit the decoder to its argmax tokens (dvae.decoder_step)
        if schedules["ids"] is None:
            schedules["ids"] = model.eval().encode(train)
        lr = schedules["decoder_lr"](step - s.steps)
        rec = decoder_step(model, opt, schedules["ids"][idx], train[idx], lr=lr, precision=prec)
    rec["lr"] = lr
    return rec


def write_reconstructions(model: DiscreteVAE, images: torch.Tensor, path: Path, n: int = 8) -> None:
    """A grid of held-out images (top row) above their hard-token reconstructions (bottom row):
    what the tokens keep, the first thing to look at on your own data."""
    was = model.training
    model.eval()
    with torch.no_grad():
        real = images[:n]
        recon = model.decode(model.encode(real)).cpu()
    model.train(was)
    save_image_grid(torch.cat([real.cpu(), recon]), path, nrow=len(real))


def evaluate_dvae(model: DiscreteVAE, images: torch.Tensor) -> dict:
    """Hard-token reconstruction MSE and codebook health on ``images`` (held out); the model
    is left in the mode it was in (training calls this for each log line)."""
    was = model.training
    model.eval()
    with torch.no_grad():
        t = time.perf_counter()
        ids = model.encode(images)
        encode_s = time.perf_counter() - t
        recon = model.decode(ids).cpu()
    model.train(was)
    counts = elb.codebook_usage(ids.cpu(), model.config.n_codes)
    return {"n_eval": len(images), "hard_mse": float(((recon - images.cpu()) ** 2).mean()),
            "perplexity": elb.perplexity(counts), "dead_codes": elb.dead_codes(counts),
            "n_codes": model.config.n_codes, "encode_images_per_s": len(images) / max(encode_s, 1e-9)}


def add_parser(sub) -> None:
    p = sub.add_parser("dvae", help="stage 1: the discrete VAE (lessons 03-04)")
    add_common_args(p, steps=3000, out="runs/dvae")  # 3000: what the shipped data/dvae_shapes_toy took
    p.add_argument("--config", choices=["toy", "paper"], default="toy")
    p.add_argument("--image-size", type=positive_int, default=None)
    p.add_argument("--grid", type=positive_int, default=None)
    p.add_argument("--n-codes", type=positive_int, default=None)
    p.add_argument("--n-hid", type=positive_int, default=None)
    p.add_argument("--n-blk-per-group", type=positive_int, default=None)
    p.add_argument("--codebook-dim", type=positive_int, default=None)
    p.add_argument("--likelihood", choices=["logit_laplace", "mse"], default=None,
                   help="default: the config's (toy: mse, paper: logit_laplace)")
    p.add_argument("--beta", type=nonnegative_float, default=6.6, help="final KL weight (paper: 6.6)")
    p.add_argument("--beta-steps", type=positive_int, default=None, help="warm-up length (default: steps / 5)")
    p.add_argument("--tau-start", type=positive_float, default=1.0)
    p.add_argument("--tau-end", type=positive_float, default=1.0 / 16)
    p.add_argument("--tau-steps", type=positive_int, default=None, help="annealing length (default: steps)")
    p.add_argument("--usage-weight", type=nonnegative_float, default=0.1,
                   help="weight of the codebook-usage term (elb.usage_kl; not in the paper: 0 trains "
                        "the paper's objective alone, which collapses the toy codebook on shapes)")
    p.add_argument("--usage-sharpness", type=positive_float, default=0.1,
                   help="logits are divided by this before averaging q over the batch")
    p.add_argument("--lr-end-ratio", type=positive_float, default=0.05, help="cosine decay of the step size to lr * this")
    p.add_argument("--weight-decay", type=nonnegative_float, default=0.0)
    p.add_argument("--decoder-steps", type=nonnegative_int, default=0,
                   help="after --steps, this many updates of the decoder alone on the encoder's hard tokens "
                        "(dvae.decoder_step; not in the paper): sharpens what the decoder draws from real codes")
    p.add_argument("--decoder-lr", type=positive_float, default=None, help="step size of that stage (default: lr / 2)")
    p.add_argument("--n-train", type=positive_int, default=20_000)
    p.add_argument("--n-eval", type=positive_int, default=1_000)
    p.add_argument("--max-nonfinite", type=nonnegative_int, default=10,
                   help="stop after this many updates in a row skipped for an inf/NaN loss or gradient (0: never)")
    p.set_defaults(func=lambda args: train_dvae(DVAESettings.from_args(args)))
