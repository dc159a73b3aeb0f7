"""Datasets of the course, all offline and deterministic from a seed.

* ``ShapesDataset`` -- procedurally drawn coloured shapes with attribute captions.
* ``DigitsDataset`` -- scikit-learn's bundled handwritten digits, captioned.
* ``FolderDataset`` / ``CocoCaptionsDataset`` -- your own images and captions.

``load_dataset("shapes" | "digits" | "folder:PATH" | "coco:JSON", ...)`` picks one by name.
Every item is ``(image, caption, attributes)``; ``collate`` batches them for a DataLoader.
"""
from __future__ import annotations

import torch

from .digits import DigitsDataset, digit_caption
from .folder import CocoCaptionsDataset, FolderDataset
from .shapes import (COLOUR_NAMES, COLOURS, DEFAULT_HOLDOUT, POSITIONS, RELATIONS, SHAPES, SIZES,
                     ShapesDataset, canonical, caption_from_attributes, parse_caption)

__all__ = ["ShapesDataset", "DigitsDataset", "FolderDataset", "CocoCaptionsDataset", "load_dataset",
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
