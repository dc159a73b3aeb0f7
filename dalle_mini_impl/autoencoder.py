"""Lesson 01: a convolutional autoencoder -- compress an image, then reconstruct it.

The first rung of the ladder to DALL-E (Ramesh et al. 2021). Section 2.1 of the paper
compresses each 256x256 image into a 32x32 grid of tokens with a discrete VAE before the
transformer ever sees it; this module is the plain, deterministic ancestor of that
compressor:

    z = E(x)          encoder: stride-2 convolutions, each halving the side
    x_hat = D(z)      decoder: the mirror image, transposed convolutions doubling it
    L(x) = || x - x_hat ||^2 / D      mean squared error per pixel

The building blocks ``conv_encoder`` / ``conv_decoder`` are shared with lesson 02
(``vae.py``) and mirror the family lesson 03's dVAE uses (downsampling by stride-2 steps,
optional residual blocks), so the three models differ only in what sits in the bottleneck:

* ``latent_dim=k``   -- a flat vector of k numbers (a linear layer after the conv stack);
  small k gives the 2-D latent maps of the lesson.
* ``latent_dim=None`` -- a spatial grid of ``latent_channels`` numbers per cell, the shape
  the dVAE later snaps to a codebook (one token per cell).

``fit`` and ``evaluate`` are the small training helpers every early lesson reuses: any
model with a ``loss(x)`` method returning a scalar tensor, a dict of them or a NamedTuple
with a ``loss`` field can be trained with them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .precision import Precision, as_precision
from .utils import progress_bar


# --------------------------------------------------------------------------- blocks
class ResBlock(nn.Module):
    """x + conv3x3(relu(conv3x3(relu(x)))): a residual block that keeps the shape
    (the same pre-activation form lesson 03's dVAE uses, paper appendix A.1)."""

    def __init__(self, channels: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H, W)
        return x + self.net(x)


def conv_encoder(in_ch: int, hidden: int, n_down: int, out_ch: int | None = None,
                 n_res: int = 0) -> nn.Sequential:
    """(B, in_ch, S, S) -> (B, out_ch, S / 2**n_down, S / 2**n_down).

    A 3x3 stem to ``hidden`` channels, then ``n_down`` stride-2 4x4 convolutions (each
    halves the side: 16x16 => 8x8 => 4x4), each followed by ``n_res`` residual blocks, then
    a ReLU and a 1x1 projection to ``out_ch`` channels (``hidden`` if None).
    """
    _check_positive(in_ch=in_ch, hidden=hidden)
    if n_down < 0 or n_res < 0:
        raise ValueError(f"n_down and n_res must be >= 0, got n_down={n_down}, n_res={n_res}")
    layers: list[nn.Module] = [nn.Conv2d(in_ch, hidden, 3, padding=1)]
    for _ in range(n_down):
        layers += [nn.ReLU(), nn.Conv2d(hidden, hidden, 4, stride=2, padding=1)]  # S => S/2
        layers += [ResBlock(hidden) for _ in range(n_res)]
    layers += [nn.ReLU(), nn.Conv2d(hidden, out_ch or hidden, 1)]
    return nn.Sequential(*layers)


def conv_decoder(in_ch: int, hidden: int, n_up: int, out_ch: int, n_res: int = 0) -> nn.Sequential:
    """(B, in_ch, s, s) -> (B, out_ch, s * 2**n_up, s * 2**n_up): the mirror of ``conv_encoder``.

    A 1x1 projection to ``hidden`` channels, then ``n_up`` times (``n_res`` residual blocks,
    a stride-2 4x4 transposed convolution doubling the side), then a 3x3 convolution to
    ``out_ch`` channels. The output is unbounded (logits / means); the model decides how to
    squash it.
    """
    _check_positive(in_ch=in_ch, hidden=hidden, out_ch=out_ch)
    if n_up < 0 or n_res < 0:
        raise ValueError(f"n_up and n_res must be >= 0, got n_up={n_up}, n_res={n_res}")
    layers: list[nn.Module] = [nn.Conv2d(in_ch, hidden, 1)]
    for _ in range(n_up):
        layers += [ResBlock(hidden) for _ in range(n_res)]
        layers += [nn.ReLU(), nn.ConvTranspose2d(hidden, hidden, 4, stride=2, padding=1)]  # s => 2s
    layers += [nn.ReLU(), nn.Conv2d(hidden, out_ch, 3, padding=1)]
    return nn.Sequential(*layers)


def _check_positive(**values: int) -> None:
    for name, v in values.items():
        if not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name} must be a positive int, got {v!r}")


# --------------------------------------------------------------------------- model
@dataclass
class AutoencoderConfig:
    """Sizes of a convolutional autoencoder.

    ``image_size`` must be divisible by ``2**n_down`` (the downsampling factor).
    ``latent_dim`` is the bottleneck size of a flat latent vector; None keeps a spatial grid
    of ``latent_channels`` per cell (``(image_size / 2**n_down)**2 * latent_channels`` numbers).
    """

    in_channels: int = 1
    image_size: int = 16
    hidden: int = 32
    n_down: int = 2
    n_res: int = 0
    latent_dim: int | None = 16
    latent_channels: int = 4
    output: str = "sigmoid"  # or "linear": the decoder's output is the image (clamped when decoding)

    def __post_init__(self):
        _check_positive(in_channels=self.in_channels, image_size=self.image_size,
                        hidden=self.hidden, latent_channels=self.latent_channels)
        if self.output not in ("sigmoid", "linear"):
            raise ValueError(f"output must be 'sigmoid' or 'linear', got {self.output!r}")
        factor = 2 ** self.n_down
        if self.n_down < 0 or self.image_size % factor:
            raise ValueError(f"image_size {self.image_size} is not divisible by the downsampling "
                             f"factor 2**n_down = {factor}: pick n_down so that it is "
                             f"(e.g. n_down={int(math.log2(self.image_size & -self.image_size))} at most)")
        if self.latent_dim is not None:
            _check_positive(latent_dim=self.latent_dim)

    @property
    def grid(self) -> int:
        """Side of the encoder's feature map: image_size / 2**n_down."""
        return self.image_size // 2 ** self.n_down

    @property
    def bottleneck_size(self) -> int:
        """How many numbers one image is compressed to."""
        if self.latent_dim is not None:
            return self.latent_dim
        return self.latent_channels * self.grid ** 2


def check_images(x: torch.Tensor, in_channels: int, image_size: int) -> None:
    """Raise a clear error unless ``x`` is a batch (B, in_channels, image_size, image_size)."""
    if x.dim() != 4 or x.shape[1] != in_channels or x.shape[-2:] != (image_size, image_size):
        raise ValueError(f"expected images of shape (B, {in_channels}, {image_size}, "
                         f"{image_size}), got {tuple(x.shape)}; resize the dataset "
                         "(image_size=...) or change the config")


class Autoencoder(nn.Module):
    """x (B, C, S, S) in [0, 1] -> z -> x_hat (B, C, S, S) in [0, 1] (a sigmoid output, or with
    ``output="linear"`` the decoder's output clamped).

    ``encode`` gives z: (B, latent_dim), or (B, latent_channels, g, g) with ``latent_dim=None``.
    ``loss`` is the mean squared error per pixel (the figure the lesson reports).
    """

    def __init__(self, config: AutoencoderConfig | None = None):
        super().__init__()
        self.config = c = config or AutoencoderConfig()
        if c.latent_dim is None:
            self.encoder = conv_encoder(c.in_channels, c.hidden, c.n_down, c.latent_channels, c.n_res)
            self.decoder = conv_decoder(c.latent_channels, c.hidden, c.n_down, c.in_channels, c.n_res)
        else:
            flat = c.hidden * c.grid ** 2
            self.encoder = nn.Sequential(
                conv_encoder(c.in_channels, c.hidden, c.n_down, c.hidden, c.n_res),
                nn.Flatten(), nn.ReLU(), nn.Linear(flat, c.latent_dim))
            self.decoder = nn.Sequential(
                nn.Linear(c.latent_dim, flat), nn.Unflatten(1, (c.hidden, c.grid, c.grid)),
                conv_decoder(c.hidden, c.hidden, c.n_down, c.in_channels, c.n_res))

    def _check_input(self, x: torch.Tensor) -> None:
        check_images(x, self.config.in_channels, self.config.image_size)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self.encoder(x)  # (B, latent_dim) or (B, latent_channels, g, g)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)  # (B, C, S, S), unbounded

    def _squash(self, out: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(out) if self.config.output == "sigmoid" else out

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self._squash(self.decode_logits(z)).clamp(0, 1)  # (B, C, S, S) in [0, 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """Mean squared error per pixel between x and its reconstruction. With ``output="linear"``
        the decoder's raw output is compared (no clamp, so every pixel has a gradient): on shapes,
        mostly black, a sigmoid output saturates at black within a few hundred updates and the
        autoencoder never learns the objects (MSE stuck near 0.03, the error of a black image)."""
        return F.mse_loss(self._squash(self.decode_logits(self.encode(x))), x)


@torch.no_grad()
def interpolate(model: nn.Module, x0: torch.Tensor, x1: torch.Tensor, steps: int = 8) -> torch.Tensor:
    """Decode the straight line between the codes of two images.

    x0, x1: (C, S, S) -> (steps, C, S, S). Works for any model with ``encode``/``decode``;
    a VAE's ``encode`` gives the posterior mean, so the line runs between the two means.
    """
    if steps < 2:
        raise ValueError(f"steps must be at least 2 (the two end points), got {steps}")
    z = model.encode(torch.stack([x0, x1]))  # (2, ...)
    if isinstance(z, tuple):  # a VAE's (mu, logvar)
        z = z[0]
    t = torch.linspace(0, 1, steps, device=z.device).view(-1, *[1] * (z.dim() - 1))  # (steps, 1..)
    return model.decode((1 - t) * z[0:1] + t * z[1:2])  # (steps, C, S, S)


# --------------------------------------------------------------------------- training helpers
def _as_dict(out: Any) -> dict[str, torch.Tensor]:
    """A model's ``loss`` output as {name: scalar tensor}, with the optimised one under "loss"."""
    if isinstance(out, torch.Tensor):
        return {"loss": out}
    if hasattr(out, "_asdict"):
        out = out._asdict()
    if isinstance(out, dict) and "loss" in out:
        return out
    raise TypeError("model.loss(x) must return a scalar tensor, a dict with a 'loss' key or a "
                    f"NamedTuple with a 'loss' field; got {type(out).__name__}")


def fit(model: nn.Module, images: torch.Tensor, steps: int, batch_size: int = 64, lr: float = 2e-3,
        generator: torch.Generator | None = None, precision: "Precision | str | None" = "fp32",
        progress: bool = False,
        weight_decay: float = 0.0) -> dict[str, list[float]]:
    """Train ``model`` on ``images`` (N, C, S, S) for ``steps`` Adam steps of random minibatches.

    Minibatches are drawn without replacement within each pass over the data, from
    ``generator`` (fixed seed => same run). The learning rate follows a cosine from ``lr`` to
    ``lr / 10``. Returns the history: {name: [value per step]} for every term ``model.loss``
    reports (at least "loss"). ``precision`` (a ``precision.Precision`` or "auto", "bf16", ...)
    sets the forward's autocast; the default is float32: these small models gain nothing from
    16 bits.
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError("images must be a tensor of shape (N, C, H, W), e.g. DigitsDataset(...).images")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be positive, got steps={steps}, batch_size={batch_size}")
    device = next(model.parameters()).device
    prec = as_precision(precision, device)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=lr / 10)
    history: dict[str, list[float]] = {}
    n = len(images)
    order, pos = torch.randperm(n, generator=generator), 0
    bar = range(steps)
    if progress:
        bar = progress_bar(bar, leave=False)
    model.train()
    for _ in bar:
        if pos + batch_size > n:
            order, pos = torch.randperm(n, generator=generator), 0
        idx = order[pos:pos + batch_size]
        pos += batch_size
        x = images[idx].to(device)  # (B, C, S, S)
        with prec.autocast():
            terms = _as_dict(model.loss(x))
        opt.zero_grad(set_to_none=True)
        prec.backward(terms["loss"].float())
        prec.unscale(opt)
        prec.step(opt)
        sched.step()
        for k, v in terms.items():
            history.setdefault(k, []).append(float(v.detach()))
        if progress:
            bar.set_postfix(loss=f"{history['loss'][-1]:.4f}")
    model.eval()
    return history


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> dict[str, float]:
    """Every term of ``model.loss`` averaged over ``images`` (N, C, S, S), in eval mode, fp32."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    totals: dict[str, float] = {}
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(device)
        for k, v in _as_dict(model.loss(x)).items():
            totals[k] = totals.get(k, 0.0) + float(v) * len(x)
    model.train(was_training)
    return {k: v / len(images) for k, v in totals.items()}
