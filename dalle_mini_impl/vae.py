"""Lesson 02: the variational autoencoder -- latent variables, reparameterisation, the ELBO.

Second rung of the ladder to DALL-E (Ramesh et al. 2021). Section 2 of the paper trains
its whole system by maximising an evidence lower bound; this module is the textbook
Gaussian VAE (Kingma & Welling 2014, arXiv 1312.6114) that the bound comes from. Lesson 03
swaps the Gaussian latent for a categorical one (the dVAE); everything else stays.

Model:  prior p(z) = N(0, I);  encoder q(z|x) = N(mu(x), diag sigma(x)^2);  decoder p(x|z).

ELBO (the negative of what ``VAE.loss`` returns as ``nelbo``)::

    ln p(x) >= E_{q(z|x)}[ln p(x|z)] - KL(q(z|x) || p(z))                       (1)

KL between a diagonal Gaussian and N(0, I), in closed form::

    KL = 1/2 sum_j ( mu_j^2 + sigma_j^2 - 1 - ln sigma_j^2 )                       (2)

Reparameterisation trick: z = mu + sigma * eps with eps ~ N(0, I), so the sample is a
differentiable function of (mu, sigma) and gradients flow through it.

Likelihood. Pixels here are grey values in [0, 1]. A Bernoulli likelihood (binary cross
entropy) is common but is not a density for grey values, so its "bits" mean nothing. We use
a *discretised Gaussian* (as PixelCNN++ does with the logistic): the pixel is read as one of
256 levels k/255, and p(x|z) is the mass a Gaussian N(m, s^2) puts on that level's bin
[x - 1/510, x + 1/510], the end bins stretched to -inf and +inf. The decoder predicts m and
ln s per pixel. This is a proper distribution over the 256 levels, so

    bits/dim = (-ELBO in nats) / (D ln 2)                                           (3)

is an upper bound on the code length per pixel; 8 bits/dim is what storing raw bytes costs.
DALL-E reports its dVAE in the same unit (section 2.1).

``beta`` scales the KL term (Higgins et al. 2017, beta-VAE); ``beta=1`` is the true ELBO.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn
from torch.special import log_ndtr, ndtr

from .autoencoder import (_check_positive, check_images, conv_decoder, conv_encoder, evaluate, fit,
                          interpolate)

__all__ = ["VAEConfig", "VAE", "ELBO", "gaussian_kl", "gaussian_kl_monte_carlo", "reparameterize",
           "discretized_gaussian_log_likelihood", "bits_per_dim", "fit", "evaluate", "interpolate"]

N_LEVELS = 256  # grey levels a pixel is read as (8 bits)
MIN_LOG_SCALE = -7.0  # floor on the decoder's ln s, so a bin's mass stays computable


# --------------------------------------------------------------------------- the math
def _randn(shape, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device, then moved to ``like``'s."""
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, dtype=like.dtype, device=device).to(like.device)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """z = mu + exp(logvar / 2) * eps, eps ~ N(0, I): a differentiable sample of q(z|x)."""
    eps = _randn(mu.shape, generator, mu)
    return mu + torch.exp(0.5 * logvar) * eps  # (B, K)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL( N(mu, diag exp(logvar)) || N(0, I) ) per row, equation (2). (B, K) -> (B,) nats.

    Exactly 0 where mu = 0 and logvar = 0 (posterior equals prior), positive elsewhere.
    """
    if mu.shape != logvar.shape:
        raise ValueError(f"mu {tuple(mu.shape)} and logvar {tuple(logvar.shape)} must have the same shape")
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)


def gaussian_kl_monte_carlo(mu: torch.Tensor, logvar: torch.Tensor, n_samples: int = 10_000,
                            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Monte Carlo estimate of the same KL: the mean of ln q(z) - ln p(z) over z ~ q.

    (B, K) -> (estimate (B,), standard error (B,)); the analytic value should lie within a
    few standard errors of the estimate.
    """
    if n_samples < 2:
        raise ValueError(f"n_samples must be at least 2 to estimate a standard error, got {n_samples}")
    eps = _randn((n_samples, *mu.shape), generator, mu)
    z = mu + torch.exp(0.5 * logvar) * eps  # (S, B, K)
    log_q = (-0.5 * (eps.pow(2) + logvar + math.log(2 * math.pi))).sum(-1)  # (S, B)
    log_p = (-0.5 * (z.pow(2) + math.log(2 * math.pi))).sum(-1)  # (S, B)
    d = log_q - log_p  # (S, B)
    return d.mean(0), d.std(0) / math.sqrt(n_samples)


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor,
                                        n_levels: int = N_LEVELS) -> torch.Tensor:
    """ln p(x | mean, scale) for pixels read as ``n_levels`` grey levels, summed per image.

    x, mean, log_scale: (B, C, H, W); x in [0, 1] is rounded to the nearest level k/(L-1).
    The level's mass is Phi((x + h - m)/s) - Phi((x - h - m)/s) with h = 1/(2(L-1)); the
    lowest level takes everything below its upper edge, the highest everything above its
    lower edge, so the masses of the L levels sum to 1. Returns (B,) nats.
    """
    if x.shape != mean.shape or x.shape != log_scale.shape:
        raise ValueError(f"x {tuple(x.shape)}, mean {tuple(mean.shape)} and log_scale "
                         f"{tuple(log_scale.shape)} must have the same shape")
    if float(x.min()) < 0 or float(x.max()) > 1:
        raise ValueError("pixels must lie in [0, 1]; rescale the images first (e.g. uint8 / 255)")
    x, mean, log_scale = x.float(), mean.float(), log_scale.float()
    k = n_levels - 1
    x = torch.round(x * k) / k  # (B, C, H, W) on the grid of levels
    inv_s = torch.exp(-log_scale)
    half = 0.5 / k
    z_hi = (x + half - mean) * inv_s
    z_lo = (x - half - mean) * inv_s
    log_cdf_hi = log_ndtr(z_hi)  # ln P(X <= upper edge): the lowest level
    log_sf_lo = log_ndtr(-z_lo)  # ln P(X > lower edge): the highest level
    mass = (ndtr(z_hi) - ndtr(z_lo)).clamp_min(1e-12)
    # far in a tail the difference of two CDFs underflows: use density * bin width there
    log_pdf_mid = -0.5 * ((x - mean) * inv_s).pow(2) - log_scale - 0.5 * math.log(2 * math.pi)
    log_mid = torch.where(mass > 1e-5, mass.log(), log_pdf_mid + math.log(1.0 / k))
    logp = torch.where(x < half, log_cdf_hi, torch.where(x > 1 - half, log_sf_lo, log_mid))
    return logp.flatten(1).sum(-1)  # (B,)


def bits_per_dim(nats: torch.Tensor | float, dims: int, pixel_levels: int | None = None,
                 scale: float = 1.0) -> torch.Tensor | float:
    """Equation (3): a code length in nats per image -> bits per pixel-channel.

    ``nats`` is a tensor or a float and the result has the same type. For a *density* over
    pixels in [0, 1] (like lesson 03's logit-Laplace) the discrete NLL of ``pixel_levels``-valued
    pixels is bounded by the density's after adding log2(levels) bits per dimension (each bin
    has width 1/levels); ``scale`` is the Jacobian of any pixel map applied first (the dVAE's
    map_pixels has scale 1 - 2 eps: density(x) = density(y) * scale). The defaults suit a
    likelihood that is already a distribution over the levels, like this module's.
    """
    if dims <= 0:
        raise ValueError(f"dims must be positive (pixels x channels of one image), got {dims}")
    if scale <= 0:
        raise ValueError(f"scale must be positive (a Jacobian), got {scale}")
    bpd = nats / (dims * math.log(2))
    if scale != 1.0:
        bpd = bpd - math.log2(scale)
    if pixel_levels is not None:
        if pixel_levels < 2:
            raise ValueError(f"pixel_levels must be >= 2, got {pixel_levels}")
        bpd = bpd + math.log2(pixel_levels)
    return bpd


# --------------------------------------------------------------------------- the model
class ELBO(NamedTuple):
    """What ``VAE.loss`` returns; every field a scalar averaged over the batch.

    loss = recon + beta * kl (what is optimised); nelbo = recon + kl (the negative ELBO, nats
    per image); recon = -E_q ln p(x|z) (nats per image); kl = KL(q(z|x) || p(z)) (nats per
    image); bits_per_dim = nelbo / (D ln 2).
    """

    loss: torch.Tensor
    nelbo: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor
    bits_per_dim: torch.Tensor


@dataclass
class VAEConfig:
    """Sizes of a Gaussian VAE; the encoder/decoder are lesson 01's conv stacks.

    ``image_size`` must be divisible by ``2**n_down``; ``latent_dim`` is the number of
    Gaussian latent variables; ``beta`` weights the KL term in ``loss`` (1 = the ELBO).
    """

    in_channels: int = 1
    image_size: int = 16
    hidden: int = 32
    n_down: int = 2
    n_res: int = 0
    latent_dim: int = 16
    beta: float = 1.0
    n_levels: int = N_LEVELS

    def __post_init__(self):
        _check_positive(in_channels=self.in_channels, image_size=self.image_size,
                        hidden=self.hidden, latent_dim=self.latent_dim)
        if self.n_down < 0 or self.image_size % 2 ** self.n_down:
            raise ValueError(f"image_size {self.image_size} is not divisible by the downsampling "
                             f"factor 2**n_down = {2 ** self.n_down}: lower n_down or change image_size")
        if not isinstance(self.n_levels, int) or self.n_levels < 2:
            raise ValueError(f"n_levels must be an int >= 2 (grey levels per pixel), got {self.n_levels!r}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")

    @property
    def grid(self) -> int:
        return self.image_size // 2 ** self.n_down

    @property
    def dims(self) -> int:
        """D, the numbers per image: channels x height x width."""
        return self.in_channels * self.image_size ** 2


class VAE(nn.Module):
    """x (B, C, S, S) -> q(z|x) = N(mu, diag exp(logvar)), z (B, K) -> p(x|z) per pixel.

    ``encode`` -> (mu, logvar), each (B, K); ``decode_params`` -> (mean, log_scale), each
    (B, C, S, S); ``decode`` -> the mean image clamped to [0, 1]; ``loss`` -> ``ELBO``;
    ``sample`` decodes draws from the prior.
    """

    def __init__(self, config: VAEConfig | None = None):
        super().__init__()
        self.config = c = config or VAEConfig()
        flat = c.hidden * c.grid ** 2
        self.encoder = nn.Sequential(
            conv_encoder(c.in_channels, c.hidden, c.n_down, c.hidden, c.n_res),  # (B, h, g, g)
            nn.Flatten(), nn.ReLU(), nn.Linear(flat, 2 * c.latent_dim))           # (B, 2K)
        self.decoder = nn.Sequential(
            nn.Linear(c.latent_dim, flat), nn.Unflatten(1, (c.hidden, c.grid, c.grid)),
            conv_decoder(c.hidden, c.hidden, c.n_down, 2 * c.in_channels, c.n_res))  # (B, 2C, S, S)

    def _check_input(self, x: torch.Tensor) -> None:
        check_images(x, self.config.in_channels, self.config.image_size)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_input(x)
        mu, logvar = self.encoder(x).chunk(2, dim=-1)  # (B, K), (B, K)
        return mu, logvar

    def decode_params(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_scale = self.decoder(z).chunk(2, dim=1)  # (B, C, S, S) each
        return mean, log_scale.clamp_min(MIN_LOG_SCALE)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decode_params(z)[0].clamp(0, 1)  # (B, C, S, S) in [0, 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction through the posterior mean (no sampling)."""
        return self.decode(self.encode(x)[0])

    def loss(self, x: torch.Tensor, beta: float | None = None,
             generator: torch.Generator | None = None) -> ELBO:
        """Equation (1) with one reparameterised sample of z per image; see ``ELBO``."""
        beta = self.config.beta if beta is None else beta
        mu, logvar = self.encode(x)  # (B, K) each
        z = reparameterize(mu.float(), logvar.float(), generator)  # (B, K)
        mean, log_scale = self.decode_params(z)  # (B, C, S, S) each
        recon = -discretized_gaussian_log_likelihood(x, mean, log_scale, self.config.n_levels)  # (B,)
        kl = gaussian_kl(mu.float(), logvar.float())  # (B,)
        nelbo = (recon + kl).mean()
        return ELBO(loss=(recon + beta * kl).mean(), nelbo=nelbo, recon=recon.mean(), kl=kl.mean(),
                    bits_per_dim=bits_per_dim(nelbo, self.config.dims))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None,
               temperature: float = 1.0) -> torch.Tensor:
        """Decode n draws z ~ N(0, temperature^2 I) from the prior: (n, C, S, S) mean images."""
        if n < 1:
            raise ValueError(f"n must be positive, got {n}")
        device = next(self.parameters()).device
        z = torch.randn(n, self.config.latent_dim, generator=generator).to(device) * temperature
        return self.decode(z)
