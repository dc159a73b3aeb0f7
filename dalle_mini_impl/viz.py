"""Figures for the notebooks, in one style: image grids and training curves.

Plotting lives here and only here; no model or training code imports this module.
Figures are PNG at a modest dpi so committed notebooks stay small.
"""
from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

DPI = 72


def setup(dpi: int = DPI) -> None:
    """Use PNG inline figures at a modest dpi, one style for every lesson."""
    import matplotlib

    matplotlib.rcParams.update({
        "figure.dpi": dpi, "savefig.dpi": dpi, "figure.figsize": (6.0, 3.5),
        "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
        "axes.spines.right": False, "image.interpolation": "nearest",
    })
    try:  # inside IPython only
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        set_matplotlib_formats("png")
    except Exception:
        pass


def to_numpy_images(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """(N, C, H, W) or (N, H, W) in [0, 1] (float) or [0, 255] (uint8) -> (N, H, W, 3) float."""
    if isinstance(images, torch.Tensor):
        images = images.detach().float().cpu().numpy() if images.dtype != torch.uint8 \
            else images.cpu().numpy()
    x = np.asarray(images)
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / 255.0
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise ValueError(f"expected images of shape (N, C, H, W), got {x.shape}")
    if x.shape[1] in (1, 3):  # channels first
        x = x.transpose(0, 2, 3, 1)
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return np.clip(x, 0.0, 1.0)


def image_grid(images, nrow: int | None = None, pad: int = 1, pad_value: float = 1.0) -> np.ndarray:
    """Tile N images into one (H', W', 3) array, ``nrow`` images per row."""
    x = to_numpy_images(images)
    n, h, w, _ = x.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol_rows = math.ceil(n / nrow)
    grid = np.full((ncol_rows * (h + pad) + pad, nrow * (w + pad) + pad, 3), pad_value, np.float32)
    for i in range(n):
        r, c = divmod(i, nrow)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = x[i]
    return grid


def show_images(images, nrow: int | None = None, title: str | None = None,
                captions: Sequence[str] | None = None, ax=None, scale: float = 1.0):
    """Show a grid of images; with ``captions`` each image gets its own small panel and title."""
    import matplotlib.pyplot as plt

    x = to_numpy_images(images)
    if captions is not None:
        n = len(x)
        nrow = nrow or min(n, 8)
        rows = math.ceil(n / nrow)
        fig, axes = plt.subplots(rows, nrow, figsize=(1.7 * nrow * scale, 2.2 * rows * scale),
                                 squeeze=False, layout="constrained")
        for i, a in enumerate(axes.flat):
            a.axis("off")
            if i < n:
                a.imshow(x[i])
                a.set_title(_wrap(captions[i], 24), fontsize=7)
        if title:
            fig.suptitle(title, fontsize=10)
        return fig
    grid = image_grid(x, nrow)
    if ax is None:
        fig, ax = plt.subplots(figsize=(scale * min(8, grid.shape[1] / 40 + 1),
                                        scale * min(8, grid.shape[0] / 40 + 1)))
    ax.imshow(grid)
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=10)
    return ax.figure


def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(str(text), width)[:4])


def plot_curves(curves: Mapping[str, Sequence[float]], xlabel: str = "step", ylabel: str = "loss",
                title: str | None = None, ax=None, logy: bool = False, smooth: int = 1,
                x: Mapping[str, Sequence[float]] | None = None):
    """Plot named curves on one axis; ``smooth`` > 1 applies a running mean of that width."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots()
    for name, ys in curves.items():
        ys = np.asarray(list(ys), dtype=float)
        if smooth > 1 and len(ys) >= smooth:
            ys = np.convolve(ys, np.ones(smooth) / smooth, mode="valid")
        xs = np.asarray(x[name], dtype=float)[-len(ys):] if x and name in x else np.arange(len(ys))
        ax.plot(xs, ys, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title, fontsize=10)
    if len(curves) > 1:
        ax.legend(fontsize=8)
    return ax.figure


def save_image_grid(images, path, nrow: int | None = None, upscale: int = 4) -> None:
    """Write a grid of images to a PNG file (PIL only; no matplotlib needed)."""
    from PIL import Image

    grid = (image_grid(images, nrow) * 255).round().astype(np.uint8)
    img = Image.fromarray(grid)
    if upscale > 1:
        img = img.resize((img.width * upscale, img.height * upscale), Image.NEAREST)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def save_labelled_grid(rows, labels: Sequence[str], path, upscale: int = 4, chars: int | None = None) -> None:
    """Write a PNG with one column per label: the images of each row of ``rows`` (tensors
    (B, C, H, W) in [0, 1], the same B) stacked in the column, and the label written under it
    (wrapped; PIL's built-in font, so nothing to download). Used for sample grids: the caption
    under its real image and its samples."""
    from PIL import Image, ImageDraw, ImageFont

    rows = [np.asarray(r.detach().cpu().float().clamp(0, 1)) if hasattr(r, "detach") else np.asarray(r) for r in rows]
    n, (c, h, w) = len(labels), rows[0].shape[1:]
    if any(len(r) != n for r in rows):
        raise ValueError(f"every row needs one image per label ({n}), got {[len(r) for r in rows]}")
    font = ImageFont.load_default()
    cw, pad = w * upscale, 4
    chars = chars or max(8, cw // 6)
    wrapped = [textwrap.wrap(str(t), chars)[:4] for t in labels]
    line_h = 12
    text_h = line_h * max(1, max(len(x) for x in wrapped))
    canvas = Image.new("RGB", (n * (cw + pad) + pad, len(rows) * (h * upscale + pad) + pad + text_h + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for j in range(n):
        x = pad + j * (cw + pad)
        for i, r in enumerate(rows):
            a = (r[j].transpose(1, 2, 0) * 255).round().astype(np.uint8)
            tile = Image.fromarray(a[..., 0] if c == 1 else a).convert("RGB").resize((cw, h * upscale), Image.NEAREST)
            canvas.paste(tile, (x, pad + i * (h * upscale + pad)))
        y = pad + len(rows) * (h * upscale + pad)
        for k, line in enumerate(wrapped[j]):
            draw.text((x, y + k * line_h), line, fill="black", font=font)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def widgets_enabled() -> bool:
    """True when ipywidgets controls can be shown: inside a Jupyter kernel, ipywidgets
    installed, and not a headless run. The course and test commands set ``DALLE_HEADLESS=1``
    (nbconvert/nbval have no front end to draw a widget), so lessons skip their sliders there
    and call the slider's function once with its default value instead."""
    if os.environ.get("DALLE_HEADLESS"):
        return False
    try:
        import ipywidgets  # noqa: F401
        from IPython import get_ipython
    except ImportError:
        return False
    ip = get_ipython()
    return ip is not None and hasattr(ip, "kernel")


def interact_or_call(func, **controls):
    """``ipywidgets.interact(func, **controls)`` when a front end is attached; otherwise call
    ``func`` once with each control's default value and say the control was skipped.

    ``controls`` map argument names to ipywidgets controls (``IntSlider(value=...)`` etc.).
    """
    if widgets_enabled():
        import ipywidgets

        return ipywidgets.interact(func, **controls)
    defaults = {k: getattr(c, "value", c) for k, c in controls.items()}
    print(f"(no widget front end: showing {func.__name__} at {defaults})")
    return func(**defaults)
