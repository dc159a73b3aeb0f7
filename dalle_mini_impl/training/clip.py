"""Training the small CLIP reranker of lesson 09 (paper section 2.6; Radford et al. 2021).

    python -m dalle_mini_impl.training clip --dataset shapes --out runs/clip

The loop is ``clip.train_clip`` (the lesson calls it too); this command adds the run folder,
the log, checkpoints (``--ckpt-every``, ``--resume``, Ctrl-C saves first), the zero-shot and
retrieval evaluation (``clip.evaluate_clip``) and the saved model.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

from ..clip import CLIPConfig, evaluate_clip, load_clip, save_clip, train_clip
from ..datasets import ShapesDataset, load_pairs
from ..diffusion import DiffusionSystem
from ..noisy_clip import noise_report, train_noisy_clip
from ..presets import get_preset
from ..utils import data_dir, get_device, load_checkpoint, save_checkpoint
from .common import (GracefulStop, RunLog, StateOf, add_common_args, check_resume, command_line, fresh_log,
                     guard_shipped, plain_args, positive_int, set_threads, truncate_log)


CLIP_MAY_CHANGE = frozenset({"log_every", "ckpt_every", "threads", "device", "precision", "overwrite_shipped"})


def train_clip_command(args: argparse.Namespace) -> dict:
    """Train the reranker on shapes pairs (resumable: ``--resume``; Ctrl-C saves first), then
    measure and save it."""
    set_threads(args.threads)
    if not args.dataset.startswith("shapes"):
        raise ValueError("the clip command trains on the shapes dataset (its evaluation needs attributes)")
    device = get_device(args.device)
    preset = get_preset(args.preset, device)
    cfg = CLIPConfig(image_size=args.image_size or preset.image_size, width=args.width,
                     d_text=args.d_text, embed_dim=args.embed_dim, text_layers=args.text_layers)
    guard_shipped(args.out, args.overwrite_shipped)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = RunLog(fresh_log(out, args.resume))
    resume_path = out / "resume.pt"
    options = plain_args(args)
    resume = None
    if args.resume:
        state = load_checkpoint(resume_path, restore_rng=True)
        for note in check_resume(state["extra"].get("settings", {}), options, CLIP_MAY_CHANGE):
            print(f"resume: {note}", flush=True)
        resume = {"step": state["step"], "model": state["model"], "optimizer": state["optimizer"],
                  **state["extra"]["loop"]}
        truncate_log(log.path, state["step"])
        print(f"resumed from step {state['step']}", flush=True)

    def save(step: int, snapshot: dict) -> None:
        save_checkpoint(resume_path, model=StateOf(snapshot["model"]), optimizer=StateOf(snapshot["optimizer"]),
                        config=cfg, step=step,
                        extra={"settings": options, "loop": {"scheduler": snapshot["scheduler"],
                                                             "generator": snapshot["generator"]}})

    t0 = time.perf_counter()
    with GracefulStop() as interrupt:
        stopped = {}

        def at_boundary(step: int, snapshot) -> bool:
            last_call = step == args.steps
            if interrupt.requested or (args.stop_after and step - (resume or {}).get("step", 0) >= args.stop_after):
                save(step, snapshot())
                stopped["step"] = step
                return True
            if last_call or (step and step % args.ckpt_every == 0):
                save(step, snapshot())
            return False

        model = train_clip(steps=args.steps, n_train=args.n_train, batch_size=args.batch_size or 256,
                           lr=args.lr or 1e-3, seed=args.seed, config=cfg, split=args.split,
                           precision=args.precision, device=device, log=log.write, log_every=args.log_every,
                           resume=resume, at_boundary=at_boundary)
    if stopped:
        print(f"stopped at step {stopped['step']}: saved {resume_path}; continue with --resume", flush=True)
        if interrupt.requested:
            raise SystemExit(130)
        return {"step": stopped["step"]}
    train_time = time.perf_counter() - t0
    metrics = evaluate_clip(model.cpu(), n=args.n_eval)
    metrics.update(steps=args.steps, train_seconds=round(train_time, 1), device=device.type,
                   config=asdict(cfg), command=command_line())
    save_clip(model, out / "clip.pt", step=args.steps,
              extra={"metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))}})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps({k: v for k, v in metrics.items() if k != "config"}, indent=2))
    print(f"saved {out / 'clip.pt'}; load it with clip.load_clip({str(out)!r})")
    return metrics


def add_parser(sub) -> None:
    p = sub.add_parser("clip", help="lesson 09: the contrastive reranker (small CLIP) on shapes")
    add_common_args(p, steps=800, out="runs/clip")  # 800: what the shipped data/clip_shapes_toy took
    p.add_argument("--image-size", type=positive_int, default=None)
    p.add_argument("--width", type=positive_int, default=16)
    p.add_argument("--d-text", type=positive_int, default=96)
    p.add_argument("--text-layers", type=positive_int, default=2)
    p.add_argument("--embed-dim", type=positive_int, default=96)
    p.add_argument("--n-train", type=positive_int, default=30_000)
    p.add_argument("--n-eval", type=positive_int, default=2_000, help="images per split for the zero-shot evaluation")
    p.add_argument("--split", choices=["all", "train"], default="all",
                   help="all: every (colour, shape) pair, as the paper's CLIP saw its own data")
    p.set_defaults(func=train_clip_command)

    p = sub.add_parser("noisy-clip", help="lesson 11: a noise-aware CLIP in a diffusion system's space (CLIP guidance)")
    p.add_argument("--clip-model", default=None,
                   help="the clean CLIP (its text side is kept; default: the shipped data/clip_shapes_heldout)")
    p.add_argument("--diffusion", default=None,
                   help="the diffusion system to guide (default: the shipped data/diffusion_shapes_toy)")
    p.add_argument("--out", required=True, help="the file to write, e.g. runs/noisy_clip.pt")
    p.add_argument("--steps", type=positive_int, default=1000)
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--width", type=positive_int, default=64)
    p.add_argument("--n-train", type=positive_int, default=20_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--log-every", type=positive_int, default=250)
    p.add_argument("--overwrite-shipped", action="store_true")
    p.set_defaults(func=train_noisy_clip_command)


def train_noisy_clip_command(args: argparse.Namespace) -> dict:
    """Fit the noise-aware CLIP (two minutes on one CPU thread: it has no resume), then report how
    it reads held-out images at several noise levels (``noisy_clip.noise_report``) into
    ``metrics.json`` beside the weights."""
    set_threads(args.threads)
    out = Path(args.out)
    guard_shipped(out, args.overwrite_shipped)
    out.parent.mkdir(parents=True, exist_ok=True)
    clip = load_clip(args.clip_model or data_dir() / "clip_shapes_heldout")
    system = DiffusionSystem.load(args.diffusion or data_dir() / "diffusion_shapes_toy")
    images, captions = load_pairs("shapes", args.n_train, clip.config.image_size, args.seed, 1)
    t0 = time.perf_counter()
    log = RunLog(out.with_suffix(".metrics.jsonl"))
    model = train_noisy_clip(clip, system, images, captions, args.steps, args.batch_size, args.lr, args.seed,
                             args.width, log=log.write, log_every=args.log_every)
    seconds = time.perf_counter() - t0
    model.save(out)
    held = ShapesDataset(500, image_size=clip.config.image_size, seed=54_321, split="holdout", n_objects=1)
    report = {"train_seconds": round(seconds, 1), "command": command_line(),
              "held_out": noise_report(model, system, held.float_images(), held.labels)}
    out.with_suffix(".metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["held_out"], indent=1))
    print(f"saved {out}; guide with DiffusionSystem.generate(..., clip_guide=NoisyCLIP.load({str(out)!r}), clip_scale=S)")
    return report
