"""Command line: generate images from a caption with a trained DALL-E system, and report on a
training run.

    python -m dalle_mini_impl generate "a small red circle on the left" --n 8 --out grid.png
    python -m dalle_mini_impl report runs/dalle          # -> runs/dalle/report.html

``--model`` is a directory written by ``python -m dalle_mini_impl.training dalle`` (default: the
tiny system shipped in data/dalle_shapes_two, which draws one- and two-object scenes; lesson 08's
one-object system is data/dalle_shapes_toy). Several captions may be given; the grid has one row
per caption. Sampling: ``--temperature``, ``--top-k``, ``--top-p``, ``--seed``, ``--guidance``.
A diffusion system (``training diffusion``, lesson 11: ``--steps``, ``--clip-guidance``) or an
unCLIP directory (``training prior`` + its decoder, lesson 12) works as ``--model`` too.
``report`` writes one self-contained HTML page of a run's curves and grids
(:mod:`dalle_mini_impl.training.report`).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from .dalle import DALLE
from .diffusion import DiffusionSystem
from .noisy_clip import NoisyCLIP
from .precision import PRECISION_CHOICES
from .training.common import positive_int
from .training.report import read_run, report_page, summary_lines
from .unclip import UnCLIP
from .utils import data_dir, free_cores, get_device
from .viz import save_image_grid

DEFAULT_MODEL = "dalle_shapes_two"  # under data/
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dalle_mini_impl",
                                     description="DALL-E from scratch: generate images from captions.")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="captions -> a PNG grid of generated images")
    g.add_argument("captions", nargs="+", help="one or more captions (quote each one)")
    g.add_argument("--n", type=positive_int, default=8, help="images per caption")
    g.add_argument("--out", default="outputs/generated.png", help="PNG file to write")
    g.add_argument("--model", default=None, help=f"model directory (default: data/{DEFAULT_MODEL})")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=32, help="0: no top-k filtering")
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--guidance", type=float, default=1.0,
                   help="classifier-free guidance scale s (1: none; > 1 for a prior trained with --caption-dropout)")
    g.add_argument("--steps", type=positive_int, default=50, help="a diffusion system's sampling steps")
    g.add_argument("--clip-guidance", type=float, default=0.0,
                   help="a diffusion system with a noisy_clip.pt beside it: CLIP guidance scale s (e.g. 300 with "
                        "--guidance 0; 0: off)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default=None, help="cpu, cuda or mps (default: the best available)")
    g.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads (default: the cores not kept busy by other work)")
    g.add_argument("--precision", choices=list(PRECISION_CHOICES), default=None,
                   help="default: $DALLE_PRECISION, else auto (bf16 where the device computes it "
                        "natively, else float32)")
    g.add_argument("--upscale", type=int, default=4, help="pixel size of the PNG grid")
    r = sub.add_parser("report", help="a training run -> one self-contained HTML page of its curves and grids")
    r.add_argument("run", help="the --out directory of a training run (e.g. runs/dalle)")
    r.add_argument("--out", default=None, help="HTML file to write (default: RUN/report.html)")
    return parser


def report_command(args: argparse.Namespace) -> Path:
    info = read_run(args.run)  # read once: the page and the console summary
    out = report_page(info, args.out)
    for line in summary_lines(info):
        print(line)
    print(f"wrote {out} (open it in a browser; in Colab: IPython.display.HTML(open(path).read()))")
    return out


def generate_command(args: argparse.Namespace) -> Path:
    torch.set_num_threads(args.threads or free_cores())  # default: the cores other work leaves free
    out = Path(args.out)
    if out.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"--out {out}: give an image file name ending in one of {', '.join(IMAGE_SUFFIXES)}, "
                         "e.g. outputs/grid.png")
    model_dir = Path(args.model) if args.model else data_dir() / DEFAULT_MODEL
    t = time.perf_counter()
    if (model_dir / "prior.pt").is_file() and (model_dir / "decoder").is_dir():  # unCLIP (training prior)
        model = UnCLIP.load(model_dir)
        images = model.generate(args.captions, n=args.n, steps=args.steps, prior_steps=args.steps,
                                guidance=args.guidance, seed=args.seed)
        kind = f"unCLIP, {args.steps} sampling steps, decoder guidance {args.guidance}"
    elif (model_dir / "unet.pt").is_file():  # a diffusion system (training diffusion)
        model = DiffusionSystem.load(model_dir, device=get_device(args.device))
        guide = None
        if args.clip_guidance:
            if not (model_dir / "noisy_clip.pt").is_file():
                raise ValueError(f"--clip-guidance needs {model_dir / 'noisy_clip.pt'}: train one with "
                                 f"`python -m dalle_mini_impl.training noisy-clip --diffusion {model_dir} "
                                 f"--out {model_dir / 'noisy_clip.pt'}`")
            guide = NoisyCLIP.load(model_dir / "noisy_clip.pt", device=model.device)
        images = model.generate(args.captions, n=args.n, steps=args.steps, guidance=args.guidance, seed=args.seed,
                                clip_guide=guide, clip_scale=args.clip_guidance)
        kind = f"diffusion, {args.steps} sampling steps, guidance {args.guidance}" + (
            f", CLIP guidance {args.clip_guidance}" if guide is not None else "")
    else:
        kind = None
    if kind is not None:
        save_image_grid(images, out, nrow=args.n, upscale=args.upscale)
        print(f"wrote {out}: {len(args.captions)} caption(s) x {args.n} images in "
              f"{time.perf_counter() - t:.1f} s ({model_dir.name}, {kind})")
        return out
    model = DALLE.load(model_dir, device=get_device(args.device))
    images = model.generate(args.captions, n=args.n, temperature=args.temperature,
                            top_k=args.top_k or None, top_p=args.top_p, seed=args.seed,
                            precision=args.precision, guidance=args.guidance, progress=len(args.captions) * args.n > 64)
    save_image_grid(images, out, nrow=args.n, upscale=args.upscale)
    print(f"wrote {out}: {len(args.captions)} caption(s) x {args.n} images in "
          f"{time.perf_counter() - t:.1f} s ({model_dir.name}, {model.device.type})")
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        (report_command if args.command == "report" else generate_command)(args)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
