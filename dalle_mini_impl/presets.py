"""Presets: the sizes of every model and run, one frozen record per machine class.

A preset fixes the sizes a lesson or a training command uses, so that the same notebook runs
as a toy on a laptop CPU and at a useful size on a GPU:

* ``cpu``   -- the default without CUDA: 32x32 images, tiny models, minutes on 2 cores.
* ``gpu16`` -- chosen automatically on a CUDA card with less than 40 GB (a Colab T4/L4).
* ``gpu80`` -- chosen automatically on a CUDA card with 40 GB or more (A100/H100).

Set the environment variable ``DALLE_PRESET`` (``cpu``, ``gpu16`` or ``gpu80``) to force one.

``PAPER`` is the same record for the paper's system (Ramesh et al. 2021, section 2.2 and
appendices A, B.1, B.2): 256x256 images, a 32x32 grid of 8,192 codes, 256 text tokens from a
16,384-token BPE vocabulary, a 64-layer prior of width 3,968 with 62 heads, batch 1,024,
AdamW at 4.5e-4 warmed up over 5,000 updates. It is never trained here; ``train dalle
--preset paper`` prints its size.

Everything else reads its sizes from here: the dVAE and the prior the training commands build,
their optimiser settings, the micro-batch the GPU presets accumulate over, and the memory
estimates of ``training/sizing.py``.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch

from .utils import get_device

PRESET_ENV = "DALLE_PRESET"


@dataclass(frozen=True)
class Preset:
    """Sizes of the data, the dVAE, the prior and the prior's optimiser for one machine class."""

    name: str
    # data
    image_size: int       # pixels per side of training images
    batch_size: int       # pairs per optimizer update (all processes together)
    # dVAE (lessons 03-04): image_size -> grid x grid tokens from a codebook of dvae_codes
    dvae_grid: int
    dvae_codes: int
    dvae_hidden: int
    # transformer prior (lessons 06-08)
    text_len: int         # text positions; each has its own padding id
    d_model: int
    n_layers: int
    n_heads: int
    bpe_vocab: int = 512  # BPE vocabulary learnt on your captions (the course's own saturates below it)
    # the prior's optimiser (train dalle; paper B.2)
    lr: float = 1e-3
    warmup: int = 100     # linear warm-up updates
    micro_batch: int | None = None  # pairs per forward pass (gradient accumulation); None: the whole batch

    @property
    def text_vocab(self) -> int:
        """Rows of the prior's text embedding: BPE ids plus one padding id per text position."""
        return self.bpe_vocab + self.text_len

    @property
    def image_len(self) -> int:
        return self.dvae_grid * self.dvae_grid

    def replace(self, **changes) -> "Preset":
        return dataclasses.replace(self, **changes)


# micro_batch: sizing.preset_report estimates 7.5 GiB (gpu16) and 37 GiB (gpu80) of training
# memory at 64 pairs with materialised attention probabilities, against 14.1 / 131 GiB for the
# whole batch at once.
PRESETS: dict[str, Preset] = {
    "cpu": Preset("cpu", image_size=32, batch_size=32, dvae_grid=8, dvae_codes=512, dvae_hidden=32,
                  text_len=32, d_model=256, n_layers=4, n_heads=4, lr=1e-3, warmup=100),
    "gpu16": Preset("gpu16", image_size=64, batch_size=128, dvae_grid=16, dvae_codes=1024, dvae_hidden=128,
                    text_len=64, d_model=512, n_layers=12, n_heads=8, lr=5e-4, warmup=1000, micro_batch=64),
    "gpu80": Preset("gpu80", image_size=128, batch_size=256, dvae_grid=16, dvae_codes=8192, dvae_hidden=256,
                    text_len=128, d_model=1024, n_layers=24, n_heads=16, lr=3e-4, warmup=2000, micro_batch=64),
}

PAPER = Preset("paper", image_size=256, batch_size=1024, dvae_grid=32, dvae_codes=8192, dvae_hidden=256,
               text_len=256, d_model=3968, n_layers=64, n_heads=62, bpe_vocab=16384, lr=4.5e-4, warmup=5000)


def get_preset(name: str | None = None, device: torch.device | str | None = None) -> Preset:
    """Pick a preset: ``name``, else ``$DALLE_PRESET``, else by device (CPU -> ``cpu``;
    CUDA under 40 GB -> ``gpu16``; CUDA with 40 GB or more -> ``gpu80``)."""
    name = name or os.environ.get(PRESET_ENV) or None
    if name is None:
        device = torch.device(device) if device is not None else get_device()
        if device.type == "cuda":
            index = device.index if device.index is not None else torch.cuda.current_device()
            total = torch.cuda.get_device_properties(index).total_memory
            name = "gpu80" if total >= 40 * 2**30 else "gpu16"
        else:
            name = "cpu"
    key = name.strip().lower()
    if key not in PRESETS:
        raise ValueError(f"unknown preset {name!r} (from the argument or ${PRESET_ENV}); "
                         f"choose one of {sorted(PRESETS)}")
    return PRESETS[key]
