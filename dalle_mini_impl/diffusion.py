"""``diffusion``: denoising diffusion with text conditioning and guidance -- GLIDE in miniature.

Papers: Ho et al. 2020, *Denoising Diffusion Probabilistic Models* (DDPM: the forward process
in closed form, eq. 4; epsilon prediction, eq. 11; the simple loss, eq. 14; ancestral
sampling, algorithm 2); Song et al. 2021, *Denoising Diffusion Implicit Models* (DDIM, eq. 12:
few-step sampling, eta sets how much fresh noise each step adds); Nichol & Dhariwal 2021
(the cosine schedule, section 3.2); Nichol et al. 2021, *GLIDE* (section 2.3 classifier-free
guidance, section 2.4 CLIP guidance, the text encoder's tokens appended to every attention
layer's context, section 3; inpainting, section 4).

The process (x_0 an image scaled to [-1, 1], t = 1..T, abar_t = prod_{s <= t} (1 - beta_s)):

    q(x_t | x_0) = N( sqrt(abar_t) x_0, (1 - abar_t) I )       so x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps
    L_simple     = E_{t, x_0, eps} || eps - eps_theta(x_t, t, c) ||^2
    x0_hat       = (x_t - sqrt(1 - abar_t) eps_theta) / sqrt(abar_t)

Sampling walks a decreasing sequence of timesteps t > s (all T of them, or a few for DDIM):

    x_s = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - sigma^2) eps_theta + sigma z,
    sigma = eta sqrt((1 - abar_s) / (1 - abar_t)) sqrt(1 - abar_t / abar_s)

eta = 0 is the deterministic DDIM sampler; eta = 1 over every step is DDPM's ancestral sampler
with the posterior variance beta~_t (:meth:`GaussianDiffusion.ddpm_sample` writes that one out
with the posterior mean, and the tests check the two agree).

Guidance (GLIDE 2.3, 2.4), both as a change to the predicted noise:

* classifier-free: the model is trained with the caption dropped to the empty caption (all
  padding ids) a fraction of the time; at sampling
  ``eps = eps(x_t | empty) + w (eps(x_t | c) - eps(x_t | empty))``; w = 1 is plain
  conditional sampling (computed as such: exactly the unguided samples), w > 1 trades
  diversity for fidelity to the caption.
* CLIP guidance: a noise-aware CLIP scores (x_t, t) against the caption; its gradient moves
  the mean, ``eps <- eps - s sqrt(1 - abar_t) grad_x (f(x_t, t) . g(c))`` (Dhariwal & Nichol
  2021, eq. 14, the DDIM form of GLIDE's mu + s Sigma grad).

Inpainting by replacement (GLIDE section 4 describes it as the earlier method and fine-tunes
instead; replacement needs no training): after every step the known pixels are overwritten
with the known image noised to the new timestep, and at the end with the image itself, so
the pixels outside the erased region come back unchanged.

The model, :class:`TextUNet`: a small U-Net over 32x32 images (ResBlocks with the timestep
and the pooled caption as a scale and shift of their group norm; self-attention at the
lowest resolution whose keys and values also hold the caption's token features, as GLIDE's
do), and a small transformer text encoder over the course's caption tokenizer. An optional
``embed_dim`` adds a conditioning vector (unCLIP's CLIP image embedding) to the timestep
embedding and, as 4 extra tokens, to the caption tokens attention reads (unCLIP section 2.1).

Latent diffusion (Rombach et al. 2022): with an ``autoencoder`` (lesson 01's, with a spatial
latent: 32x32x3 pixels -> 8x8x4 numbers), the process runs over the autoencoder's latent,
scaled to unit variance, and the samples are decoded to pixels at the end: 12x fewer numbers
to denoise and a U-Net over 8x8 instead of 32x32. Sampling clamps x0_hat to each latent
channel's training range (where pixel sampling clamps to [-1, 1]). Inpainting then replaces in
the latent and pastes the known pixels back over the decoded image, so they too come back
unchanged.
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .autoencoder import Autoencoder, AutoencoderConfig
from .tokenizer import CaptionTokenizer
from .utils import atomic_write_bytes, check_finite, safe_load

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t) -> predicted noise


# --------------------------------------------------------------------------- the process
def cosine_abar(T: int, s: float = 0.008) -> torch.Tensor:
    """abar_t for t = 0..T (index 0 is abar_0 = 1) of Nichol & Dhariwal's cosine schedule,
    betas clipped at 0.999. float64, (T + 1,)."""
    steps = torch.arange(T + 1, dtype=torch.float64)
    f = torch.cos((steps / T + s) / (1 + s) * math.pi / 2) ** 2
    abar = f / f[0]
    betas = (1 - abar[1:] / abar[:-1]).clamp(max=0.999)
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)])


def linear_abar(T: int, beta_1: float = 1e-4, beta_T: float = 0.02) -> torch.Tensor:
    """abar_t for t = 0..T of DDPM's linear schedule (betas 1e-4 .. 0.02 at T = 1000, rescaled
    for other T). float64, (T + 1,)."""
    scale = 1000 / T
    betas = torch.linspace(beta_1 * scale, beta_T * scale, T, dtype=torch.float64)
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)])


class GaussianDiffusion:
    """The forward process, the loss and the samplers for a T-step schedule."""

    def __init__(self, T: int = 1000, schedule: str = "cosine"):
        if T < 1:
            raise ValueError(f"T must be at least 1, got {T}")
        if schedule not in ("cosine", "linear"):
            raise ValueError(f"schedule must be 'cosine' or 'linear', got {schedule!r}")
        self.T, self.schedule = T, schedule
        self.abar64 = cosine_abar(T) if schedule == "cosine" else linear_abar(T)  # (T + 1,)
        self.betas64 = 1 - self.abar64[1:] / self.abar64[:-1]  # (T,): beta_t at index t - 1

    def abar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """abar_t for integer t (B,) broadcast to ``like`` (B, C, H, W)."""
        a = self.abar64.to(like.device)[t.long()].to(like.dtype)
        return a.view(-1, *([1] * (like.dim() - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (DDPM eq. 4)."""
        a = self.abar(t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        a = self.abar(t, x_t)
        return (x_t - (1 - a).sqrt() * eps) / a.sqrt()

    def loss(self, eps_model: Callable[..., torch.Tensor], x0: torch.Tensor, *cond,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """L_simple: the mean squared error of the predicted noise at a uniform t in 1..T.
        ``eps_model(x_t, t, *cond)``; x0 (B, C, H, W) in [-1, 1]."""
        B = x0.shape[0]
        t = torch.randint(1, self.T + 1, (B,), generator=generator).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
        return F.mse_loss(eps_model(self.q_sample(x0, t, noise), t, *cond).float(), noise.float())

    def timesteps(self, steps: int | None) -> list[int]:
        """The decreasing timesteps a sampler visits: all T, or ``steps`` evenly spaced."""
        steps = self.T if steps is None else int(steps)
        if not 1 <= steps <= self.T:
            raise ValueError(f"steps must lie in 1..{self.T}, got {steps}")
        ts = torch.linspace(self.T, 1, steps).round().long().tolist()
        return sorted(set(ts), reverse=True)

    @torch.no_grad()
    def sample(self, eps_fn: EpsFn, shape: tuple[int, ...], steps: int | None = 50, eta: float = 0.0,
               generator: torch.Generator | None = None, device: str | torch.device = "cpu",
               clip_x0: bool | tuple[torch.Tensor, torch.Tensor] = True, known: torch.Tensor | None = None,
               keep: torch.Tensor | None = None, x_T: torch.Tensor | None = None) -> torch.Tensor:
        """DDIM (Song et al. eq. 12) from pure noise to x_0 in [-1, 1].

        ``eps_fn(x_t, t)`` predicts the noise (a guided one too, see :func:`classifier_free`).
        ``eta`` = 0: deterministic DDIM; 1 with ``steps=None``: DDPM's ancestral sampler.
        ``clip_x0`` clamps x0_hat to [-1, 1], or to ``(low, high)`` tensors that broadcast
        against x (a latent's per-channel range), and recomputes the noise from the clamped
        x0_hat. Inpainting: ``known`` (B, C, H, W) in [-1, 1] and ``keep`` (B or 1, 1 or C, H,
        W), 1 where the known pixels are kept; they are replaced after every step."""
        x = (torch.randn(shape, generator=generator).to(device) if x_T is None else x_T.to(device))
        ts = self.timesteps(steps)
        for i, t in enumerate(ts):
            s = ts[i + 1] if i + 1 < len(ts) else 0
            tt = torch.full((shape[0],), t, device=device, dtype=torch.long)
            eps = eps_fn(x, tt).float()
            a_t, a_s = self.abar64[t].item(), self.abar64[s].item()
            x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
            if clip_x0 is not False:
                low, high = (-1.0, 1.0) if clip_x0 is True else (c.to(x.device, x0.dtype) for c in clip_x0)
                x0 = x0.clamp(low, high)
                eps = (x - math.sqrt(a_t) * x0) / math.sqrt(1 - a_t)
            sigma = eta * math.sqrt((1 - a_s) / (1 - a_t)) * math.sqrt(1 - a_t / a_s)
            x = math.sqrt(a_s) * x0 + math.sqrt(max(1 - a_s - sigma ** 2, 0.0)) * eps
            if sigma > 0:
                x = x + sigma * torch.randn(shape, generator=generator).to(device)
            if known is not None:
                x = self._replace(x, known, keep, s, generator)
        return x

    def _replace(self, x, known, keep, s: int, generator) -> torch.Tensor:
        if keep is None:
            raise ValueError("inpainting needs both `known` (the image) and `keep` (1 where its pixels stay)")
        keep = keep.to(x.device, x.dtype)
        if s == 0:
            noised = known.to(x.device, x.dtype)
        else:
            tt = torch.full((x.shape[0],), s, device=x.device, dtype=torch.long)
            noised = self.q_sample(known.to(x.device, x.dtype), tt,
                                   torch.randn(x.shape, generator=generator).to(x.device, x.dtype))
        return keep * noised + (1 - keep) * x

    @torch.no_grad()
    def ddpm_sample(self, eps_fn: EpsFn, shape: tuple[int, ...], generator: torch.Generator | None = None,
                    device: str | torch.device = "cpu", clip_x0: bool = True) -> torch.Tensor:
        """DDPM's ancestral sampler (algorithm 2) through the posterior q(x_{t-1} | x_t, x0_hat):
        mean (sqrt(abar_{t-1}) beta_t x0_hat + sqrt(alpha_t) (1 - abar_{t-1}) x_t) / (1 - abar_t),
        variance beta~_t = beta_t (1 - abar_{t-1}) / (1 - abar_t). Written out for the lesson and
        the tests; :meth:`sample` with eta = 1 and every step draws from the same distribution."""
        x = torch.randn(shape, generator=generator).to(device)
        for t in range(self.T, 0, -1):
            tt = torch.full((shape[0],), t, device=device, dtype=torch.long)
            eps = eps_fn(x, tt).float()
            a_t, a_p, beta = self.abar64[t].item(), self.abar64[t - 1].item(), self.betas64[t - 1].item()
            x0 = (x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
            if clip_x0:
                x0 = x0.clamp(-1, 1)
            mean = (math.sqrt(a_p) * beta * x0 + math.sqrt(1 - beta) * (1 - a_p) * x) / (1 - a_t)
            var = beta * (1 - a_p) / (1 - a_t)
            x = mean + (math.sqrt(var) * torch.randn(shape, generator=generator).to(device) if t > 1 else 0)
        return x


# --------------------------------------------------------------------------- guidance
def classifier_free(eps_model: Callable[..., torch.Tensor], ids: torch.Tensor, null_ids: torch.Tensor,
                    w: float, embed: torch.Tensor | None = None, null_embed: torch.Tensor | None = None) -> EpsFn:
    """The guided noise prediction of GLIDE 2.3 as an ``eps_fn`` for the samplers:
    eps_uncond + w (eps_cond - eps_uncond). ``ids`` (B, T) captions, ``null_ids`` (B, T) the
    empty caption; for a U-Net conditioned on a vector too (unCLIP's decoder), ``embed`` (B, D)
    and the unconditional ``null_embed`` (zeros). w = 1 returns the conditional prediction
    itself (no second pass), so it samples exactly what unguided sampling does; w = 0 the
    unconditional prediction itself (one pass too)."""
    extra = {} if embed is None else {"embed": embed}

    def eps_fn(x, t):
        if w == 1:
            return eps_model(x, t, ids, **extra)
        if w == 0:  # the unconditional prediction alone: one pass
            return eps_model(x, t, null_ids, **({} if embed is None else {
                "embed": torch.zeros_like(embed) if null_embed is None else null_embed}))
        both = {} if embed is None else {"embed": torch.cat([embed, torch.zeros_like(embed) if null_embed is None
                                                             else null_embed])}
        cond, uncond = eps_model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([ids, null_ids]), **both).chunk(2)
        return uncond + w * (cond - uncond)
    return eps_fn


def gradient_guided(eps_fn: EpsFn, diffusion: GaussianDiffusion, score_fn: Callable, scale: float) -> EpsFn:
    """Guidance by the gradient of a differentiable score of the noisy image (GLIDE 2.4 with a
    noise-aware CLIP: ``score_fn(x_t, t)`` -> (B,) image-caption similarity):
    eps - scale sqrt(1 - abar_t) grad_x score (Dhariwal & Nichol 2021, eq. 14)."""
    def guided(x, t):
        eps = eps_fn(x, t)
        if scale == 0:
            return eps
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            grad, = torch.autograd.grad(score_fn(xg, t).sum(), xg)
        return eps - scale * (1 - diffusion.abar(t, x)).sqrt() * grad
    return guided


# --------------------------------------------------------------------------- the model
@dataclass
class UNetConfig:
    image_size: int = 32
    channels: int = 3
    base: int = 32                      # channels at full resolution
    mults: tuple[int, ...] = (1, 2, 2)  # channel multiplier per resolution (32, 16, 8 here)
    attn_levels: tuple[int, ...] = (2,)  # levels (indices of mults) with attention
    heads: int = 4
    text_len: int = 16
    n_text_tokens: int = 0              # the tokenizer's ids: BPE tokens + one pad per position
    d_text: int = 64
    text_layers: int = 2
    embed_dim: int = 0                  # > 0: a conditioning vector (unCLIP's CLIP image embedding)
    dropout: float = 0.0

    def __post_init__(self):
        self.mults = tuple(self.mults)
        self.attn_levels = tuple(self.attn_levels)
        if self.image_size % 2 ** (len(self.mults) - 1):
            raise ValueError(f"image_size {self.image_size} must be divisible by 2^{len(self.mults) - 1}")
        if self.base % 8:
            raise ValueError(f"base must be a multiple of 8 (group norm over 8 groups), got {self.base}")
        if any(not 0 <= level < len(self.mults) for level in self.attn_levels):
            raise ValueError(f"attn_levels {self.attn_levels} must index the {len(self.mults)} resolutions of "
                             f"mults {self.mults} (0 to {len(self.mults) - 1})")


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (B,) -> (B, dim) (the transformer's
    position code, as DDPM uses it)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device) / half)  # (half,)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([args.cos(), args.sin()], dim=-1)


class ResBlock(nn.Module):
    """GN -> SiLU -> conv, then GN scaled and shifted by the embedding -> SiLU -> conv; + skip."""

    def __init__(self, cin: int, cout: int, emb: int, dropout: float):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(8, cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb, 2 * cout)
        self.norm2, self.conv2 = nn.GroupNorm(8, cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.drop = nn.Dropout(dropout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, cout, H, W)
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)  # (B, cout, 1, 1) each
        h = self.conv2(self.drop(F.silu(self.norm2(h) * (1 + scale) + shift)))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Self-attention over the H W positions, the caption's token features appended to the keys
    and values (GLIDE section 3)."""

    def __init__(self, ch: int, d_text: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(8, ch)
        self.qkv = nn.Conv1d(ch, 3 * ch, 1)
        self.text_kv = nn.Linear(d_text, 2 * ch)
        self.out = nn.Conv1d(ch, ch, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x).flatten(2)).chunk(3, dim=1)  # (B, C, HW) each
        tk, tv = self.text_kv(text).transpose(1, 2).chunk(2, dim=1)  # (B, C, T) each
        k, v = torch.cat([k, tk], 2), torch.cat([v, tv], 2)  # (B, C, HW + T)

        def heads(z):  # (B, C, L) -> (B, heads, L, C / heads)
            return z.view(B, self.heads, C // self.heads, -1).transpose(2, 3)
        h = F.scaled_dot_product_attention(heads(q), heads(k), heads(v))  # (B, heads, HW, C / heads)
        return x + self.out(h.transpose(2, 3).reshape(B, C, H * W)).view(B, C, H, W)


class TextUNet(nn.Module):
    """eps_theta(x_t, t, caption ids[, embed]): (B, C, S, S) in [-1, 1] -> (B, C, S, S)."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = cfg = config
        if cfg.n_text_tokens <= 0:
            raise ValueError("UNetConfig.n_text_tokens must be the tokenizer's n_text_tokens")
        emb = 4 * cfg.base
        self.time = nn.Sequential(nn.Linear(cfg.base, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.tok = nn.Embedding(cfg.n_text_tokens, cfg.d_text)
        self.pos = nn.Parameter(torch.randn(cfg.text_len, cfg.d_text) * 0.02)
        layer = nn.TransformerEncoderLayer(cfg.d_text, 4, 4 * cfg.d_text, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.text = nn.TransformerEncoder(layer, cfg.text_layers, enable_nested_tensor=False)
        self.text_ln = nn.LayerNorm(cfg.d_text)
        self.text_pool = nn.Linear(cfg.d_text, emb)
        self.embed = nn.Linear(cfg.embed_dim, emb) if cfg.embed_dim else None
        # unCLIP (Ramesh et al. 2022, section 2.1): the embedding also becomes 4 extra context tokens
        self.embed_tokens = nn.Linear(cfg.embed_dim, 4 * cfg.d_text) if cfg.embed_dim else None
        self.inp = nn.Conv2d(cfg.channels, cfg.base, 3, padding=1)
        chans = [cfg.base * m for m in cfg.mults]
        self.down, self.pool = nn.ModuleList(), nn.ModuleList()
        self.down_attn = nn.ModuleList()
        c = cfg.base
        for i, ch in enumerate(chans):
            self.down.append(ResBlock(c, ch, emb, cfg.dropout))
            self.down_attn.append(AttnBlock(ch, cfg.d_text, cfg.heads) if i in cfg.attn_levels else nn.Identity())
            self.pool.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1) if i < len(chans) - 1 else nn.Identity())
            c = ch
        self.mid1, self.mid2 = ResBlock(c, c, emb, cfg.dropout), ResBlock(c, c, emb, cfg.dropout)
        self.mid_attn = AttnBlock(c, cfg.d_text, cfg.heads)
        self.up, self.up_attn = nn.ModuleList(), nn.ModuleList()
        for i, ch in reversed(list(enumerate(chans))):
            self.up.append(ResBlock(c + ch, ch, emb, cfg.dropout))
            self.up_attn.append(AttnBlock(ch, cfg.d_text, cfg.heads) if i in cfg.attn_levels else nn.Identity())
            c = ch
        self.out = nn.Sequential(nn.GroupNorm(8, c), nn.SiLU(), nn.Conv2d(c, cfg.channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def encode_text(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) ids -> token features (B, T, d_text) and the pooled caption (B, d_text)."""
        h = self.text_ln(self.text(self.tok(ids) + self.pos[: ids.shape[1]]))  # (B, T, d_text)
        return h, h.mean(1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, ids: torch.Tensor,
                embed: torch.Tensor | None = None) -> torch.Tensor:
        tokens, pooled = self.encode_text(ids)
        e = self.time(timestep_embedding(t, self.config.base)) + self.text_pool(pooled)  # (B, emb)
        if self.embed is not None:
            if embed is None:
                raise ValueError("this U-Net is conditioned on an embedding (unCLIP): pass embed=(B, "
                                 f"{self.config.embed_dim})")
            e = e + self.embed(embed)
            tokens = torch.cat([tokens, self.embed_tokens(embed).view(len(embed), 4, -1)], 1)  # (B, T + 4, d_text)
        h = self.inp(x)  # (B, base, S, S)
        skips = []
        for block, attn, pool in zip(self.down, self.down_attn, self.pool):
            h = block(h, e)
            h = attn(h, tokens) if isinstance(attn, AttnBlock) else h
            skips.append(h)
            h = pool(h)
        h = self.mid2(self.mid_attn(self.mid1(h, e), tokens), e)
        for block, attn in zip(self.up, self.up_attn):
            skip = skips.pop()
            if h.shape[-1] != skip.shape[-1]:
                h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = block(torch.cat([h, skip], 1), e)
            h = attn(h, tokens) if isinstance(attn, AttnBlock) else h
        return self.out(h)


# --------------------------------------------------------------------------- the system
SYSTEM_FORMAT = "dalle_mini_impl.diffusion/1"


class DiffusionSystem(nn.Module):
    """Caption tokenizer + :class:`TextUNet` + the T-step process: text to images.

    ``loss(images, captions)`` trains it; ``generate(captions, n, steps, guidance)`` samples
    with DDIM and classifier-free guidance; ``save(dir)`` / ``load(dir)`` write and read a
    directory (config.json, tokenizer.json, unet.pt: tensors only)."""

    def __init__(self, tokenizer, config: UNetConfig, T: int = 1000, schedule: str = "cosine",
                 autoencoder: Autoencoder | None = None, latent_scale: float = 1.0):
        super().__init__()
        if config.n_text_tokens != tokenizer.n_text_tokens or config.text_len != tokenizer.text_len:
            raise ValueError(f"the U-Net expects n_text_tokens={config.n_text_tokens}, text_len={config.text_len}; "
                             f"the tokenizer has {tokenizer.n_text_tokens}, {tokenizer.text_len}")
        if autoencoder is not None:
            ae = autoencoder.config
            if ae.latent_dim is not None or (ae.latent_channels, ae.grid) != (config.channels, config.image_size):
                raise ValueError(f"the U-Net denoises ({config.channels}, {config.image_size}, {config.image_size}); "
                                 f"the autoencoder needs a spatial latent of that shape (latent_dim=None, "
                                 f"latent_channels {config.channels}, grid {config.image_size})")
            autoencoder.requires_grad_(False).eval()
        self.tokenizer, self.config = tokenizer, config
        self.unet = TextUNet(config)
        self.process = GaussianDiffusion(T, schedule)
        self.autoencoder, self.latent_scale = autoencoder, float(latent_scale)
        self.latent_range: tuple[list[float], list[float]] | None = None  # see fit_latent_range

    def fit_latent_range(self, latents: torch.Tensor) -> None:
        """Remember each latent channel's (min, max) over the training latents (N, c, g, g), in
        the process's space. Sampling clamps x0_hat to it, as pixel sampling clamps to [-1, 1]:
        on shapes a latent is heavy-tailed (most cells background near 0, object cells up to 8
        standard deviations), so [-1, 1] would dim every object, and no clamp at all let the
        first, noisiest predictions run away (50 steps, 4,000 training steps: caption accuracy
        0.98-1.00 with the range, 0.53-0.83 with +-3, noise without)."""
        self.latent_range = (latents.float().amin(dim=(0, 2, 3)).tolist(), latents.float().amax(dim=(0, 2, 3)).tolist())

    def _x0_clamp(self):
        if self.autoencoder is None:
            return True  # pixels: [-1, 1]
        if self.latent_range is None:
            return False
        low, high = (torch.tensor(v)[None, :, None, None] for v in self.latent_range)
        return low, high

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, S, S) of the images the system draws (pixels, also for a latent system)."""
        if self.autoencoder is None:
            return self.config.channels, self.config.image_size, self.config.image_size
        ae = self.autoencoder.config
        return ae.in_channels, ae.image_size, ae.image_size

    @torch.no_grad()
    def to_space(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> what the process runs on: pixels in [-1, 1], or the scaled latent."""
        images = images.to(self.device)
        if self.autoencoder is None:
            return images * 2 - 1
        return self.autoencoder.encode(images).float() * self.latent_scale  # (B, c, g, g)

    @torch.no_grad()
    def from_space(self, x: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`to_space`: images in [0, 1]."""
        if self.autoencoder is None:
            return ((x + 1) / 2).clamp(0, 1)
        return self.autoencoder.decode(x / self.latent_scale).float().clamp(0, 1)

    @property
    def device(self) -> torch.device:
        return self.unet.pos.device

    def encode_text(self, captions) -> torch.Tensor:
        if isinstance(captions, str):
            captions = [captions]
        return self.tokenizer.encode(list(captions)).to(self.device)  # (B, T)

    def null_ids(self, batch: int) -> torch.Tensor:
        """The empty caption (every position padding), (batch, T)."""
        return self.tokenizer.pad_ids(self.config.text_len).to(self.device).expand(batch, -1)

    def loss(self, images: torch.Tensor, text_ids: torch.Tensor, generator: torch.Generator | None = None,
             embed: torch.Tensor | None = None) -> torch.Tensor:
        """L_simple on images (B, C, S, S) in [0, 1] and caption ids (B, T)."""
        return self.loss_in_space(self.to_space(images), text_ids, generator, embed)

    def loss_in_space(self, x0: torch.Tensor, text_ids: torch.Tensor, generator: torch.Generator | None = None,
                      embed: torch.Tensor | None = None) -> torch.Tensor:
        """L_simple on x0 already in the process's space (:meth:`to_space`): a latent system's
        training encodes its images once and trains on the stored latents."""
        extra = () if embed is None else (embed,)
        return self.process.loss(self.unet, x0.to(self.device), text_ids.to(self.device), *extra,
                                 generator=generator)

    @torch.no_grad()
    def generate(self, captions, n: int = 1, steps: int = 50, guidance: float = 1.0, eta: float = 1.0,
                 seed: int | None = 0, batch_size: int = 64, known: torch.Tensor | None = None,
                 keep: torch.Tensor | None = None, clip_guide=None, clip_scale: float = 0.0,
                 embeds: torch.Tensor | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` images per caption, (len(captions) n, C, S, S) in [0, 1], caption-major.
        ``steps`` sampling steps; ``eta`` 1 (the default) adds DDPM's fresh noise at each step, 0 is
        deterministic DDIM (on a small model trained for 2,000 steps, eta 0 left a grain of noise
        over the background that eta 1 removes: see the README's results table); ``guidance`` w:
        classifier-free guidance (1: plain conditional sampling). Inpainting: ``known`` images in
        [0, 1] (one per output image) and ``keep`` (1 where their pixels stay).

        CLIP guidance (GLIDE 2.4): ``clip_guide`` a :class:`noisy_clip.NoisyCLIP` of this system's
        space, ``clip_scale`` s. unCLIP's decoder (a U-Net with ``embed_dim``): ``embeds`` (one
        (D,) vector per caption; ``captions`` may then be None), guided against the zero vector.
        ``noise``: the starting x_T in the process's space, one per output image (interpolation
        keeps it fixed)."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        if (embeds is None) != (self.unet.embed is None):
            raise ValueError("this U-Net is conditioned on an embedding (unCLIP's decoder): pass embeds=(B, D)"
                             if embeds is None else "embeds given, but this U-Net takes no embedding (embed_dim 0)")
        if captions is None:
            if embeds is None:
                raise ValueError("captions=None needs embeds (one per image to draw)")
            ids = self.null_ids(len(embeds)).repeat_interleave(n, dim=0)
        else:
            ids = self.encode_text(captions).repeat_interleave(n, dim=0)  # (B n, T)
        emb = None if embeds is None else embeds.to(self.device).float().repeat_interleave(n, dim=0)  # (B n, D)
        if emb is not None and len(emb) != len(ids):
            raise ValueError(f"{len(emb) // n} embeddings for {len(ids) // n} captions")
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        was = self.training
        self.eval()
        c, s = self.config.channels, self.config.image_size
        out = []
        for i in range(0, len(ids), batch_size):
            chunk = ids[i:i + batch_size]
            eps = classifier_free(self.unet, chunk, self.null_ids(len(chunk)), guidance,
                                  None if emb is None else emb[i:i + batch_size])
            if clip_guide is not None and clip_scale:
                if captions is None:
                    raise ValueError("CLIP guidance needs the captions")
                caps = [c_ for c_ in ([captions] if isinstance(captions, str) else captions) for _ in range(n)]
                text = clip_guide.encode_text(caps[i:i + batch_size]).to(self.device)
                eps = gradient_guided(eps, self.process, lambda x, t, e=text: clip_guide.similarity(x, t, e),
                                      clip_scale)
            k = None if known is None else self.to_space(known[i:i + batch_size])
            kp = None if keep is None else (keep[i:i + batch_size] if keep.shape[0] > 1 else keep)
            if kp is not None and self.autoencoder is not None:  # the pixel mask on the latent grid:
                kp = (F.adaptive_avg_pool2d(kp.float(), s) > 0.999).float()  # cells wholly known
            x_T = None if noise is None else noise[i:i + batch_size]
            x = self.from_space(self.process.sample(eps, (len(chunk), c, s, s), steps, eta, g, self.device,
                                                    clip_x0=self._x0_clamp(), known=k, keep=kp, x_T=x_T))
            if known is not None and self.autoencoder is not None:  # the known pixels themselves
                full = keep[i:i + batch_size] if keep.shape[0] > 1 else keep
                x = torch.where(full.to(x.device).bool(), known[i:i + batch_size].to(x.device), x)
            out.append(x)
        self.train(was)
        return torch.cat(out).cpu()

    def save(self, path, weights_dtype: torch.dtype | None = None) -> Path:
        """Write the system into directory ``path``; ``weights_dtype`` (e.g. torch.float16) stores
        the U-Net's floating weights smaller (they are read back as float32)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        check_finite(self.unet.state_dict(), f"saving {path / 'unet.pt'}")
        unet = {k: v.to(weights_dtype) if weights_dtype is not None and v.is_floating_point() else v
                for k, v in self.unet.state_dict().items()}
        buf = io.BytesIO()
        torch.save({"format": SYSTEM_FORMAT, "unet": unet,
                    "autoencoder": None if self.autoencoder is None else self.autoencoder.state_dict()}, buf)
        atomic_write_bytes(path / "unet.pt", buf.getvalue())
        self.tokenizer.save(path / "tokenizer.json")
        meta = {"format": SYSTEM_FORMAT, "unet": asdict(self.config), "T": self.process.T,
                "schedule": self.process.schedule, "latent_scale": self.latent_scale,
                "latent_range": self.latent_range,
                "autoencoder": None if self.autoencoder is None else asdict(self.autoencoder.config)}
        atomic_write_bytes(path / "config.json", (json.dumps(meta, indent=2) + "\n").encode())
        return path

    @classmethod
    def load(cls, path, device: str | torch.device = "cpu") -> "DiffusionSystem":
        path = Path(path)
        for name in ("config.json", "tokenizer.json", "unet.pt"):
            if not (path / name).is_file():
                raise FileNotFoundError(f"{path} is not a diffusion system directory (no {name}): train one with "
                                        "`python -m dalle_mini_impl.training diffusion --out DIR`")
        meta = json.loads((path / "config.json").read_text())
        if meta.get("format") != SYSTEM_FORMAT:
            raise ValueError(f"{path}/config.json has format {meta.get('format')!r}, expected {SYSTEM_FORMAT!r}")
        state = safe_load(path / "unet.pt")
        ae = None
        if meta.get("autoencoder"):
            ae = Autoencoder(AutoencoderConfig(**meta["autoencoder"]))
            ae.load_state_dict(state["autoencoder"])
        model = cls(CaptionTokenizer.load(path / "tokenizer.json"), UNetConfig(**meta["unet"]), meta["T"],
                    meta["schedule"], autoencoder=ae, latent_scale=meta.get("latent_scale", 1.0))
        if meta.get("latent_range"):
            model.latent_range = tuple(meta["latent_range"])
        model.unet.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state["unet"].items()})
        return model.to(device).eval()
