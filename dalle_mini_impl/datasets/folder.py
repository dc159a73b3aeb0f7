"""Your own data: a folder of images with same-named ``.txt`` captions, or a COCO-style
captions JSON.

Images are turned upright by their EXIF orientation (phone photos), converted to 8-bit RGB
(16-bit and float images are scaled, not clipped; transparent pixels are composited onto
``background``, white by default), centre-cropped to a square and resized to ``image_size``
once, at construction, and kept in memory as uint8 (a 64x64 image costs 12 KB). Files that
cannot be used -- unreadable, truncated, zero-byte or non-image files, images without a
caption, empty captions, COCO captions of images the file does not list -- are skipped, and
one warning counts them, names the first few and counts captions that were not valid UTF-8
(kept, with the undecodable bytes replaced). If nothing usable is left, a ValueError names
the folder. A COCO file with a repeated image id or a malformed entry is a ValueError that
names it.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0), "grey": (128, 128, 128)}


def _background(background) -> tuple[int, int, int]:
    if isinstance(background, str):
        if background not in BACKGROUNDS:
            raise ValueError(f"background {background!r}: use one of {sorted(BACKGROUNDS)} or an (r, g, b) tuple")
        return BACKGROUNDS[background]
    rgb = tuple(int(c) for c in background)
    if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
        raise ValueError(f"background must be three values in 0..255, got {background!r}")
    return rgb


def to_rgb8(img, background=(255, 255, 255)):
    """A PIL image in any mode -> 8-bit RGB: 16-bit and 32-bit integer images scaled from their
    range, float images from [0, 1] (or their own range when it exceeds it), transparency
    composited onto ``background``."""
    from PIL import Image

    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        if img.mode == "F":
            top = 1.0 if a.size == 0 or np.nanmax(a) <= 1.0 else float(np.nanmax(a))
        else:
            top = 65535.0 if img.mode.startswith("I;16") or np.max(a, initial=0) > 255 else 255.0
        a = np.nan_to_num(a / top).clip(0, 1)
        img = Image.fromarray((a * 255).round().astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, background + (255,))
        img = Image.alpha_composite(canvas, rgba)
    return img.convert("RGB")


def load_image(path: Path, image_size: int, background=(255, 255, 255)) -> np.ndarray:
    """Decode fully (so truncated files fail here), turn upright by EXIF, convert to 8-bit RGB
    (``to_rgb8``), centre-crop, resize: (3, S, S) uint8."""
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        img.load()
        img = to_rgb8(ImageOps.exif_transpose(img), _background(background))
        w, h = img.size
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        img = img.crop((left, top, left + s, top + s))
        img = img.resize((image_size, image_size), Image.BICUBIC if s > image_size else Image.NEAREST)
        return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy()


class _PairsDataset(Dataset):
    """(image, caption) pairs held in memory; items are ``(image, caption, attributes)``."""

    def _build(self, pairs, where: str, image_size: int, skipped=None, bad_text: int = 0,
               background="white"):
        if not isinstance(image_size, int) or image_size < 8:
            raise ValueError(f"image_size must be an int of at least 8, got {image_size!r}")
        background = _background(background)
        images, captions, paths, skipped = [], [], [], list(skipped or [])
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
                    cache[path] = load_image(path, image_size, background)
                except Exception as exc:  # unreadable, truncated, not an image
                    cache[path] = None
                    skipped.append((path, f"unreadable image: {type(exc).__name__}: {exc}"))
                    continue
            if cache[path] is None:
                continue
            images.append(cache[path])
            captions.append(" ".join(caption.split()))
            paths.append(path)
        if skipped or bad_text:
            first = "; ".join(f"{p.name} ({why})" for p, why in skipped[:5])
            more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
            text = (f"; {bad_text} caption(s) were not valid UTF-8 and were kept with the undecodable bytes "
                    "replaced" if bad_text else "")
            warnings.warn(f"{where}: skipped {len(skipped)} unusable file(s)" + (f": {first}{more}" if skipped else "")
                          + text, stacklevel=3)
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

    def __init__(self, root: str | Path, image_size: int = 32, background="white"):
        root = Path(root).expanduser()
        if not root.is_dir():
            raise ValueError(f"folder dataset: {root} is not a folder (give a folder of images "
                             "with same-named .txt captions)")
        pairs, non_images, bad_text = [], [], 0
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
                raw = txt.read_bytes()
            except OSError:
                raw = b""
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text, bad_text = raw.decode("utf-8", errors="replace"), bad_text + 1
            lines = text.splitlines()
            lines = [l for l in lines if l.strip()] or [""]
            pairs.extend((path, line) for line in lines)
        self._build(pairs, f"folder dataset {root}", image_size,
                    skipped=[(p, "not an image file") for p in non_images], bad_text=bad_text,
                    background=background)


class CocoCaptionsDataset(_PairsDataset):
    """A COCO-style captions file: ``{"images": [{"id", "file_name"}], "annotations":
    [{"image_id", "caption"}]}``. Each annotation is one pair; images are looked up in
    ``image_root`` (default: the JSON's folder)."""

    def __init__(self, captions_json: str | Path, image_size: int = 32,
                 image_root: str | Path | None = None, background="white"):
        captions_json = Path(captions_json).expanduser()
        if not captions_json.is_file():
            raise ValueError(f"COCO captions file {captions_json} does not exist")
        need = ("need 'images': [{'id', 'file_name'}] and 'annotations': [{'image_id', 'caption'}]")
        try:
            data = json.loads(captions_json.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"{captions_json} is not readable JSON ({exc}); {need}") from None
        if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
                or not isinstance(data.get("annotations"), list):
            raise ValueError(f"{captions_json} is not COCO-style captions JSON: {need}")
        files: dict = {}
        for i, im in enumerate(data["images"]):
            if not isinstance(im, dict) or "id" not in im or not isinstance(im.get("file_name"), str) \
                    or not im["file_name"]:
                raise ValueError(f"{captions_json}: images[{i}] = {im!r:.80} needs an 'id' and a 'file_name' string")
            if im["id"] in files:
                raise ValueError(f"{captions_json}: image id {im['id']!r} is listed twice ({files[im['id']]} and "
                                 f"{im['file_name']}): captions could be paired with the wrong image; make ids unique")
            files[im["id"]] = im["file_name"]
        root = Path(image_root) if image_root is not None else captions_json.parent
        pairs, seen, orphans, bad_text = [], set(), 0, 0
        for i, ann in enumerate(data["annotations"]):
            if not isinstance(ann, dict) or "image_id" not in ann:
                raise ValueError(f"{captions_json}: annotations[{i}] = {ann!r:.80} needs an 'image_id' and a 'caption'")
            name = files.get(ann["image_id"])
            if name is None:
                orphans += 1
                continue
            cap = ann.get("caption")
            cap = cap if isinstance(cap, str) else ""
            try:
                cap.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate from a "\ud800" escape
                cap, bad_text = cap.encode("utf-8", errors="replace").decode("utf-8"), bad_text + 1
            pairs.append((root / name, cap))
            seen.add(ann["image_id"])
        pairs.extend((root / name, None) for i, name in files.items() if i not in seen)
        skipped = [(captions_json, f"{orphans} caption(s) of image ids not in 'images'")] if orphans else []
        self._build(pairs, f"COCO captions {captions_json}", image_size, skipped=skipped, bad_text=bad_text,
                    background=background)
