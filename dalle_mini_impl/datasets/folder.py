"""Your own data: a folder of images with same-named ``.txt`` captions, or a COCO-style
captions JSON.

Images are centre-cropped to a square and resized to ``image_size`` once, at construction,
and kept in memory as uint8 (a 64x64 image costs 12 KB). Files that cannot be used --
unreadable, truncated, zero-byte or non-image files, images without a caption, empty
captions -- are skipped, and one warning counts them and names the first few. If nothing
usable is left, a ValueError names the folder.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def load_image(path: Path, image_size: int) -> np.ndarray:
    """Decode fully (so truncated files fail here), centre-crop, resize: (3, S, S) uint8."""
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        img = img.convert("RGB")
        w, h = img.size
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        img = img.crop((left, top, left + s, top + s))
        img = img.resize((image_size, image_size), Image.BICUBIC if s > image_size else Image.NEAREST)
        return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy()


class _PairsDataset(Dataset):
    """(image, caption) pairs held in memory; items are ``(image, caption, attributes)``."""

    def _build(self, pairs, where: str, image_size: int):
        if not isinstance(image_size, int) or image_size < 8:
            raise ValueError(f"image_size must be an int of at least 8, got {image_size!r}")
        images, captions, paths, skipped = [], [], [], []
        cache: dict[Path, np.ndarray | None] = {}
        for path, caption in pairs:
            if caption is None:
                skipped.append((path, "no caption"))
                continue
            if not caption.strip():
                skipped.append((path, "empty caption"))
                continue
            if path not in cache:
                try:
                    if path.stat().st_size == 0:
                        raise ValueError("zero-byte file")
                    cache[path] = load_image(path, image_size)
                except Exception as exc:  # unreadable, truncated, not an image
                    cache[path] = None
                    skipped.append((path, f"unreadable image: {type(exc).__name__}: {exc}"))
                    continue
            if cache[path] is None:
                continue
            images.append(cache[path])
            captions.append(" ".join(caption.split()))
            paths.append(path)
        if skipped:
            first = "; ".join(f"{p.name} ({why})" for p, why in skipped[:5])
            more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
            warnings.warn(f"{where}: skipped {len(skipped)} unusable file(s): {first}{more}",
                          stacklevel=3)
        if not images:
            raise ValueError(f"{where}: no usable image-caption pair found (need images such as "
                             f"cat.png with a non-empty caption in cat.txt); skipped {len(skipped)}")
        self.images = torch.from_numpy(np.stack(images))  # (n, 3, S, S) uint8
        self.captions = captions
        self.paths = paths
        self.skipped = skipped
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, i: int):
        return self.images[i].float() / 255.0, self.captions[i], {"path": str(self.paths[i])}

    def float_images(self) -> torch.Tensor:
        return self.images.float() / 255.0


class FolderDataset(_PairsDataset):
    """Images in ``root`` (searched recursively), each with a caption in a same-named ``.txt``
    file (``cat.png`` + ``cat.txt``). A ``.txt`` file may hold several captions, one a line:
    each becomes its own pair."""

    def __init__(self, root: str | Path, image_size: int = 32):
        root = Path(root).expanduser()
        if not root.is_dir():
            raise ValueError(f"folder dataset: {root} is not a folder (give a folder of images "
                             "with same-named .txt captions)")
        pairs, non_images = [], []
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            suffix = path.suffix.lower()
            if suffix == ".txt":
                continue
            if suffix not in IMAGE_SUFFIXES:
                if not path.name.startswith("."):
                    non_images.append(path)
                continue
            txt = path.with_suffix(".txt")
            if not txt.is_file():
                pairs.append((path, None))
                continue
            try:
                lines = [l for l in txt.read_text(encoding="utf-8", errors="replace").splitlines()]
            except OSError:
                lines = []
            lines = [l for l in lines if l.strip()] or [""]
            pairs.extend((path, line) for line in lines)
        self._build(pairs, f"folder dataset {root}", image_size)
        if non_images:
            self.skipped = [(p, "not an image file") for p in non_images] + self.skipped
            warnings.warn(f"folder dataset {root}: ignored {len(non_images)} non-image file(s): "
                          + ", ".join(p.name for p in non_images[:5]), stacklevel=2)


class CocoCaptionsDataset(_PairsDataset):
    """A COCO-style captions file: ``{"images": [{"id", "file_name"}], "annotations":
    [{"image_id", "caption"}]}``. Each annotation is one pair; images are looked up in
    ``image_root`` (default: the JSON's folder)."""

    def __init__(self, captions_json: str | Path, image_size: int = 32,
                 image_root: str | Path | None = None):
        captions_json = Path(captions_json).expanduser()
        if not captions_json.is_file():
            raise ValueError(f"COCO captions file {captions_json} does not exist")
        try:
            data = json.loads(captions_json.read_text(encoding="utf-8"))
            files = {im["id"]: im["file_name"] for im in data["images"]}
            anns = data["annotations"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{captions_json} is not COCO-style captions JSON (need 'images' with "
                             f"'id' and 'file_name', 'annotations' with 'image_id' and 'caption'): "
                             f"{exc}") from exc
        root = Path(image_root) if image_root is not None else captions_json.parent
        pairs, seen = [], set()
        for ann in anns:
            name = files.get(ann.get("image_id"))
            if name is None:
                continue
            cap = ann.get("caption")
            pairs.append((root / name, cap if isinstance(cap, str) else ""))
            seen.add(ann.get("image_id"))
        pairs.extend((root / name, None) for i, name in files.items() if i not in seen)
        self._build(pairs, f"COCO captions {captions_json}", image_size)
