"""Generate the cached DALL-E samples lessons 09 and 10 rerank and evaluate.

For a fixed list of captions (one-object shapes scenes of the held-out (colour, shape)
pairs and of training pairs) the toy DALL-E system draws N samples each; the dVAE token ids
(not the pixels: 64 small ints per image) are saved, so the lessons decode them in a blink
instead of sampling for minutes. Prints generation speed.

    python bench/rerank.py --model data/dalle_shapes_toy --n 32 --captions 32 --threads 1 \
        --out data/clip_shapes_toy/samples.pt
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dalle_mini_impl.dalle import DALLE  # noqa: E402
from dalle_mini_impl.datasets import ShapesDataset  # noqa: E402


def captions_for(split: str, k: int, seed: int, objects: int) -> list[str]:
    """k distinct captions of one split, in a fixed order."""
    ds = ShapesDataset(20 * k, seed=seed, split=split, n_objects=objects)
    seen, out = set(), []
    for c in ds.captions:
        if c not in seen:
            seen.add(c)
            out.append(c)
        if len(out) == k:
            break
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="data/dalle_shapes_toy")
    p.add_argument("--n", type=int, default=32, help="samples per caption")
    p.add_argument("--captions", type=int, default=32, help="captions per split")
    p.add_argument("--objects", type=int, default=1)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="data/clip_shapes_toy/samples.pt")
    p.add_argument("--precision", default="bf16", help="the shipped samples were drawn in bf16 on a CPU "
                   "with native bf16; elsewhere they differ in a few tokens")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = DALLE.load(args.model)
    result = {"command": "python bench/rerank.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "n": args.n, "temperature": args.temperature, "top_k": args.top_k, "model": args.model}
    for i, split in enumerate(("holdout", "train")):
        caps = captions_for(split, args.captions, 4242 + i, args.objects)
        t = time.perf_counter()
        _, tokens = model.generate(caps, n=args.n, temperature=args.temperature, top_k=args.top_k,
                                   seed=args.seed + i, batch_size=args.batch_size, precision=args.precision,
                                   return_tokens=True)
        dt = time.perf_counter() - t
        print(f"{split}: {len(caps)} captions x {args.n} samples in {dt:.1f} s "
              f"({len(caps) * args.n / dt:.1f} images/s)", flush=True)
        result[split] = {"captions": caps, "tokens": tokens.view(len(caps), args.n, -1).to(torch.int16)}
    torch.save(result, args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
