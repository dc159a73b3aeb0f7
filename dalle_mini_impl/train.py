"""Training commands of the package, one subcommand per model.

    python -m dalle_mini_impl.train dvae --dataset shapes --steps 3000 --out data/dvae_shapes_toy

Shared pieces (used by every subcommand): ``load_images`` (datasets by name, via
``datasets.load_dataset``), ``RunLog`` (a JSONL metrics file, one line per logged step),
atomic checkpoints through ``utils.save_checkpoint`` and ``--resume`` from them. Each
subcommand is one function, ``train_<name>(args)``, registered in ``build_parser``; the
training *step* itself lives in the model's module (``dvae.train_step``) so the lessons
reuse it.

A run writes into ``--out``: ``<name>.pt`` (weights + config: what the lessons load),
``resume.pt`` (weights, optimizer, RNG and step: what ``--resume`` reads),
``metrics.jsonl`` (the training log) and ``metrics.json`` (the final evaluation).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from .datasets import load_images, load_pairs  # noqa: F401 (re-exported for older imports)
from .precision import pick_precision
from .utils import get_device, get_preset, load_checkpoint, save_checkpoint, seed_everything


# --------------------------------------------------------------------------- shared helpers
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


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="shapes", help="shapes, digits, folder:PATH or coco:JSON")
    p.add_argument("--steps", type=int, required=True, help="optimizer updates in total")
    p.add_argument("--out", required=True, help="output folder (checkpoints and metrics)")
    p.add_argument("--preset", default=None, help="cpu, gpu16 or gpu80 (default: by device)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the preset's")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best available)")
    add_precision_args(p)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--ckpt-every", type=int, default=500)
    p.add_argument("--resume", action="store_true", help="continue from OUT/resume.pt")
    p.add_argument("--stop-after", type=int, default=None,
                   help="stop after this many updates in this call (save resume.pt; continue with --resume)")


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
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], default=None,
                   help="autocast precision (default: $DALLE_PRECISION, else auto: bf16 where the "
                        "device computes it natively, fp16 on older GPUs, else float32)")
    p.add_argument("--bf16", "--no-bf16", action=_DeprecatedBF16, dest="precision",
                   help="deprecated: use --precision bf16 / fp32")


# --------------------------------------------------------------------------- dvae
def train_dvae(args: argparse.Namespace) -> dict:
    """Stage 1: train the discrete VAE (lessons 03-04) with the ELB, beta warm-up and tau annealing."""
    from .dvae import DiscreteVAE, DVAEConfig, decoder_step, train_step
    from .elb import Schedule, beta_schedule, codebook_usage, dead_codes, perplexity, tau_schedule

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.decoder_steps < 0:
        raise ValueError(f"--decoder-steps must be >= 0 (0 skips the decoder stage), got {args.decoder_steps}")
    device = get_device(args.device)
    preset = get_preset(args.preset, device)
    base = DVAEConfig.paper if args.config == "paper" else DVAEConfig.toy
    size = args.image_size or (256 if args.config == "paper" else preset.image_size)
    grid = args.grid or (32 if args.config == "paper" else preset.dvae_grid)
    changes = dict(image_size=size, grid=grid)
    if args.likelihood:
        changes["likelihood"] = args.likelihood
    if args.config != "paper":
        changes.update(n_codes=args.n_codes or preset.dvae_codes, n_hid=preset.dvae_hidden)
    elif args.n_codes:
        changes.update(n_codes=args.n_codes)
    for name in ("n_hid", "n_blk_per_group", "codebook_dim"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    cfg = base(**changes)
    batch = args.batch_size or preset.batch_size
    lr = args.lr or 1e-3
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    g = seed_everything(args.seed)
    train = load_images(args.dataset, args.n_train, "train", cfg.image_size, args.seed)
    name = args.dataset.split(":")[0].strip().lower()
    if name in ("shapes", "digits"):  # their own held-out split (shapes: unseen colour-shape pairs)
        held = load_images(args.dataset, args.n_eval, "holdout" if name == "shapes" else "test",
                           cfg.image_size, args.seed + 1)
    else:  # a folder or COCO file has no split: keep its last images aside
        if len(train) < 2:
            raise ValueError(f"{args.dataset} has {len(train)} image(s): too few to keep any aside for "
                             "evaluation; add images (at least 2, better hundreds)")
        n_eval = min(args.n_eval, max(1, len(train) // 10))
        train, held = train[:-n_eval], train[-n_eval:]
    if train.shape[1] != cfg.channels:
        raise ValueError(f"the dataset has {train.shape[1]}-channel images; this dVAE expects {cfg.channels}")

    model = DiscreteVAE(cfg).to(device)
    prec = pick_precision(device, args.precision)
    print(f"precision: {prec}", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=args.weight_decay)
    tau_s = tau_schedule(args.tau_steps or args.steps, start=args.tau_start, end=args.tau_end)
    beta_s = beta_schedule(args.beta_steps or max(1, args.steps // 5), end=args.beta)
    lr_s = Schedule(lr, lr * args.lr_end_ratio, args.steps)
    dec_lr = args.decoder_lr if args.decoder_lr is not None else lr / 2
    dec_lr_s = Schedule(dec_lr, dec_lr * args.lr_end_ratio, args.decoder_steps)
    total = args.steps + args.decoder_steps  # stage 1 updates, then the hard-token decoder stage
    log = RunLog(out / "metrics.jsonl")
    start = 0
    if args.resume:
        state = load_checkpoint(out / "resume.pt", model=model, optimizer=opt, restore_rng=True,
                                map_location=device)
        start = state["step"]
        g.set_state(state["extra"]["generator"])
        print(f"resumed from step {start}")
    elif (out / "metrics.jsonl").exists():
        (out / "metrics.jsonl").unlink()  # a fresh run starts a fresh log

    def save_resume(step: int) -> None:
        save_checkpoint(out / "resume.pt", model=model, optimizer=opt, config=cfg, step=step,
                        extra={"generator": g.get_state(),
                               "args": {k: v for k, v in vars(args).items() if k != "func"}})

    train_dev = train.to(device)
    t0, seen, ids = time.perf_counter(), 0, None
    stop = total if args.stop_after is None else min(total, start + args.stop_after)
    for step in range(start, stop):
        idx = torch.randint(0, len(train_dev), (batch,), generator=g).to(device)
        if step < args.steps:
            lr_now = lr_s(step)
            rec = train_step(model, opt, train_dev[idx], tau=tau_s(step), beta=beta_s(step), lr=lr_now,
                             precision=prec, generator=g if device.type == "cpu" else None,
                             usage_weight=args.usage_weight, usage_sharpness=args.usage_sharpness)
        else:  # the encoder is final: fit the decoder to its argmax tokens (dvae.decoder_step)
            if ids is None:
                ids = model.eval().encode(train_dev)
            lr_now = dec_lr_s(step - args.steps)
            rec = decoder_step(model, opt, ids[idx], train_dev[idx], lr=lr_now, precision=prec)
        seen += batch
        if (step + 1) % args.log_every == 0 or step + 1 == total:
            rec.update(step=step + 1, lr=lr_now, images_per_s=seen / (time.perf_counter() - t0))
            log.write(rec)
        if (step + 1) % args.ckpt_every == 0 and step + 1 < total:
            save_resume(step + 1)
    train_time = time.perf_counter() - t0
    if stop < total:
        save_resume(stop)
        print(f"stopped at step {stop} of {total}; continue with --resume")
        return {"step": stop}

    metrics = evaluate_dvae(model, held)
    metrics.update(steps=args.steps, decoder_steps=args.decoder_steps, train_seconds=round(train_time, 1), device=device.type,
                   config=asdict(cfg), command="python -m dalle_mini_impl.train " + " ".join(sys.argv[1:])
                   if sys.argv and sys.argv[0].endswith("train.py") else None)
    save_resume(total)
    model.save(out / "dvae.pt", step=total, extra={"metrics": {k: v for k, v in metrics.items()
                                                                    if isinstance(v, (int, float))}})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps({k: v for k, v in metrics.items() if k != "config"}, indent=2))
    return metrics


def evaluate_dvae(model, images: torch.Tensor) -> dict:
    """Hard-token reconstruction MSE and codebook health on ``images`` (held out)."""
    from .elb import codebook_usage, dead_codes, perplexity

    model.eval()
    t = time.perf_counter()
    ids = model.encode(images)
    encode_s = time.perf_counter() - t
    recon = model.decode(ids).cpu()
    counts = codebook_usage(ids.cpu(), model.config.n_codes)
    return {"n_eval": len(images), "hard_mse": float(((recon - images.cpu()) ** 2).mean()),
            "perplexity": perplexity(counts), "dead_codes": dead_codes(counts),
            "n_codes": model.config.n_codes, "encode_images_per_s": len(images) / max(encode_s, 1e-9)}


def add_dvae_parser(sub) -> None:
    p = sub.add_parser("dvae", help="stage 1: the discrete VAE (lessons 03-04)")
    add_common_args(p)
    p.add_argument("--config", choices=["toy", "paper"], default="toy")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--grid", type=int, default=None)
    p.add_argument("--n-codes", type=int, default=None)
    p.add_argument("--n-hid", type=int, default=None)
    p.add_argument("--n-blk-per-group", type=int, default=None)
    p.add_argument("--codebook-dim", type=int, default=None)
    p.add_argument("--likelihood", choices=["logit_laplace", "mse"], default=None,
                   help="default: the config's (toy: mse, paper: logit_laplace)")
    p.add_argument("--beta", type=float, default=6.6, help="final KL weight (paper: 6.6)")
    p.add_argument("--beta-steps", type=int, default=None, help="warm-up length (default: steps / 5)")
    p.add_argument("--tau-start", type=float, default=1.0)
    p.add_argument("--tau-end", type=float, default=1.0 / 16)
    p.add_argument("--tau-steps", type=int, default=None, help="annealing length (default: steps)")
    p.add_argument("--usage-weight", type=float, default=0.1,
                   help="weight of the codebook-usage term (elb.usage_kl; not in the paper: 0 trains "
                        "the paper's objective alone, which collapses the toy codebook on shapes)")
    p.add_argument("--usage-sharpness", type=float, default=0.1,
                   help="logits are divided by this before averaging q over the batch")
    p.add_argument("--lr-end-ratio", type=float, default=0.05, help="cosine decay of the step size to lr * this")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--decoder-steps", type=int, default=0,
                   help="after --steps, this many updates of the decoder alone on the encoder's hard tokens "
                        "(dvae.decoder_step; not in the paper): sharpens what the decoder draws from real codes")
    p.add_argument("--decoder-lr", type=float, default=None, help="step size of that stage (default: lr / 2)")
    p.add_argument("--n-train", type=int, default=20_000)
    p.add_argument("--n-eval", type=int, default=1_000)
    p.set_defaults(func=train_dvae)


# --------------------------------------------------------------------------- clip
def train_clip_command(args: argparse.Namespace) -> dict:
    """Lesson 09: the small CLIP reranker (``clip.train_clip``) on shapes pairs, then its
    zero-shot and retrieval accuracy (``clip.evaluate_clip``)."""
    from .clip import CLIPConfig, evaluate_clip, save_clip, train_clip

    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.dataset.startswith("shapes"):
        raise ValueError("the clip command trains on the shapes dataset (its evaluation needs attributes)")
    if args.resume:
        raise ValueError("the clip command has no --resume (a run takes minutes): start it again")
    device = get_device(args.device)
    preset = get_preset(args.preset, device)
    cfg = CLIPConfig(image_size=args.image_size or preset.image_size, width=args.width,
                     d_text=args.d_text, embed_dim=args.embed_dim, text_layers=args.text_layers)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = RunLog(out / "metrics.jsonl")
    if (out / "metrics.jsonl").exists():
        (out / "metrics.jsonl").unlink()
    t0 = time.perf_counter()
    model = train_clip(steps=args.steps, n_train=args.n_train, batch_size=args.batch_size or 256,
                       lr=args.lr or 1e-3, seed=args.seed, config=cfg, split=args.split,
                       precision=args.precision, device=device, log=log.write, log_every=args.log_every)
    train_time = time.perf_counter() - t0
    metrics = evaluate_clip(model.cpu(), n=args.n_eval)
    metrics.update(steps=args.steps, train_seconds=round(train_time, 1), device=device.type,
                   config=asdict(cfg), command="python -m dalle_mini_impl.train " + " ".join(sys.argv[1:]))
    save_clip(model, out / "clip.pt", step=args.steps,
              extra={"metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))}})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps({k: v for k, v in metrics.items() if k != "config"}, indent=2))
    return metrics


def add_clip_parser(sub) -> None:
    p = sub.add_parser("clip", help="lesson 09: the contrastive reranker (small CLIP) on shapes")
    add_common_args(p)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--d-text", type=int, default=96)
    p.add_argument("--text-layers", type=int, default=2)
    p.add_argument("--embed-dim", type=int, default=96)
    p.add_argument("--n-train", type=int, default=30_000)
    p.add_argument("--n-eval", type=int, default=2_000, help="images per split for the zero-shot evaluation")
    p.add_argument("--split", choices=["all", "train"], default="all",
                   help="all: every (colour, shape) pair, as the paper's CLIP saw its own data")
    p.set_defaults(func=train_clip_command)


# --------------------------------------------------------------------------- entry point
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dalle_mini_impl.train",
                                     description="Train a model of the DALL-E course.")
    sub = parser.add_subparsers(dest="command", required=True)
    add_dvae_parser(sub)
    from .train_dalle import add_dalle_parser  # lesson 08 (stage 2); imported here: it imports this module
    add_dalle_parser(sub)
    add_clip_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
