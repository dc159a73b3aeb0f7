"""The shapes judge: a small classifier that reads a shapes scene's attributes back from
its pixels, so generated images can be graded against their captions.

DALL-E's paper grades samples with human raters and with FID/IS (section 3). Our shapes
captions are generated from attributes, so we can do better than a proxy: a classifier
trained on the ground truth reads each image's shape, colour, size and position (and, for
two objects, their relation), and **caption accuracy** is the share of images whose every
captioned attribute the judge reads back correctly.

Two objects are read in canonical order (the left or upper object first; see
``datasets.canonical``), so "A left of B" and "B right of A" are the same scene.

Train a judge with ``python -m dalle_mini_impl.training judge --out runs/judge_shapes.pt`` (the
shipped ``data/judge_shapes.pt`` was made so; regenerating it needs ``--overwrite-shipped``);
measure the shipped one with ``python bench/judge.py``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .datasets.shapes import (COLOUR_NAMES, POSITIONS, SHAPES, SIZES, ShapesDataset, canonical,
                              parse_caption)
from .precision import Precision, as_precision
from .utils import data_dir, load_checkpoint, seed_everything

DEFAULT_PATH = "judge_shapes.pt"  # inside data/
_HEADS = {"shape": len(SHAPES), "colour": len(COLOUR_NAMES), "size": len(SIZES),
          "position": len(POSITIONS)}


@dataclass
class JudgeConfig:
    image_size: int = 32
    width: int = 32


class ShapesJudge(nn.Module):
    """CNN: image (B, 3, S, S) in [0, 1] -> logits for the object count, the relation axis
    (horizontal or vertical) and, per object slot, shape / colour / size / position."""

    def __init__(self, config: JudgeConfig = JudgeConfig()):
        super().__init__()
        self.config = config
        w = config.width

        def block(cin, cout, stride):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU())

        self.features = nn.Sequential(
            block(3, w, 1),                                # S x S
            block(w, 2 * w, 2), block(2 * w, 2 * w, 1),    # S/2
            block(2 * w, 4 * w, 2),                        # S/4
            block(4 * w, 4 * w, 2),                        # S/8
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),         # (B, 64 w)
            nn.Linear(64 * w, 256), nn.ReLU(),
        )
        self.count = nn.Linear(256, 2)
        self.axis = nn.Linear(256, 2)
        self.heads = nn.ModuleDict({k: nn.Linear(256, 2 * n) for k, n in _HEADS.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.features(images * 2 - 1)  # (B, 256)
        out = {"count": self.count(h), "axis": self.axis(h)}
        for k, n in _HEADS.items():
            out[k] = self.heads[k](h).view(-1, 2, n)  # (B, slot, classes)
        return out

    @torch.no_grad()
    def read(self, images: torch.Tensor, batch_size: int = 128) -> list[dict]:
        """The attributes the judge sees in each image, in canonical form."""
        was = self.training
        self.eval()
        dev = next(self.parameters()).device
        scenes = []
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].to(dev).float()
            if x.dtype == torch.uint8 or x.max() > 1.5:
                x = x / 255.0
            out = self(x)
            pred = {k: v.argmax(-1).cpu() for k, v in out.items()}
            for i in range(len(x)):
                n = int(pred["count"][i]) + 1
                objs = [{"shape": SHAPES[pred["shape"][i, s]], "colour": COLOUR_NAMES[pred["colour"][i, s]],
                         "size": SIZES[pred["size"][i, s]], "position": POSITIONS[pred["position"][i, s]]}
                        for s in range(n)]
                if n == 1:
                    scenes.append({"objects": objs, "relation": None})
                else:
                    horizontal = int(pred["axis"][i]) == 0
                    objs[0]["position"], objs[1]["position"] = ("left", "right") if horizontal else ("top", "bottom")
                    scenes.append({"objects": objs, "relation": "left of" if horizontal else "above"})
        self.train(was)
        return scenes


def targets_from_labels(labels: torch.Tensor, relations: torch.Tensor) -> dict[str, torch.Tensor]:
    """Training targets from ``ShapesDataset.labels`` (n, 2, 4) and ``.relations`` (n,), in
    canonical slot order; -100 where an attribute does not apply (ignored by the loss)."""
    labels = labels.clone()
    swap = (relations == 1) | (relations == 3)  # "right of", "below": put the other object first
    labels[swap] = labels[swap].flip(1)
    two = relations >= 0
    t = {"count": two.long(), "axis": torch.where(two, (relations >= 2).long(), -100)}
    for j, k in enumerate(["shape", "colour", "size", "position"]):
        v = labels[:, :, j].clone()
        v[v < 0] = -100
        t[k] = v
    t["position"][two] = -100  # with two objects the positions follow from the axis
    return t


def judge_loss(out: dict, t: dict) -> torch.Tensor:
    loss = F.cross_entropy(out["count"], t["count"]) + F.cross_entropy(out["axis"], t["axis"])
    for k in _HEADS:
        loss = loss + F.cross_entropy(out[k].flatten(0, 1), t[k].flatten(), ignore_index=-100)
    return loss


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Make the judge robust to the softer images a generator draws: random blur and noise."""
    b = x.shape[0]
    k = torch.tensor([1.0, 2.0, 1.0])
    k = (k[:, None] * k[None, :] / 16).expand(3, 1, 3, 3)
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=3)
    a = torch.rand(b, 1, 1, 1, generator=g)
    x = a * blurred + (1 - a) * x
    x = x + 0.04 * torch.rand(b, 1, 1, 1, generator=g) * torch.randn(x.shape, generator=g)
    return x.clamp(0, 1)


def train_judge(n_train: int = 30_000, steps: int = 1500, batch_size: int = 128, seed: int = 0,
                image_size: int = 32, progress: bool = True,
                precision: Precision | str | None = None) -> ShapesJudge:
    """Train the judge on every (colour, shape) pair, one- and two-object scenes, on the CPU
    (``precision``: the package's policy by default, ``precision.pick_precision``)."""
    prec = as_precision(precision, "cpu")
    g = seed_everything(seed)
    data = ShapesDataset(n_train, image_size=image_size, seed=seed + 1000, split="all", n_objects=(1, 2))
    images = data.float_images()
    targets = targets_from_labels(data.labels, data.relations)
    model = ShapesJudge(JudgeConfig(image_size=image_size))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    t0 = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(0, n_train, (batch_size,), generator=g)
        x = _augment(images[idx], g)
        with prec.autocast():
            out = model(x)
        loss = judge_loss({k: v.float() for k, v in out.items()}, {k: v[idx] for k, v in targets.items()})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if progress and (step % 250 == 0 or step == steps - 1):
            print(f"step {step:5d}  loss {loss.item():.4f}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    return model.eval()


def attribute_accuracy(judge: ShapesJudge, dataset: ShapesDataset) -> dict[str, float]:
    """Per-attribute accuracy of the judge on a dataset with ground truth, and overall."""
    seen = judge.read(dataset.float_images())
    right, total = {}, {}
    for got, want in zip(seen, dataset.attributes):
        want, got = canonical(want), canonical(got)
        _tally(right, total, "count", len(got["objects"]) == len(want["objects"]))
        if len(got["objects"]) != len(want["objects"]):
            continue
        if want["relation"] is not None:
            _tally(right, total, "relation", got["relation"] == want["relation"])
        for go, wo in zip(got["objects"], want["objects"]):
            for k in ("shape", "colour", "size"):
                _tally(right, total, k, go[k] == wo[k])
            if want["relation"] is None:
                _tally(right, total, "position", go["position"] == wo["position"])
    acc = {k: right[k] / total[k] for k in total}
    acc["overall"] = sum(right.values()) / sum(total.values())
    return acc


def _tally(right, total, key, ok):
    right[key] = right.get(key, 0) + int(ok)
    total[key] = total.get(key, 0) + 1


def caption_matches(judge: ShapesJudge, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
    """Bool per image: does the judge read back every attribute its caption states?"""
    seen = judge.read(images)
    return torch.tensor([canonical(s) == canonical(parse_caption(c)) for s, c in zip(seen, captions)])


def caption_accuracy(judge: ShapesJudge, images: torch.Tensor, captions: list[str]) -> float:
    """Share of images whose every captioned attribute the judge reads correctly."""
    return caption_matches(judge, images, captions).float().mean().item()


def load_judge(path: str | Path | None = None, device: str | torch.device = "cpu") -> ShapesJudge:
    """The shipped judge (``data/judge_shapes.pt``) or one saved by ``training judge``."""
    path = Path(path) if path is not None else data_dir() / DEFAULT_PATH
    state = load_checkpoint(path, map_location=device)
    model = ShapesJudge(JudgeConfig(**state["config"]))
    model.load_state_dict(state["model"])
    return model.to(device).eval()
