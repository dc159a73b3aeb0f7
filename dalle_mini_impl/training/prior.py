"""Training unCLIP's two priors of lesson 12 (:mod:`dalle_mini_impl.unclip`): caption -> CLIP
image embedding, the diffusion prior and the direct baseline, on one set of pairs.

    python -m dalle_mini_impl.training prior --clip-model data/clip_shapes_heldout --out runs/unclip
    python -m dalle_mini_impl.training diffusion --clip-model data/clip_shapes_heldout --out runs/unclip/decoder

Every image and caption is embedded once by the CLIP; the priors then train on the (N, D)
embeddings (seconds per thousand steps). The conventions of the other commands: a seeded
validation split whose mean cosine (sampled diffusion-prior embedding and direct prediction
against the true image embedding) is in every log line, ``metrics.jsonl``, an atomic
``resume.pt`` every ``--ckpt-every`` steps, Ctrl-C / SIGTERM saves first, ``--resume``
continues exactly (each step's draws are a function of (seed, step)). Writes ``OUT/prior.pt``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ..clip import load_clip
from ..datasets import load_pairs
from ..unclip import DiffusionPrior, DirectPrior, PriorConfig, fit_prior, save_priors
from ..utils import data_dir, load_checkpoint, save_checkpoint
from .common import (GracefulStop, RunLog, StateOf, add_common_args, check_resume, command_line, fresh_log,
                     guard_shipped, held_out_split, nonnegative_int, objects_arg, plain_args, positive_int,
                     set_threads, truncate_log)

MAY_CHANGE = frozenset({"log_every", "ckpt_every", "threads", "device", "overwrite_shipped"})


@torch.no_grad()
def embed_pairs(clip, images: torch.Tensor, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The CLIP image and caption embeddings of every pair, (N, D) each, in batches of 512."""
    img = torch.cat([clip.encode_image(images[i:i + 512]).cpu() for i in range(0, len(images), 512)])
    txt = torch.cat([clip.encode_text(captions[i:i + 512]).cpu() for i in range(0, len(captions), 512)])
    return img, txt


@torch.no_grad()
def validation_cosines(prior: DiffusionPrior, direct: DirectPrior, img: torch.Tensor, txt: torch.Tensor,
                       seed: int, steps: int = 25) -> dict[str, float]:
    """Mean cosine with the true image embedding: a diffusion-prior sample (fixed seed), the direct
    prediction, and the caption's text embedding itself; and the diffusion prior's spread, the mean
    1 - cosine between two of its samples for one caption (the direct prior's is 0: a cosine alone
    rewards a prior that collapses onto the mean)."""
    g = torch.Generator().manual_seed(seed + 77)
    a, b = prior.sample(txt, steps, generator=g), prior.sample(txt, steps, generator=g)
    return {"val_cos_diffusion": (a * img).sum(-1).mean().item(),
            "val_spread_diffusion": (1 - (a * b).sum(-1)).mean().item(),
            "val_cos_direct": (direct(txt) * img).sum(-1).mean().item(),
            "val_cos_text": (txt * img).sum(-1).mean().item()}


def train_prior_command(args: argparse.Namespace) -> dict:
    set_threads(args.threads)
    guard_shipped(args.out, args.overwrite_shipped)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.clip_model = args.clip_model or str(data_dir() / "clip_shapes_heldout")
    clip = load_clip(args.clip_model)
    images, captions = load_pairs(args.dataset, args.n_train, clip.config.image_size, args.seed, args.objects)
    img, txt = embed_pairs(clip, images, captions)
    n_val = 0 if len(images) < 40 else min(args.val_pairs, len(images) // 10)
    train_idx, val_idx = held_out_split(len(images), n_val, args.seed)
    cfg = PriorConfig(embed_dim=img.shape[1], width=args.width, blocks=args.blocks)
    torch.manual_seed(args.seed)
    prior, direct = DiffusionPrior(cfg), DirectPrior(cfg)
    batch, lr = min(args.batch_size or 256, len(train_idx)), args.lr or 1e-3
    opts = {"prior": torch.optim.AdamW(prior.parameters(), lr=lr, weight_decay=0.0),
            "direct": torch.optim.AdamW(direct.parameters(), lr=lr, weight_decay=0.0)}
    options = plain_args(args)
    log = RunLog(fresh_log(out, args.resume))
    resume_path, start = out / "resume.pt", 0
    if args.resume:
        state = load_checkpoint(resume_path)
        for note in check_resume(state["extra"].get("settings", {}), options, MAY_CHANGE):
            print(f"resume: {note}", flush=True)
        prior.load_state_dict(state["model"])
        direct.load_state_dict(state["extra"]["direct"])
        opts["prior"].load_state_dict(state["optimizer"])
        opts["direct"].load_state_dict(state["extra"]["direct_optimizer"])
        start = state["step"]
        truncate_log(log.path, start)
        print(f"resumed from step {start}", flush=True)
    print(f"{len(train_idx):,} training pairs, {len(val_idx):,} validation; priors of "
          f"{sum(p.numel() for p in prior.parameters()):,} (diffusion) and "
          f"{sum(p.numel() for p in direct.parameters()):,} (direct) parameters", flush=True)

    def save(step: int) -> None:
        save_checkpoint(resume_path, model=prior, optimizer=opts["prior"], config=cfg, step=step, rng=False,
                        extra={"settings": options, "direct": direct.state_dict(),
                               "direct_optimizer": opts["direct"].state_dict()})

    stop = min(args.steps, start + args.stop_after) if args.stop_after else args.steps
    t0, step, last = time.perf_counter(), start, {}
    tr_img, tr_txt = img[train_idx], txt[train_idx]
    with GracefulStop() as interrupt:
        while step < stop:  # in chunks of --log-every steps: each chunk trains both priors, then logs
            end = min(stop, (step // args.log_every + 1) * args.log_every)
            for name, model in (("prior", prior), ("direct", direct)):
                fit_prior(model, tr_img, tr_txt, args.steps, batch, lr, args.seed, start=step, optimizer=opts[name],
                          stop=lambda k, e=end: k >= e or interrupt.requested)
            if interrupt.requested:
                save(step)  # the chunk's updates are redone on resume: the draws are a function of the step
                print(f"\ninterrupted: saved {resume_path} at step {step}; continue with --resume", flush=True)
                raise SystemExit(130)
            step = end
            last = {"step": step, "elapsed_s": time.perf_counter() - t0}
            if len(val_idx):
                last.update(validation_cosines(prior, direct, img[val_idx], txt[val_idx], args.seed))
            log.write(last)
            if step % args.ckpt_every == 0 and step < stop:
                save(step)
    save(step)
    if step < args.steps:
        print(f"stopped at step {step} of {args.steps}: saved {resume_path}; continue with --resume", flush=True)
        return last
    result = dict(last, train_pairs=len(train_idx), clip=str(args.clip_model), command=command_line())
    save_priors(out / "prior.pt", prior, direct, clip, extra=result)
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {out / 'prior.pt'}; with a decoder in {out / 'decoder'} (training diffusion --clip-model "
          f"{args.clip_model} --out {out / 'decoder'}) unclip.UnCLIP.load({str(out)!r}) draws images", flush=True)
    return result


def add_parser(sub) -> None:
    p = sub.add_parser("prior", help="lesson 12: unCLIP's priors, caption -> CLIP image embedding")
    add_common_args(p, steps=2000, out="runs/unclip", ckpt_every=1000)
    p.set_defaults(log_every=500)
    p.add_argument("--clip-model", default=None,
                   help="the CLIP whose embeddings the priors learn (the decoder's: a clip.pt or its folder; "
                        "default: the shipped data/clip_shapes_heldout)")
    p.add_argument("--objects", type=objects_arg, default=1, help="shapes: objects per image, 1, 2 or 1,2")
    p.add_argument("--n-train", type=positive_int, default=None, help="pairs to train on (shapes: drawn; default 20000)")
    p.add_argument("--width", type=positive_int, default=256)
    p.add_argument("--blocks", type=positive_int, default=2)
    p.add_argument("--val-pairs", type=nonnegative_int, default=256)
    p.set_defaults(func=train_prior_command)
