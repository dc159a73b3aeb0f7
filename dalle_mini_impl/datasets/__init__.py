"""Datasets of the course, all offline and deterministic from a seed.

* ``ShapesDataset`` -- procedurally drawn coloured shapes with attribute captions.
* ``DigitsDataset`` -- scikit-learn's bundled handwritten digits, captioned.
* ``FolderDataset`` / ``CocoCaptionsDataset`` -- your own images and captions.

``load_dataset("shapes" | "digits" | "folder:PATH" | "coco:JSON", ...)`` picks one by name.
Every item is ``(image, caption, attributes)``; ``collate`` batches them for a DataLoader.
``load_pairs`` / ``load_images`` give whole tensors (what the training commands read);
``course_captions`` is every phrasing of the course's caption language.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .captions import course_captions
from .digits import DigitsDataset, digit_caption
from .folder import CocoCaptionsDataset, FolderDataset
from .shapes import (COLOUR_NAMES, COLOURS, DEFAULT_HOLDOUT, POSITIONS, RELATIONS, SHAPES, SIZES,
                     ShapesDataset, canonical, caption_from_attributes, parse_caption)

__all__ = ["ShapesDataset", "DigitsDataset", "FolderDataset", "CocoCaptionsDataset", "load_dataset",
           "load_pairs", "load_images", "course_captions",
           "collate", "caption_from_attributes", "parse_caption", "canonical", "digit_caption",
           "SHAPES", "COLOURS", "COLOUR_NAMES", "SIZES", "POSITIONS", "RELATIONS", "DEFAULT_HOLDOUT"]


def collate(batch):
    """Batch ``(image, caption, attributes)`` items: stacked images, lists of the rest."""
    images, captions, attrs = zip(*batch)
    return torch.stack(images), list(captions), list(attrs)


def load_dataset(spec: str, image_size: int = 32, split: str = "train", seed: int = 0, **kwargs):
    """A dataset by name: ``shapes``, ``digits``, ``folder:PATH`` (images with same-named
    .txt captions) or ``coco:CAPTIONS.json`` (images next to the JSON or in ``image_root``)."""
    if not isinstance(spec, str):
        raise TypeError(f"dataset spec must be a string such as 'shapes', got {type(spec).__name__}")
    name, _, arg = spec.partition(":")
    name = name.strip().lower()
    if name == "shapes":
        return ShapesDataset(image_size=image_size, split=split, seed=seed, **kwargs)
    if name == "digits":
        return DigitsDataset(image_size=image_size, split=split, seed=seed, **kwargs)
    if name in ("folder", "coco"):
        if not arg:
            raise ValueError(f"'{name}:' needs a path, e.g. '{name}:data/sample_folder'")
        cls = FolderDataset if name == "folder" else CocoCaptionsDataset
        return cls(arg, image_size=image_size, **kwargs)
    raise ValueError(f"unknown dataset {spec!r}: use 'shapes', 'digits', 'folder:PATH' or "
                     "'coco:CAPTIONS.json'")


def load_pairs(spec: str, n: int | None, image_size: int, seed: int, objects: int | tuple = 1,
               split: str = "train") -> tuple[torch.Tensor, list[str]]:
    """(images (M, C, S, S) float in [0, 1], captions) of a dataset by name: ``shapes``,
    ``digits``, ``folder:PATH`` (images with same-named .txt captions) or ``coco:JSON``.

    ``shapes`` is drawn with ``n`` samples (default 20,000) of ``objects`` objects each; the
    other datasets are read whole and ``n`` caps how many are kept. ``split``: shapes
    "train", "holdout" or "all"; digits "train" or "test" (any other value means "test");
    folders and COCO have no splits."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError("--dataset must be 'shapes', 'digits' or 'folder:PATH'")
    name, _, arg = spec.partition(":")
    name = name.strip().lower()
    kwargs: dict = {}
    if name == "shapes":
        kwargs = {"n": n or 20_000, "n_objects": objects, "split": split}
    elif name == "digits":
        kwargs = {"channels": 3, "split": "train" if split == "train" else "test"}
    elif name in ("folder", "coco"):
        if not arg.strip():
            raise ValueError(f"'{name}:' needs a path, e.g. --dataset {name}:data/sample_folder")
        path = Path(arg).expanduser()
        if not path.exists():
            raise ValueError(f"--dataset {spec}: {path} does not exist; give a folder of images with "
                             "same-named .txt captions, e.g. folder:data/sample_folder")
    else:
        raise ValueError(f"unknown dataset {spec!r}: use 'shapes', 'digits' or 'folder:PATH'")
    ds = load_dataset(spec, image_size=image_size, seed=seed, **kwargs)
    images = ds.float_images() if hasattr(ds, "float_images") else ds.images.float()
    captions = list(ds.captions)
    if n is not None:
        images, captions = images[:n], captions[:n]
    if len(images) == 0:
        raise ValueError(f"dataset {spec!r} (split {split!r}) has no images")
    return images, captions


def load_images(spec: str, n: int | None, split: str, image_size: int, seed: int,
                n_objects: tuple[int, ...] = (1, 2)) -> torch.Tensor:
    """The images of :func:`load_pairs` alone (shapes with one or two objects by default)."""
    return load_pairs(spec, n, image_size, seed, n_objects, split)[0]
