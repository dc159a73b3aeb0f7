"""Lesson 08 benchmark: caption accuracy of the shipped toy DALL-E, judged by the shapes judge.

For one-object shapes captions (32x32), it generates one image per caption for ``--n``
captions of training colour-shape combinations and ``--n`` captions of the held-out
combinations (never seen in training: zero-shot composition), samples with top-k, and
asks the shapes judge (``data/judge_shapes.pt``) to read each image back. Caption accuracy
is the share of images whose every captioned attribute (shape, colour, size, position) the
judge reads correctly. Targets: >= 0.90 on training combinations, >= 0.60 held out.

``--objects 2`` judges whole two-object scenes instead (both objects' attributes and the
relation between them); ``--ceiling-only`` measures only what the judge reads of the dVAE's
reconstructions of real scenes -- the most any prior can reach through that dVAE -- which is
how the tokenizer's grid is chosen for two-object scenes before a prior is trained.

    .venv/bin/python bench/quality.py [--model data/dalle_shapes_toy] [--n 500] [--top-k 32]
    .venv/bin/python bench/quality.py --objects 2 --ceiling-only
    .venv/bin/python bench/quality.py --objects 2 --ceiling-only --dvae runs/dvae16/dvae.pt
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from dalle_mini_impl.dalle import DALLE  # noqa: E402
from dalle_mini_impl.datasets import ShapesDataset  # noqa: E402
from dalle_mini_impl.datasets.shapes import canonical, parse_caption  # noqa: E402
from dalle_mini_impl.dvae import DiscreteVAE  # noqa: E402
from dalle_mini_impl.judge import caption_matches, load_judge  # noqa: E402
from dalle_mini_impl.utils import cpu_summary, data_dir  # noqa: E402


def judged_accuracy(model: DALLE, judge, captions: list[str], top_k: int | None, temperature: float = 1.0,
                    seed: int = 0, batch_size: int = 256) -> tuple[float, torch.Tensor, torch.Tensor]:
    """(caption accuracy, images, per-image match) for one image per caption."""
    images = model.generate(captions, n=1, top_k=top_k, temperature=temperature, seed=seed,
                            batch_size=batch_size)
    ok = caption_matches(judge, images, captions)
    return ok.float().mean().item(), images, ok


def evaluation_set(n: int, split: str, seed: int, objects: int = 1) -> ShapesDataset:
    """n scenes of ``objects`` objects of a split ('train' combinations or 'holdout' ones: in a
    held-out scene at least one object is a held-out pair); the seeds differ from the training
    data's, so the exact scenes are new."""
    return ShapesDataset(n, image_size=32, seed=seed, split=split, n_objects=objects)


def dvae_ceiling(dvae: DiscreteVAE, judge, data: ShapesDataset) -> float:
    """Caption accuracy of the dVAE's own reconstructions of the real images: the most a
    prior can reach through this dVAE (if the judge cannot read the decoded real tokens,
    it cannot read generated ones either)."""
    with torch.no_grad():
        recon = dvae.decode(dvae.encode(data.float_images())).cpu()
    return caption_matches(judge, recon, data.captions).float().mean().item()


def scene_parts(judge, images: torch.Tensor, captions: list[str]) -> dict[str, float]:
    """Where two-object scenes go wrong: the share of images whose object count, relation, first
    and second object (colour, shape and size) the judge reads as the caption states them."""
    seen = judge.read(images)
    keys = ("count", "relation", "first object", "second object")
    right = dict.fromkeys(keys, 0)
    for got, want in zip(seen, captions):
        got, want = canonical(got), canonical(parse_caption(want))
        if len(got["objects"]) != len(want["objects"]):
            continue
        right["count"] += 1
        right["relation"] += got["relation"] == want["relation"]
        for k, go, wo in zip(keys[2:], got["objects"], want["objects"]):
            right[k] += all(go[a] == wo[a] for a in ("colour", "shape", "size"))
    return {k: v / max(1, len(captions)) for k, v in right.items()}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(data_dir() / "dalle_shapes_toy"))
    p.add_argument("--n", type=int, default=500, help="captions per group (one image each)")
    p.add_argument("--top-k", type=int, default=32)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--objects", type=int, choices=(1, 2), default=1, help="objects per scene")
    p.add_argument("--ceiling-only", action="store_true", help="only the dVAE's reconstructions, no prior")
    p.add_argument("--dvae", default=None, help="with --ceiling-only: a dVAE checkpoint instead of the model's "
                                                "(e.g. one with a 16x16 grid)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"machine: {cpu_summary()}")
    if args.dvae and not args.ceiling_only:
        raise SystemExit("--dvae measures a dVAE alone: add --ceiling-only")
    model, judge = (None if args.dvae else DALLE.load(args.model)), load_judge()
    dvae = DiscreteVAE.load(args.dvae) if args.dvae else model.dvae
    grid = dvae.config.grid
    res = {}
    for name, split, seed in (("train_combinations", "train", 777), ("held_out_combinations", "holdout", 778)):
        t = time.perf_counter()
        data = evaluation_set(args.n, split, seed, args.objects)
        res[name + "_dvae_ceiling"] = ceiling = dvae_ceiling(dvae, judge, data)
        res[name + "_real"] = real = caption_matches(judge, data.float_images(), data.captions).float().mean().item()
        judged = f"{args.objects}-object scenes, {name.replace('_', ' ')}: judge on {args.n} real images {real:.3f}, " \
                 f"on their dVAE reconstructions {ceiling:.3f} ({grid}x{grid} tokens)"
        if args.ceiling_only:
            print(judged, flush=True)
            continue
        acc, images, _ = judged_accuracy(model, judge, list(data.captions), args.top_k, args.temperature, args.seed)
        res[name] = acc
        print(f"{judged}; caption accuracy of generated images {acc:.3f} (top-k {args.top_k}, temperature "
              f"{args.temperature}; {time.perf_counter() - t:.0f} s)", flush=True)
        if args.objects == 2:
            res[name + "_parts"] = parts = scene_parts(judge, images, list(data.captions))
            print("  read right, by part: " + ", ".join(f"{k} {v:.3f}" for k, v in parts.items()), flush=True)
    if args.ceiling_only:
        return res
    target = 0.90 if args.objects == 1 else 0.80
    print(f"targets for {args.objects}-object scenes: >= {target:.2f} training combinations "
          f"({'met' if res['train_combinations'] >= target else 'NOT met'}), "
          f">= 0.60 held out ({'met' if res['held_out_combinations'] >= 0.6 else 'NOT met'})")
    return res


if __name__ == "__main__":
    main()
