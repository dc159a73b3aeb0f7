"""``shapes``: procedurally drawn coloured shapes with captions made from their attributes.

One or two objects on a black background. Each object has a shape, a colour, a size and a
position; two objects also stand in a relation ("a small blue square to the left of a
green triangle"). Everything is drawn from a seed, so the same seed gives the same bytes,
and every sample carries its ground-truth attributes, which later lessons use to judge
generated images.

Zero-shot composition (paper section 3): ``split="train"`` never shows a held-out
(colour, shape) combination; ``split="holdout"`` shows at least one in every image.

Drawing is vectorised with NumPy: each shape is a signed region evaluated on a 2x
supersampled pixel grid for a whole batch at once, then box-filtered (anti-aliased).
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

SHAPES = ["circle", "square", "triangle", "diamond"]
COLOURS = {
    "red": (230, 40, 40), "green": (40, 190, 60), "blue": (50, 90, 245),
    "yellow": (240, 220, 40), "purple": (160, 60, 220), "cyan": (40, 215, 225),
}
COLOUR_NAMES = list(COLOURS)
SIZES = ["small", "large"]
POSITIONS = ["left", "right", "top", "bottom", "centre"]
RELATIONS = ["left of", "right of", "above", "below"]
# (colour, shape) pairs that the training split never shows; each colour and shape still
# appears in training with other partners.
DEFAULT_HOLDOUT = (("red", "triangle"), ("green", "diamond"), ("blue", "circle"),
                   ("purple", "square"))

_CENTRES = {"left": (0.27, 0.5), "right": (0.73, 0.5), "top": (0.5, 0.27),
            "bottom": (0.5, 0.73), "centre": (0.5, 0.5)}
_RADIUS = {"small": 0.12, "large": 0.21}  # fraction of the image side
_POS_PHRASE = {"left": "on the left", "right": "on the right", "top": "at the top",
               "bottom": "at the bottom", "centre": "in the centre"}
_REL_PHRASE = {"left of": "to the left of", "right of": "to the right of",
               "above": "above", "below": "below"}
_REL_INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
# relation -> positions of the first and second object
_REL_SLOTS = {"left of": ("left", "right"), "right of": ("right", "left"),
              "above": ("top", "bottom"), "below": ("bottom", "top")}

ONE_TEMPLATES = [
    "a {o} {p}",
    "there is a {o} {p}",
    "{P}, a {o}",
    "a picture of a {o} {p}",
]
TWO_TEMPLATES = [
    "a {a} {r} a {b}",
    "there is a {a} {r} a {b}",
    "a {b} {ri} a {a}",  # the same scene, described from the other object
]


def _obj_phrase(obj: dict) -> str:
    return f"{obj['size']} {obj['colour']} {obj['shape']}"


def caption_from_attributes(attrs: dict, variant: int = 0) -> str:
    """The caption of a scene; ``variant`` picks a phrasing. Every phrasing names every
    attribute, so ``parse_caption`` recovers ``attrs`` from any of them."""
    objs = attrs["objects"]
    if len(objs) == 1:
        o = objs[0]
        p = _POS_PHRASE[o["position"]]
        t = ONE_TEMPLATES[variant % len(ONE_TEMPLATES)]
        return t.format(o=_obj_phrase(o), p=p, P=p)
    rel = attrs["relation"]
    t = TWO_TEMPLATES[variant % len(TWO_TEMPLATES)]
    return t.format(a=_obj_phrase(objs[0]), b=_obj_phrase(objs[1]), r=_REL_PHRASE[rel],
                    ri=_REL_PHRASE[_REL_INVERSE[rel]])


_OBJ_RE = re.compile(r"(small|large) (" + "|".join(COLOUR_NAMES) + r") (" + "|".join(SHAPES) + r")")
_REL_RE = re.compile(r"(" + "|".join(sorted(_REL_PHRASE.values(), key=len, reverse=True)) + r")")


def parse_caption(caption: str) -> dict:
    """Read the attributes back from a caption written by ``caption_from_attributes``.

    Returns ``{"objects": [...], "relation": ...}`` in the canonical order (the relation
    read from the first object to the second as drawn). Raises ValueError on a caption it
    cannot read.
    """
    objs = [{"size": s, "colour": c, "shape": sh} for s, c, sh in _OBJ_RE.findall(caption.lower())]
    if len(objs) == 1:
        for pos, phrase in _POS_PHRASE.items():
            if phrase in caption.lower():
                objs[0]["position"] = pos
                return {"objects": objs, "relation": None}
        raise ValueError(f"no position phrase in caption {caption!r}")
    if len(objs) == 2:
        m = _REL_RE.search(caption.lower())
        if m is None:
            raise ValueError(f"no relation phrase in caption {caption!r}")
        rel = {v: k for k, v in _REL_PHRASE.items()}[m.group(1)]
        a, b = objs
        a["position"], b["position"] = _REL_SLOTS[rel]
        return {"objects": [a, b], "relation": rel}
    raise ValueError(f"caption {caption!r} names {len(objs)} objects; expected 1 or 2")


def canonical(attrs: dict) -> dict:
    """Attributes in one order for comparison: with two objects, the one on the left (or
    top) first, so "A left of B" and "B right of A" compare equal."""
    objs = attrs["objects"]
    if len(objs) == 1:
        return {"objects": [dict(objs[0])], "relation": None}
    a, b = objs
    rel = attrs["relation"]
    if rel in ("right of", "below"):
        a, b, rel = b, a, _REL_INVERSE[rel]
    return {"objects": [dict(a), dict(b)], "relation": rel}


# --------------------------------------------------------------------------- drawing
def _coverage(shape_ids: np.ndarray, cx: np.ndarray, cy: np.ndarray, r: np.ndarray,
              size: int, ss: int = 2) -> np.ndarray:
    """Anti-aliased coverage in [0, 1], (N, size, size), of one shape per image."""
    n = len(shape_ids)
    coords = (np.arange(size * ss, dtype=np.float32) + 0.5) / ss  # pixel units
    dx = coords[None, None, :] - cx[:, None, None]  # (N, 1, S*ss)
    dy = coords[None, :, None] - cy[:, None, None]  # (N, S*ss, 1)
    r = r[:, None, None]
    inside = np.zeros((n, size * ss, size * ss), dtype=bool)
    for k, name in enumerate(SHAPES):
        m = shape_ids == k
        if not m.any():
            continue
        x, y, rr = dx[m], dy[m], r[m]
        if name == "circle":
            ins = x * x + y * y <= rr * rr
        elif name == "square":
            h = 0.82 * rr
            ins = (np.abs(x) <= h) & (np.abs(y) <= h)
        elif name == "diamond":
            ins = np.abs(x) + np.abs(y) <= 1.15 * rr
        else:  # triangle pointing up, circumradius 1.15 r, centred on its centroid
            t = 1.15 * rr
            ins = (y <= 0.5 * t) & (np.abs(x) <= (y + t) / np.sqrt(3.0))
        inside[m] = ins
    cov = np.zeros((n, size, size), dtype=np.uint8)
    for i in range(ss):  # box filter: count covered sub-pixels
        for j in range(ss):
            cov += inside[:, i::ss, j::ss]
    return cov.astype(np.float32) * (1.0 / (ss * ss))


class ShapesDataset(Dataset):
    """Coloured shapes with captions, as ``(image, caption, attributes)``.

    Args:
        n: number of samples.
        image_size: pixels per side (32 for the CPU lessons, 64 or more on a GPU).
        seed: everything (attributes, jitter, phrasing) follows from it.
        split: "train" (no held-out combination appears), "holdout" (every image shows at
            least one held-out combination) or "all".
        n_objects: 1, 2, or a tuple of allowed counts drawn uniformly, e.g. (1, 2).
        holdout: the held-out (colour, shape) pairs.

    Images are drawn once, at construction, into ``self.images`` (uint8, (n, 3, S, S));
    epochs read that cache and never redraw. Items are float images in [0, 1].
    ``self.labels`` holds the attributes as integers, (n, 2, 4) = per object slot
    (shape, colour, size, position), -1 where there is no second object;
    ``self.relations`` (n,) the relation index or -1.
    """

    def __init__(self, n: int = 10_000, image_size: int = 32, seed: int = 0, split: str = "train",
                 n_objects: int | Sequence[int] = 1, holdout: Sequence[tuple[str, str]] = DEFAULT_HOLDOUT):
        if split not in ("train", "holdout", "all"):
            raise ValueError(f"split must be 'train', 'holdout' or 'all', got {split!r}")
        counts = (n_objects,) if isinstance(n_objects, int) else tuple(n_objects)
        if not counts or any(c not in (1, 2) for c in counts):
            raise ValueError(f"n_objects must be 1, 2 or a tuple of them, got {n_objects!r}")
        if image_size < 16:
            raise ValueError(f"image_size must be at least 16 pixels, got {image_size}")
        for c, s in holdout:
            if c not in COLOURS or s not in SHAPES:
                raise ValueError(f"held-out pair {(c, s)} is not a (colour, shape) of "
                                 f"{COLOUR_NAMES} x {SHAPES}")
        self.n, self.image_size, self.seed, self.split = int(n), int(image_size), int(seed), split
        self.n_objects, self.holdout = counts, tuple(tuple(h) for h in holdout)
        images, labels, relations, variants = _generate(self.n, self.image_size, self.seed, split,
                                                        counts, self.holdout)
        self.images = torch.from_numpy(images)  # (n, 3, S, S) uint8
        self.labels = torch.from_numpy(labels)  # (n, 2, 4) int64
        self.relations = torch.from_numpy(relations)  # (n,) int64
        self.attributes = [_attrs_from_labels(l, r) for l, r in zip(labels, relations)]
        self.captions = [caption_from_attributes(a, int(v)) for a, v in zip(self.attributes, variants)]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return self.images[i].float() / 255.0, self.captions[i], self.attributes[i]

    def float_images(self) -> torch.Tensor:
        """All images as one float tensor in [0, 1], (n, 3, S, S)."""
        return self.images.float() / 255.0


def _attrs_from_labels(lab: np.ndarray, rel: int) -> dict:
    objs = [{"shape": SHAPES[s], "colour": COLOUR_NAMES[c], "size": SIZES[z], "position": POSITIONS[p]}
            for s, c, z, p in lab if s >= 0]
    return {"objects": objs, "relation": RELATIONS[rel] if rel >= 0 else None}


def _generate(n, size, seed, split, counts, holdout):
    rng = np.random.default_rng(seed)
    all_combos = [(c, s) for c in range(len(COLOURS)) for s in range(len(SHAPES))]
    held = [(COLOUR_NAMES.index(c), SHAPES.index(s)) for c, s in holdout]
    allowed = [cs for cs in all_combos if cs not in held] if split == "train" else all_combos
    if split == "holdout" and not held:
        raise ValueError("split='holdout' needs at least one held-out pair")
    allowed = np.array(allowed)

    n_obj = rng.choice(np.array(counts), size=n)
    combo = allowed[rng.integers(0, len(allowed), size=(n, 2))]  # (n, 2, [colour, shape])
    # two objects never share both colour and shape, so captions stay unambiguous
    same = (combo[:, 0] == combo[:, 1]).all(axis=1)
    while same.any():
        combo[same, 1] = allowed[rng.integers(0, len(allowed), size=same.sum())]
        same = (combo[:, 0] == combo[:, 1]).all(axis=1)
    if split == "holdout":  # force one object of each image to a held-out pair
        which = np.where(n_obj == 2, rng.integers(0, 2, size=n), 0)
        combo[np.arange(n), which] = np.array(held)[rng.integers(0, len(held), size=n)]
        same = (combo[:, 0] == combo[:, 1]).all(axis=1)
        other = 1 - which
        while same.any():
            combo[same, other[same]] = allowed[rng.integers(0, len(allowed), size=same.sum())]
            same = (combo[:, 0] == combo[:, 1]).all(axis=1)
    sizes = rng.integers(0, len(SIZES), size=(n, 2))
    pos1 = rng.integers(0, len(POSITIONS), size=n)
    rel = rng.integers(0, len(RELATIONS), size=n)
    variants = rng.integers(0, 12, size=n)
    jitter = rng.uniform(-0.04, 0.04, size=(n, 2, 2)) * size
    rjit = rng.uniform(0.92, 1.08, size=(n, 2))

    labels = np.full((n, 2, 4), -1, dtype=np.int64)
    labels[:, :, 0] = combo[:, :, 1]
    labels[:, :, 1] = combo[:, :, 0]
    labels[:, :, 2] = sizes
    labels[:, 0, 3] = pos1
    two = n_obj == 2
    slots = np.array([[POSITIONS.index(a), POSITIONS.index(b)] for a, b in _REL_SLOTS.values()])
    labels[two, 0, 3] = slots[rel[two], 0]
    labels[two, 1, 3] = slots[rel[two], 1]
    labels[~two, 1] = -1
    relations = np.where(two, rel, -1).astype(np.int64)

    images = np.zeros((n, 3, size, size), dtype=np.float32)
    colours = np.array(list(COLOURS.values()), dtype=np.float32) / 255.0
    centres = np.array([_CENTRES[p] for p in POSITIONS], dtype=np.float32) * size
    radii = np.array([_RADIUS[s] for s in SIZES], dtype=np.float32) * size
    chunk = 1024
    for start in range(0, n, chunk):
        sl = slice(start, min(n, start + chunk))
        img = images[sl]  # a view: painted in place, object 0 first
        for slot in (0, 1):
            lab = labels[sl, slot]
            has = lab[:, 0] >= 0
            if not has.any():
                continue
            c = centres[lab[:, 3]] + jitter[sl, slot]
            r = np.where(has, radii[lab[:, 2]] * rjit[sl, slot], 0.0).astype(np.float32)
            cov = _coverage(np.where(has, lab[:, 0], 0), c[:, 0], c[:, 1], r, size)[:, None]
            col = colours[lab[:, 1]][:, :, None, None]  # (m, 3, 1, 1)
            img *= 1 - cov
            img += col * cov
    images = (images * 255.0 + 0.5).astype(np.uint8)
    return images, labels, relations, variants
