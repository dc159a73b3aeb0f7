"""Training the text-conditional diffusion model of lesson 11 (GLIDE in miniature: DDPM's
simple loss, classifier-free guidance's caption dropout; :mod:`dalle_mini_impl.diffusion`).

    python -m dalle_mini_impl.training diffusion --dataset shapes --objects 1 --steps 4000 --out runs/diffusion
    python -m dalle_mini_impl generate "a small red circle on the left" --model runs/diffusion --guidance 3

The conventions of the other commands: a seeded validation split (its loss at fixed noise and
timesteps in every log line), ``metrics.jsonl``, sample grids (each validation caption under
its sample, the real image above it), an atomic ``resume.pt`` every ``--ckpt-every`` steps,
Ctrl-C / SIGTERM saves first, ``--resume`` continues exactly (every random draw is a function of
(seed, step)), a non-finite update changes no weight. The saved system holds the EMA weights.

``--latent-channels C`` (latent diffusion, the default with C = 4; 0 trains in pixels): first
fits lesson 01's autoencoder with a spatial
latent (32x32x3 -> 8x8xC, ``--ae-steps`` updates; saved as ``OUT/autoencoder.pt`` and reused by
``--resume``), encodes every image once, and trains the U-Net on the latents scaled to unit
variance; the system decodes its samples back to pixels.

``--clip-model PATH`` trains unCLIP's decoder instead (lesson 12, :mod:`dalle_mini_impl.unclip`): the
U-Net reads the CLIP image embedding of each training image (computed once) and never the
caption; ``--caption-dropout`` zeroes the embedding instead, for guidance. The CLIP is copied
into ``OUT/clip.pt``.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import torch

from ..autoencoder import Autoencoder, AutoencoderConfig, fit
from ..clip import load_clip
from ..datasets import course_captions, load_pairs
from ..diffusion import DiffusionSystem, UNetConfig
from ..precision import pick_precision
from ..tokenizer import CaptionTokenizer, course_tokenizer
from ..utils import get_device, load_checkpoint, safe_load, save_checkpoint, set_rng_state
from ..viz import save_labelled_grid
from . import distributed as D
from .common import (GracefulStop, NonFiniteGuard, RunLog, StateOf, add_common_args, check_resume, command_line,
                     decay, drop_captions, drop_mask, fresh_log, guard_shipped, held_out_split, nonnegative_int,
                     objects_arg, plain_args, positive_int, set_threads, truncate_log, update_ema, with_weights)

MAY_CHANGE = frozenset({"log_every", "ckpt_every", "sample_every", "threads", "device", "overwrite_shipped",
                        "progress"})


def _lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up, then a cosine decay to 10% of ``lr``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


@torch.no_grad()
def validation_loss(model: DiffusionSystem, space: torch.Tensor, ids: torch.Tensor, seed: int,
                    batch: int = 128, embeds: torch.Tensor | None = None) -> float:
    """L_simple on the validation pairs (``space``: :meth:`DiffusionSystem.to_space` of their
    images) at fixed timesteps and noise (the same draws at every log line, so the curve moves
    only with the weights)."""
    images = space
    was = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed + 77)
    total = 0.0
    for s in range(0, len(images), batch):  # images: already in the process's space
        e = None if embeds is None else embeds[s:s + batch]
        total += model.loss_in_space(images[s:s + batch], ids[s:s + batch], generator=g, embed=e).item() * len(images[s:s + batch])
    model.train(was)
    return total / max(1, len(images))


def latent_autoencoder(images: torch.Tensor, args: argparse.Namespace, out: Path,
                       device: torch.device) -> Autoencoder:
    """Lesson 01's autoencoder with a spatial latent, fitted on the training images
    (``--ae-steps``) or read from ``OUT/autoencoder.pt`` when a run resumes."""
    cfg = AutoencoderConfig(in_channels=images.shape[1], image_size=images.shape[-1], hidden=args.ae_hidden,
                            n_down=2, n_res=0, latent_dim=None, latent_channels=args.latent_channels,
                            output="linear")  # a sigmoid saturates at shapes' black background
    torch.manual_seed(args.seed)
    ae = Autoencoder(cfg).to(device)
    path = out / "autoencoder.pt"
    if args.resume and path.is_file():
        ae.load_state_dict(safe_load(path)["model"])
    else:
        print(f"fitting the autoencoder (32x32 -> {cfg.grid}x{cfg.grid}x{cfg.latent_channels}), "
              f"{args.ae_steps} updates ...", flush=True)
        history = fit(ae, images, args.ae_steps, batch_size=64, lr=2e-3,
                      generator=torch.Generator().manual_seed(args.seed), precision="fp32")
        print(f"autoencoder: final reconstruction MSE {history['loss'][-1]:.4f}", flush=True)
        save_checkpoint(path, model=ae, config=cfg, step=args.ae_steps)
    return ae.eval()


def train_diffusion_command(args: argparse.Namespace) -> dict:
    set_threads(args.threads)
    device = get_device(args.device)
    prec = pick_precision(device, args.precision)
    guard_shipped(args.out, args.overwrite_shipped)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images, captions = load_pairs(args.dataset, args.n_train, args.image_size, args.seed, args.objects)
    name = args.dataset.partition(":")[0].strip().lower()
    tokenizer = (course_tokenizer(args.text_len) if name in ("shapes", "digits") else
                 CaptionTokenizer.train_from_captions(course_captions() + captions, 512, args.text_len))
    ids = tokenizer.encode(captions)  # (n, T)
    embeds = None
    if args.clip_model:  # unCLIP's decoder: conditioned on the CLIP image embedding alone, never the caption
        clip = load_clip(args.clip_model)
        with torch.no_grad():
            embeds = torch.cat([clip.encode_image(images[i:i + 512]).cpu() for i in range(0, len(images), 512)])
        ids = tokenizer.pad_ids()[None].expand(len(images), -1).clone()  # (n, T): every caption empty
    n_val = 0 if len(images) < 40 else min(args.val_pairs, len(images) // 10)
    train_idx, val_idx = held_out_split(len(images), n_val, args.seed)
    batch = min(args.batch_size, len(train_idx))
    ae = latent_autoencoder(images[train_idx], args, out, device) if args.latent_channels else None
    size = ae.config.grid if ae is not None else images.shape[-1]
    cfg = UNetConfig(image_size=size, channels=args.latent_channels or images.shape[1], base=args.base,
                     mults=tuple(args.mults), heads=args.heads,
                     attn_levels=(args.attn_levels if args.attn_levels is not None else
                                  tuple(range(len(args.mults))) if ae is not None else (len(args.mults) - 1,)),
                     text_len=tokenizer.text_len, n_text_tokens=tokenizer.n_text_tokens, d_text=args.d_text,
                     dropout=args.dropout, embed_dim=0 if embeds is None else embeds.shape[1])
    torch.manual_seed(args.seed)
    model = DiffusionSystem(tokenizer, cfg, T=args.T, autoencoder=ae).to(device)
    space = torch.cat([model.to_space(images[i:i + 512]).cpu() for i in range(0, len(images), 512)])  # once
    if ae is not None:  # latents scaled to unit variance on the training images; their range for sampling
        model.latent_scale = 1.0 / max(space[train_idx].std().item(), 1e-6)
        space = space * model.latent_scale
        model.fit_latent_range(space[train_idx])
    opt = torch.optim.AdamW(model.unet.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    ema = {k: v.detach().clone() for k, v in model.unet.state_dict().items()} if args.ema else None
    options = plain_args(args)
    log = RunLog(fresh_log(out, args.resume), quiet=False)
    resume_path, start = out / "resume.pt", 0
    if args.resume:
        state = load_checkpoint(resume_path)
        for note in check_resume(state["extra"].get("settings", {}), options, MAY_CHANGE):
            print(f"resume: {note}", flush=True)
        model.unet.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        start = state["step"]
        if ema is not None:
            ema = state["extra"]["ema"]
        if prec.scaler is not None and state["extra"].get("scaler"):
            prec.scaler.load_state_dict(state["extra"]["scaler"])
        truncate_log(log.path, start)
        print(f"resumed from step {start}", flush=True)
    print(f"precision: {prec}; {sum(p.numel() for p in model.unet.parameters()):,} parameters; "
          f"{len(train_idx):,} training pairs, {len(val_idx):,} validation", flush=True)

    def save(step: int) -> None:
        save_checkpoint(resume_path, model=model.unet, optimizer=opt, config=cfg, step=step,
                        extra={"settings": options, "ema": ema,
                               "scaler": prec.scaler.state_dict() if prec.scaler is not None else None})

    def with_ema(fn):
        return with_weights(model.unet, ema, fn)

    show = val_idx[:8] if len(val_idx) else train_idx[:8]

    def samples(step: int) -> None:
        caps = [captions[int(i)] for i in show]
        e = None if embeds is None else embeds[show]
        fake = with_ema(lambda: model.generate(None if e is not None else caps, 1, steps=args.sample_steps,
                                               guidance=args.guidance, seed=0, embeds=e))
        save_labelled_grid([images[show], fake], caps, out / "samples" / f"step_{step:06d}.png", upscale=3)

    guard, step, t0, seen, last = NonFiniteGuard(args.max_nonfinite), start, time.perf_counter(), 0, {}
    stop = min(args.steps, start + args.stop_after) if args.stop_after else args.steps
    empty = tokenizer.pad_ids()
    model.train()
    with GracefulStop() as interrupt:
        while step < stop:
            if interrupt.requested:
                save(step)
                print(f"\ninterrupted at step {step}: saved {resume_path}; continue with --resume", flush=True)
                raise SystemExit(130)
            pick = train_idx[D.batch_indices(len(train_idx), batch, step, args.seed)]
            text = drop_captions(ids[pick], args.caption_dropout, empty, args.seed, step)
            e = None
            if embeds is not None:  # the embedding dropped to zeros instead (guidance for the decoder)
                e = torch.where(drop_mask(len(pick), args.caption_dropout, args.seed, step)[:, None], 0.0,
                                embeds[pick])
            g = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, args.steps, args.lr, args.warmup)
            with prec.autocast():
                loss = model.loss_in_space(space[pick], text, generator=g, embed=e)
            opt.zero_grad(set_to_none=True)
            prec.backward(loss)
            prec.unscale(opt)
            norm = torch.nn.utils.clip_grad_norm_(model.unet.parameters(), args.clip)
            applied = prec.step(opt, norm)  # skips (changes no weight) on an inf / NaN gradient
            guard.update(applied, step + 1)
            if applied and ema is not None:
                update_ema(ema, model.unet, args.ema)
            step += 1
            seen += batch
            if step % args.log_every == 0 or step == args.steps:
                elapsed = time.perf_counter() - t0
                last = {"step": step, "loss": loss.item(), "lr": opt.param_groups[0]["lr"], "grad_norm": float(norm),
                        "skipped": guard.total, "images_per_s": seen / elapsed, "elapsed_s": elapsed}
                if len(val_idx):
                    last["val_loss"] = with_ema(lambda: validation_loss(
                        model, space[val_idx], ids[val_idx], args.seed,
                        embeds=None if embeds is None else embeds[val_idx]))
                log.write(last)
            if args.sample_every and step % args.sample_every == 0 and step < args.steps:
                samples(step)
            if step % args.ckpt_every == 0 and step < stop:
                save(step)
    save(step)
    if step < args.steps:
        print(f"stopped at step {step} of {args.steps}: saved {resume_path}; continue with --resume", flush=True)
        return last
    with_ema(lambda: model.save(out))
    if args.clip_model:  # the CLIP whose embeddings the decoder reads travels with it
        shutil.copyfile(Path(args.clip_model) / "clip.pt" if Path(args.clip_model).is_dir() else args.clip_model, out / "clip.pt")
    result = dict(last, precision=prec.name, device=device.type, train_pairs=len(train_idx),
                  parameters=sum(p.numel() for p in model.unet.parameters()), command=command_line())
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    samples(step)
    use = (f"it is unCLIP's decoder: put it in DIR/decoder beside DIR/prior.pt (training prior --clip-model "
           f"{args.clip_model} --out DIR) and generate with --model DIR" if args.clip_model else
           f"generate with: python -m dalle_mini_impl generate \"a small red circle on the left\" --model {out} "
           "--guidance 3")
    print(f"step {step}: loss {last.get('loss', float('nan')):.4f}; saved the system in {out}; {use}", flush=True)
    return result


def add_parser(sub) -> None:
    p = sub.add_parser("diffusion", help="lesson 11: a text-conditional diffusion model (GLIDE in miniature)")
    add_common_args(p, steps=3000, out="runs/diffusion", ckpt_every=250)
    p.set_defaults(batch_size=64, lr=1e-3)
    p.add_argument("--objects", type=objects_arg, default=1, help="shapes: objects per image, 1, 2 or 1,2")
    p.add_argument("--n-train", type=positive_int, default=None, help="pairs to train on (shapes: drawn; default 20000)")
    p.add_argument("--image-size", type=positive_int, default=32)
    p.add_argument("--text-len", type=positive_int, default=16)
    p.add_argument("--base", type=positive_int, default=64, help="U-Net channels at full resolution")
    p.add_argument("--mults", type=lambda t: tuple(int(x) for x in t.split(",")), default=(1, 2),
                   help="channel multiplier per resolution, e.g. 1,2 (the 8x8 latent: 8 and 4)")
    p.add_argument("--attn-levels", type=lambda t: tuple(int(x) for x in t.split(",")) if t else (), default=None,
                   help="levels (0 = full resolution) with attention over the image and the caption, e.g. 0,1 "
                        "(default: every level of a latent U-Net, the lowest resolution only in pixels)")
    p.add_argument("--latent-channels", type=nonnegative_int, default=4,
                   help="latent diffusion over lesson 01's autoencoder (32x32 -> 8x8 x this many); 0: in "
                        "pixels (2,000 steps in 15 minutes did not learn the captions there: accuracy 0.05)")
    p.add_argument("--ae-steps", type=positive_int, default=1000, help="autoencoder updates (latent diffusion)")
    p.add_argument("--ae-hidden", type=positive_int, default=32, help="autoencoder width (latent diffusion)")
    p.add_argument("--clip-model", default=None,
                   help="unCLIP's decoder (lesson 12): condition on this CLIP's image embedding (a clip.pt or its "
                        "folder, e.g. data/clip_shapes_heldout) instead of the caption; --caption-dropout then "
                        "drops the embedding")
    p.add_argument("--heads", type=positive_int, default=4)
    p.add_argument("--d-text", type=positive_int, default=64)
    p.add_argument("--dropout", type=decay, default=0.0)
    p.add_argument("--T", type=positive_int, default=1000, help="diffusion steps of the training process")
    p.add_argument("--caption-dropout", type=decay, default=0.1,
                   help="share of captions replaced by the empty one (classifier-free guidance; GLIDE used 0.2)")
    p.add_argument("--warmup", type=nonnegative_int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--clip", type=float, default=1.0, help="gradient norm clip")
    p.add_argument("--ema", type=decay, default=0.999, help="EMA decay of the weights (0: off)")
    p.add_argument("--val-pairs", type=nonnegative_int, default=256)
    p.add_argument("--sample-every", type=nonnegative_int, default=0)
    p.add_argument("--sample-steps", type=positive_int, default=50, help="DDIM steps of the sample grids")
    p.add_argument("--guidance", type=float, default=3.0, help="guidance scale of the sample grids")
    p.add_argument("--max-nonfinite", type=nonnegative_int, default=10)
    p.set_defaults(func=train_diffusion_command)
