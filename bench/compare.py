"""Lessons 11-12 benchmark: the table of every text-to-image system of the course (``compare.table``)
and the sweeps that chose each row's setting, judged by the shapes judge, with FID.

    .venv/bin/python bench/compare.py [--n 200] [--steps 50] [--threads 2] [--sweeps]

Prints the machine, then (with ``--sweeps``) caption accuracy, FID and pixel spread against the
guidance scale of GLIDE-mini (w = 0..8), of CLIP guidance (s) scored by the independent judge and
by the CLIP that guides it, and of DALL-E's classifier-free guidance (s); then the table.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from dalle_mini_impl import compare  # noqa: E402
from dalle_mini_impl.utils import cpu_summary  # noqa: E402


def spread(images: torch.Tensor) -> float:
    """Per-pixel standard deviation over samples of one caption, averaged (0: all alike)."""
    return images.flatten(1).std(0).mean().item()


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200, help="captions per group (one image each)")
    p.add_argument("--steps", type=int, default=50, help="diffusion sampling steps")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sweeps", action="store_true", help="also the guidance sweeps")
    p.add_argument("--json", default=None, help="write every figure to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"machine: {cpu_summary()}; {args.n} captions per group; {args.steps} diffusion steps",
          flush=True)
    m = compare.Models.load()
    groups = compare.caption_groups(args.n)
    out: dict = {}
    if args.sweeps:
        one = ["a large green square in the centre"] * 32
        for w in (0.0, 1.0, 2.0, 3.0, 5.0, 8.0):
            r = compare.measure(lambda c, s: m.glide.generate(c, 1, steps=args.steps, guidance=w, seed=s), groups,
                                m.judge)
            r["pixel_spread"] = spread(m.glide.generate(one, 1, steps=args.steps, guidance=w, seed=1))
            out[f"glide w={w:g}"] = r
            print(f"GLIDE-mini w = {w:g}: {json.dumps({k: round(v, 4) for k, v in r.items()})}", flush=True)
        for s in (0.0, 100.0, 300.0, 1000.0):
            def draw(c, seed, s=s):
                return m.glide.generate(c, 1, steps=args.steps, guidance=0.0, seed=seed, clip_guide=m.noisy_clip,
                                        clip_scale=s)
            r = compare.measure(draw, groups, m.judge)
            held = list(groups["held-out"].captions)
            r["held-out_clip_score"] = m.clip.score(draw(held, 0), held).mean().item()
            out[f"clip s={s:g}"] = r
            print(f"CLIP guidance s = {s:g}: {json.dumps({k: round(v, 4) for k, v in r.items()})}", flush=True)
        for s in (1.0, 2.0, 3.0):
            r = compare.measure(lambda c, seed: m.dalle_cfg.generate(c, 1, top_k=compare.DALLE_TOP_K, seed=seed,
                                                                     guidance=s), groups, m.judge)
            out[f"dalle_cfg s={s:g}"] = r
            print(f"DALL-E (caption-dropout prior) s = {s:g}: {json.dumps({k: round(v, 4) for k, v in r.items()})}",
                  flush=True)
    t = time.perf_counter()
    rows = compare.table(args.n, args.steps, models=m)
    out["table"] = rows
    print(compare.markdown(rows))
    print(f"(table: {time.perf_counter() - t:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
