"""``compare``: lesson 11's table -- every text-to-image system of the course, one judge.

GLIDE (Nichol et al. 2021, section 5, figure 4 and table 1) compared classifier-free guidance,
CLIP guidance and DALL-E (with and without CLIP reranking) by human preference; unCLIP (Ramesh
et al. 2022, section 5) compared itself with GLIDE. Here the judge is the shapes judge of lesson
08 (``judge.py``: does the image show what the caption says?), which none of the systems was
trained against, and the FID is lesson 10's judge-feature FID. Each system draws one image per
caption for the same captions: training (colour, shape) pairs and held-out pairs that no part of
any system saw (the guiding and reranking CLIP is ``data/clip_shapes_heldout``).

    rows = compare.table(n=32)        # lesson 11 (one thread: about 40 s)
    python bench/compare.py --n 200   # the README's figures

The rows (``SYSTEMS``): DALL-E (lesson 08's system, top-k 32); DALL-E + CLIP reranking, best of
16 (paper 2.6, lesson 09); DALL-E with classifier-free guidance (a prior trained with 20% caption
dropout, ``data/dalle_shapes_cfg``, guidance s); GLIDE-mini with classifier-free guidance w;
GLIDE-mini with CLIP guidance (the unconditional model steered by the noise-aware CLIP alone,
scale s, :mod:`noisy_clip`); unCLIP-mini (diffusion prior + decoder, decoder guidance w).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .clip import load_clip
from .dalle import DALLE
from .datasets import ShapesDataset
from .diffusion import DiffusionSystem
from .judge import caption_accuracy, load_judge
from .metrics import fid
from .noisy_clip import NoisyCLIP
from .unclip import UnCLIP
from .utils import data_dir

# the settings of each row (the sampling settings chosen by bench/compare.py's sweeps; see the README)
DALLE_TOP_K = 32
RERANK_OF = 16
DALLE_GUIDANCE = 2.0
GLIDE_GUIDANCE = 3.0
CLIP_GUIDANCE = 300.0
UNCLIP_GUIDANCE = 3.0


@dataclass
class Models:
    """Every shipped system the table compares, loaded once."""
    dalle: DALLE
    dalle_cfg: DALLE
    clip: "object"
    glide: DiffusionSystem
    noisy_clip: NoisyCLIP
    unclip: UnCLIP
    judge: "object" = field(default=None)

    @classmethod
    def load(cls, root: str | Path | None = None) -> "Models":
        root = Path(root) if root is not None else data_dir()
        return cls(DALLE.load(root / "dalle_shapes_toy"), DALLE.load(root / "dalle_shapes_cfg"),
                   load_clip(root / "clip_shapes_heldout"), DiffusionSystem.load(root / "diffusion_shapes_toy"),
                   NoisyCLIP.load(root / "diffusion_shapes_toy" / "noisy_clip.pt"), UnCLIP.load(root / "unclip_shapes_toy"),
                   load_judge())


def systems(m: Models, steps: int = 50) -> dict[str, Callable[[list[str], int], torch.Tensor]]:
    """name -> draw(captions, seed): one image per caption, (B, 3, 32, 32) in [0, 1]."""
    def rerank(caps, seed):
        many = m.dalle.generate(caps, RERANK_OF, top_k=DALLE_TOP_K, seed=seed)  # (B 16, 3, S, S), caption-major
        best, _, _ = m.clip.rerank(caps, many.view(len(caps), RERANK_OF, *many.shape[1:]))
        return best[:, 0]
    return {
        "DALL-E": lambda caps, seed: m.dalle.generate(caps, 1, top_k=DALLE_TOP_K, seed=seed),
        f"DALL-E + CLIP rerank (best of {RERANK_OF})": rerank,
        f"DALL-E + classifier-free guidance (s = {DALLE_GUIDANCE:g})":
            lambda caps, seed: m.dalle_cfg.generate(caps, 1, top_k=DALLE_TOP_K, seed=seed, guidance=DALLE_GUIDANCE),
        f"GLIDE-mini, classifier-free guidance (w = {GLIDE_GUIDANCE:g})":
            lambda caps, seed: m.glide.generate(caps, 1, steps=steps, guidance=GLIDE_GUIDANCE, seed=seed),
        f"GLIDE-mini, CLIP guidance (s = {CLIP_GUIDANCE:g})":
            lambda caps, seed: m.glide.generate(caps, 1, steps=steps, guidance=0.0, seed=seed,
                                                clip_guide=m.noisy_clip, clip_scale=CLIP_GUIDANCE),
        f"unCLIP-mini (w = {UNCLIP_GUIDANCE:g})":
            lambda caps, seed: m.unclip.generate(caps, 1, steps=steps, prior_steps=steps, guidance=UNCLIP_GUIDANCE,
                                                 seed=seed),
    }


def caption_groups(n: int) -> dict[str, ShapesDataset]:
    """``n`` one-object scenes of training pairs and ``n`` of held-out pairs (their captions are
    what the systems draw; their images are the real ones FID compares with)."""
    return {"train": ShapesDataset(n, image_size=32, seed=777, split="train", n_objects=1),
            "held-out": ShapesDataset(n, image_size=32, seed=778, split="holdout", n_objects=1)}


def measure(draw: Callable, groups: dict[str, ShapesDataset], judge, seed: int = 0) -> dict[str, float]:
    """Caption accuracy (the judge), FID against the group's real images, seconds per image."""
    row = {}
    for name, data in groups.items():
        caps = list(data.captions)
        t = time.perf_counter()
        images = draw(caps, seed)
        row[f"{name}_s_per_image"] = (time.perf_counter() - t) / len(caps)
        row[f"{name}_accuracy"] = caption_accuracy(judge, images, caps)
        row[f"{name}_fid"] = fid(judge, data.float_images(), images)
    row["s_per_image"] = sum(row[f"{g}_s_per_image"] for g in groups) / len(groups)
    return row


def table(n: int = 32, steps: int = 50, models: Models | None = None, seed: int = 0,
          only: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Every row of :func:`systems`, measured on ``n`` captions per group."""
    m = models or Models.load()
    groups = caption_groups(n)
    return {name: measure(draw, groups, m.judge, seed) for name, draw in systems(m, steps).items()
            if only is None or any(o in name for o in only)}


def markdown(rows: dict[str, dict[str, float]]) -> str:
    """The table as markdown: accuracy and FID on held-out and training pairs, seconds per image."""
    lines = ["| system | caption accuracy, held-out | caption accuracy, train | FID held-out | FID train | "
             "s / image |", "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['held-out_accuracy']:.3f} | {r['train_accuracy']:.3f} | "
                     f"{r['held-out_fid']:.2f} | {r['train_fid']:.2f} | {r['s_per_image']:.3f} |")
    return "\n".join(lines)
