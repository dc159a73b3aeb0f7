"""Lesson 11 benchmark: a diffusion system's sampling time and caption accuracy against the
classifier-free guidance scale, judged by the shapes judge.

For one-object shapes captions (32x32) it samples one image per caption (DDIM, ``--eta`` 1 by default) for ``--n``
captions of training colour-shape combinations and ``--n`` of held-out ones (never seen in
training), at each guidance scale w of ``--guidance``, and prints the judge's caption accuracy,
the pixel spread of 32 samples of one caption (the per-pixel standard deviation over them,
averaged: a crude diversity, 0 when guidance collapses every sample to one image) and the
seconds per image. First
it times 64 images with 50 sampling steps (w = 1: one U-Net pass per step; w != 1: two).

    .venv/bin/python bench/diffusion.py --model runs/diffusion [--n 200] [--steps 50] [--eta 1] [--guidance 0 1 3 5 8]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from dalle_mini_impl.datasets import ShapesDataset  # noqa: E402
from dalle_mini_impl.diffusion import DiffusionSystem  # noqa: E402
from dalle_mini_impl.judge import caption_accuracy, load_judge  # noqa: E402
from dalle_mini_impl.utils import cpu_summary  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a directory written by `training diffusion`")
    p.add_argument("--n", type=int, default=200, help="captions per group (one image each)")
    p.add_argument("--steps", type=int, default=50, help="sampling steps")
    p.add_argument("--eta", type=float, default=1.0, help="0: deterministic DDIM; 1: DDPM's noise at each step")
    p.add_argument("--guidance", type=float, nargs="+", default=[0.0, 1.0, 3.0, 5.0, 8.0])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"machine: {cpu_summary()}")
    model, judge = DiffusionSystem.load(args.model), load_judge()
    caps = ["a small red circle on the left"] * 64
    for w in (1.0, 3.0):
        t = time.perf_counter()
        model.generate(caps[:64], 1, steps=50, guidance=w, seed=0)
        print(f"64 images, 50 sampling steps, guidance {w}: {time.perf_counter() - t:.1f} s", flush=True)
    groups = {"train": ShapesDataset(args.n, image_size=32, seed=777, split="train").captions,
              "held-out": ShapesDataset(args.n, image_size=32, seed=778, split="holdout").captions}
    res = {}
    for w in args.guidance:
        row = {}
        for name, captions in groups.items():
            t = time.perf_counter()
            images = model.generate(list(captions), 1, steps=args.steps, guidance=w, eta=args.eta, seed=0)
            row[name] = caption_accuracy(judge, images, list(captions))
            row[name + "_s_per_image"] = (time.perf_counter() - t) / len(captions)
        same = model.generate(["a large green square in the centre"], 32, steps=args.steps, guidance=w, eta=args.eta,
                              seed=1)
        row["pixel_spread"] = same.flatten(1).std(0).mean().item()  # per-pixel std over the 32, averaged
        res[w] = row
        print(f"w = {w:4.1f}: caption accuracy train {row['train']:.3f}, held-out {row['held-out']:.3f}; "
              f"{row['train_s_per_image']:.3f} s per image; pixel spread of 32 samples of one caption "
              f"{row['pixel_spread']:.4f}", flush=True)
    return res


if __name__ == "__main__":
    main()
