"""``digits``: the 1,797 handwritten digits (8x8, 16 grey levels) that ship inside
scikit-learn, upscaled and captioned. Real data for the early lessons, with no download."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
_TEMPLATES = ["a handwritten {word}", "the digit {digit}", "a {digit} written by hand",
              "a handwritten digit {word}"]


def digit_caption(digit: int, variant: int = 0) -> str:
    """A caption for a digit; ``variant`` picks one of the phrasings."""
    return _TEMPLATES[variant % len(_TEMPLATES)].format(word=DIGIT_WORDS[digit], digit=digit)


class DigitsDataset(Dataset):
    """scikit-learn's handwritten digits as ``(image, caption, attributes)``.

    Args:
        split: "train", "test" or "all". The split is a fixed shuffle by ``seed``;
            ``test_fraction`` of the images are test.
        image_size: side in pixels (bilinear upscaling from 8x8).
        channels: 1 (grey) or 3 (grey repeated, for models that expect RGB).

    Images are float tensors in [0, 1], (channels, image_size, image_size), ink bright on
    a dark background. ``attributes`` is ``{"digit": d}``; ``.labels`` holds all digits.
    """

    def __init__(self, split: str = "train", image_size: int = 32, channels: int = 1,
                 seed: int = 0, test_fraction: float = 0.2):
        from sklearn.datasets import load_digits

        if split not in ("train", "test", "all"):
            raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        bunch = load_digits()
        x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0)[:, None]  # (1797, 1, 8, 8)
        y = torch.from_numpy(bunch.target.astype(np.int64))
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
        n_test = int(round(len(y) * test_fraction))
        idx = {"test": order[:n_test], "train": order[n_test:], "all": order}[split]
        x, y = x[idx], y[idx]
        if image_size != 8:
            x = F.interpolate(x, size=(image_size, image_size), mode="bilinear",
                              align_corners=False).clamp(0, 1)
        if channels == 3:
            x = x.repeat(1, 3, 1, 1)
        self.images = x.contiguous()  # (N, C, H, W) float in [0, 1]
        self.labels = y
        variants = torch.randint(0, len(_TEMPLATES), (len(y),),
                                 generator=torch.Generator().manual_seed(seed + 1))
        self.captions = [digit_caption(int(d), int(v)) for d, v in zip(y, variants)]
        self.image_size, self.channels, self.split = image_size, channels, split

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], self.captions[i], {"digit": int(self.labels[i])}
