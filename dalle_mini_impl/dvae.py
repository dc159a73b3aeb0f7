"""The discrete VAE: DALL-E's image tokenizer (stage 1).

Paper: Ramesh et al. 2021, section 2.1 and appendix A (architecture A.1, training A.2,
logit-Laplace likelihood A.3).

An encoder turns an image into K logits per grid cell (256x256 -> 32x32 cells, K = 8192 in
the paper); a categorical q_phi(z | x) per cell picks one of K codes; the decoder reads each
chosen code's vector from a learned codebook and paints the image back. Training can't
backpropagate through a discrete choice, so it uses the gumbel-softmax relaxation
(Jang et al. 2016; Maddison et al. 2016):

    z = softmax((logits + g) / tau),   g_k = -ln(-ln u_k),  u_k ~ U(0, 1)

a point on the simplex that tends to a one-hot sample of q as tau -> 0. The decoder reads
the soft mixture sum_k z_k e_k of codebook vectors. At stage 2 the paper encodes with the
argmax of the logits, no noise (``encode``).

Likelihood (A.3, eq. 2-3): pixels are squeezed into (eps, 1 - eps) by ``map_pixels``
(eps = 0.1) and modelled with the logit-Laplace density

    f(x | mu, b) = 1 / (2 b x (1 - x)) * exp(-|logit(x) - mu| / b),   x in (0, 1),

whose support matches the pixels' bounded range; the decoder outputs mu and ln b for every
channel (6 output channels for RGB), and the reconstruction is x = unmap(sigmoid(mu)).
Mean squared error is kept as the simpler baseline.

Architecture (A.1): the encoder and decoder are stacks of bottleneck resblocks in groups
(pool after each group but the last / upsample after each group but the last); each block
is id_path(x) + post_gain * res_path(x) with post_gain = 1 / n_layers^2. With
``DVAEConfig.paper()`` the modules are weight-compatible with OpenAI's released dVAE
(``pip install DALL-E``: ``dall_e.Encoder`` / ``dall_e.Decoder``); ``dvae_openai.from_openai``
converts their state dicts (or their pickled files) and gives the same outputs. Their
decoder's first layer, a 1x1 conv applied to a one-hot (B, K, h, w) map, *is* a lookup table:
here it is the ``codebook`` (its bias folded into every row, since a one-hot or soft one-hot
sums to 1).
"""
from __future__ import annotations

import math
import os
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .elb import ELBTerms, elb_stage1
from .precision import Precision, as_precision
from .utils import data_dir, load_checkpoint, save_checkpoint

__all__ = ["LOGIT_LAPLACE_EPS", "DVAEConfig", "DiscreteVAE", "map_pixels", "unmap_pixels",
           "logit_laplace_log_prob", "logit_laplace_nll", "mse_nll", "gumbel_softmax",
           "dvae_loss", "dequantize", "train_step", "decoder_step", "load_pretrained_toy", "TOY_CHECKPOINT"]

LOGIT_LAPLACE_EPS = 0.1  # eq. 3
TOY_CHECKPOINT = "dvae_shapes_toy/dvae.pt"  # under data/


# --------------------------------------------------------------------------- pixels and likelihoods
def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def map_pixels(x: torch.Tensor, eps: float = LOGIT_LAPLACE_EPS) -> torch.Tensor:
    """Eq. 3: x in [0, 1] -> (1 - 2 eps) x + eps in [eps, 1 - eps]."""
    return (1 - 2 * eps) * x + eps


def unmap_pixels(y: torch.Tensor, eps: float = LOGIT_LAPLACE_EPS) -> torch.Tensor:
    """Inverse of ``map_pixels``, clamped to [0, 1]."""
    return ((y - eps) / (1 - 2 * eps)).clamp(0.0, 1.0)


def logit_laplace_log_prob(y: torch.Tensor, mu: torch.Tensor, ln_b: torch.Tensor) -> torch.Tensor:
    """Elementwise ln f(y | mu, b) of the logit-Laplace density (eq. 2), y in (0, 1):
    -ln(2 b) - ln y - ln(1 - y) - |logit(y) - mu| / b."""
    return (-math.log(2.0) - ln_b - torch.log(y) - torch.log1p(-y)
            - (torch.logit(y) - mu).abs() * torch.exp(-ln_b))


def logit_laplace_nll(x: torch.Tensor, stats: torch.Tensor, eps: float = LOGIT_LAPLACE_EPS) -> torch.Tensor:
    """-ln p(x | z) per image (nats), (B,), for pixels x in [0, 1] (mapped by eq. 3 inside)
    and decoder output ``stats`` (B, 2C, H, W) = [mu, ln b]."""
    c = x.shape[1]
    stats = stats.float()
    return -logit_laplace_log_prob(map_pixels(x, eps), stats[:, :c], stats[:, c:]).flatten(1).sum(1)


def mse_nll(x: torch.Tensor, stats: torch.Tensor, sigma: float = 0.1) -> torch.Tensor:
    """The simpler baseline: a Gaussian of fixed std ``sigma`` around x_hat = mu, per image
    (nats), (B,). Up to a constant it is sum (x - x_hat)^2 / (2 sigma^2), i.e. MSE.

    mu is used as it is, with no sigmoid: on mostly-black images a sigmoid output is driven
    deep into saturation by the background within a few dozen updates, and then the few
    coloured pixels get no gradient at all (the decoder stays stuck painting black)."""
    c = x.shape[1]
    x_hat = stats.float()[:, :c]
    nll = 0.5 * ((x - x_hat) / sigma) ** 2 + math.log(sigma * math.sqrt(2 * math.pi))
    return nll.flatten(1).sum(1)


# --------------------------------------------------------------------------- gumbel-softmax
def gumbel_softmax(logits: torch.Tensor, tau: float = 1.0, hard: bool = False, dim: int = 1,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """softmax((logits + g) / tau) with g ~ Gumbel(0, 1); ``hard`` returns the one-hot of its
    argmax in the forward pass and the soft sample's gradient (straight-through).
    Same distribution as ``torch.nn.functional.gumbel_softmax``, with an optional generator."""
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float32)
    g = -torch.log(-torch.log(u.clamp(1e-10, 1.0 - 1e-7)))
    y = F.softmax((logits.float() + g) / tau, dim=dim)
    if not hard:
        return y
    index = y.argmax(dim, keepdim=True)
    y_hard = torch.zeros_like(y).scatter_(dim, index, 1.0)
    return y_hard - y.detach() + y


# --------------------------------------------------------------------------- architecture
@dataclass
class DVAEConfig:
    """Sizes of a dVAE. ``toy()`` is the CPU lesson's; ``paper()`` is DALL-E's (A.1)."""

    image_size: int = 32     # pixels per side
    grid: int = 8            # tokens per side: image_size / grid must be a power of two
    n_codes: int = 512       # K, the codebook size
    channels: int = 3        # image channels
    n_hid: int = 32          # width of the first encoder group (doubles per group)
    n_blk_per_group: int = 1
    codebook_dim: int = 64   # width of a codebook vector (OpenAI's decoder n_init)
    likelihood: str = "logit_laplace"  # or "mse"

    def __post_init__(self):
        ratio = self.image_size / self.grid if self.grid > 0 else 0
        if self.grid <= 0 or ratio != int(ratio) or int(ratio) & (int(ratio) - 1) != 0:
            raise ValueError(f"image_size / grid must be a power of two (1, 2, 4, 8, ...); "
                             f"got {self.image_size} / {self.grid}")
        if self.n_codes < 2:
            raise ValueError(f"n_codes must be >= 2, got {self.n_codes}")
        if self.likelihood not in ("logit_laplace", "mse"):
            raise ValueError(f"likelihood must be 'logit_laplace' or 'mse', got {self.likelihood!r}")
        if self.n_hid % 4:
            raise ValueError(f"n_hid must be a multiple of 4 (bottleneck = width / 4), got {self.n_hid}")

    @property
    def n_groups(self) -> int:
        """log2(image_size / grid) pooling steps + 1 (4 in the paper: 256 -> 32)."""
        return int(math.log2(self.image_size // self.grid)) + 1

    @classmethod
    def toy(cls, **changes) -> "DVAEConfig":
        """The CPU lesson: 32x32 images -> 8x8 tokens from 512 codes, MSE likelihood.

        MSE, not the paper's logit-Laplace: on the shapes (mostly exactly-black pixels) the
        logit-Laplace density spends the model on the black background's dequantization noise
        (its NLL keeps falling while the reconstruction stays blurry); lesson 04 compares the two."""
        base = dict(likelihood="mse")
        base.update(changes)
        return cls(**base)

    @classmethod
    def paper(cls, **changes) -> "DVAEConfig":
        """DALL-E's dVAE (A.1): 256x256 -> 32x32 tokens from 8192 codes, 4 groups of 2
        resblocks, widths 256-2048, codebook vectors of 128."""
        base = dict(image_size=256, grid=32, n_codes=8192, channels=3, n_hid=256,
                    n_blk_per_group=2, codebook_dim=128)
        base.update(changes)
        return cls(**base)


def _conv(n_in: int, n_out: int, kw: int) -> nn.Conv2d:
    """A same-padded conv with OpenAI's init: weights N(0, 1 / fan_in), zero bias."""
    conv = nn.Conv2d(n_in, n_out, kw, padding=(kw - 1) // 2)
    nn.init.normal_(conv.weight, std=1.0 / math.sqrt(n_in * kw * kw))
    nn.init.zeros_(conv.bias)
    return conv


class ResBlock(nn.Module):
    """Bottleneck resblock (A.1): id_path(x) + post_gain * res_path(x), post_gain = 1/n_layers^2.

    ``kernels`` (3, 3, 3, 1) for the encoder, (1, 3, 3, 3) for the decoder; the bottleneck is
    n_out / 4 wide; id_path is a 1x1 conv when the width changes.
    """

    def __init__(self, n_in: int, n_out: int, n_layers: int, kernels: tuple[int, int, int, int]):
        super().__init__()
        n_hid = n_out // 4
        self.post_gain = 1.0 / n_layers ** 2
        self.id_path = _conv(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        widths = [n_in, n_hid, n_hid, n_hid, n_out]
        layers = []
        for i, kw in enumerate(kernels):
            layers += [(f"relu_{i + 1}", nn.ReLU()), (f"conv_{i + 1}", _conv(widths[i], widths[i + 1], kw))]
        self.res_path = nn.Sequential(OrderedDict(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.id_path(x) + self.post_gain * self.res_path(x)


class Encoder(nn.Module):
    """image (B, C, S, S) -> logits (B, K, S/2^(G-1), S/2^(G-1)). Groups have widths
    n_hid * (1, 2, 4, 8); the last 1x1 conv to K logits runs in float32 (as OpenAI's does)."""

    def __init__(self, cfg: DVAEConfig):
        super().__init__()
        G, nb, h = cfg.n_groups, cfg.n_blk_per_group, cfg.n_hid
        n_layers = G * nb
        self.input = _conv(cfg.channels, h, 7)
        groups, width = [], h
        for g in range(G):
            out = h * 2 ** g
            blocks = [(f"block_{i + 1}", ResBlock(width if i == 0 else out, out, n_layers, (3, 3, 3, 1)))
                      for i in range(nb)]
            if g < G - 1:
                blocks.append(("pool", nn.MaxPool2d(kernel_size=2)))  # S -> S / 2
            groups.append((f"group_{g + 1}", nn.Sequential(OrderedDict(blocks))))
            width = out
        self.groups = nn.Sequential(OrderedDict(groups))
        self.relu = nn.ReLU()
        self.logits = _conv(width, cfg.n_codes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.groups(self.input(x))  # (B, 8 n_hid, grid, grid) in the paper
        with torch.autocast(device_type=h.device.type, enabled=False):
            return self.logits(self.relu(h).float())  # (B, K, grid, grid)


class Decoder(nn.Module):
    """codebook vectors (B, D, g, g) -> stats (B, 2C, S, S) = [mu, ln b] per channel."""

    def __init__(self, cfg: DVAEConfig):
        super().__init__()
        G, nb, h = cfg.n_groups, cfg.n_blk_per_group, cfg.n_hid
        n_layers = G * nb
        groups, width = [], cfg.codebook_dim
        for g in range(G):
            out = h * 2 ** (G - 1 - g)
            blocks = [(f"block_{i + 1}", ResBlock(width if i == 0 else out, out, n_layers, (1, 3, 3, 3)))
                      for i in range(nb)]
            if g < G - 1:
                blocks.append(("upsample", nn.Upsample(scale_factor=2, mode="nearest")))  # g -> 2g
            groups.append((f"group_{g + 1}", nn.Sequential(OrderedDict(blocks))))
            width = out
        self.groups = nn.Sequential(OrderedDict(groups))
        self.relu = nn.ReLU()
        self.output = _conv(width, 2 * cfg.channels, 1)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.output(self.relu(self.groups(e)))  # (B, 2C, S, S)


class DiscreteVAE(nn.Module):
    """Encoder + codebook + decoder. Public API for later lessons:

    * ``encode(images) -> (B, grid, grid) long`` (argmax of the logits, no noise)
    * ``decode(ids) -> (B, C, S, S)`` images in [0, 1]
    * ``forward(images, tau, hard)`` for training: gumbel-softmax sample, reconstruction stats
    * ``save(path)`` / ``DiscreteVAE.load(path)``; ``config`` holds image_size, grid, n_codes.
    """

    def __init__(self, config: DVAEConfig | None = None):
        super().__init__()
        self.config = config or DVAEConfig.toy()
        cfg = self.config
        self.encoder = Encoder(cfg)
        self.codebook = nn.Embedding(cfg.n_codes, cfg.codebook_dim)  # (K, D): what the decoder reads
        # N(0, 1) rows (nn.Embedding's default): distinct codes from the first step. (OpenAI's
        # 1x1-conv init, std 1/sqrt(K), starts all codes near zero; on the small toy that lets
        # training collapse onto one code before the codes become distinguishable.)
        nn.init.normal_(self.codebook.weight, std=1.0)
        self.decoder = Decoder(cfg)

    # -- checks
    def _check_images(self, images: torch.Tensor) -> None:
        cfg = self.config
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != cfg.channels \
                or images.shape[2] != images.shape[3]:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"expected images of shape (B, {cfg.channels}, S, S), got {shape}")
        if images.shape[2] % (2 ** (cfg.n_groups - 1)):
            raise ValueError(f"image side {images.shape[2]} must be a multiple of "
                             f"{2 ** (cfg.n_groups - 1)} (this dVAE downsamples that much)")
        if not images.is_floating_point():
            raise TypeError(f"images must be float in [0, 1], got {images.dtype}; "
                            "divide uint8 images by 255")

    # -- the pieces
    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Encoder logits of q_phi(z | x): images (B, C, S, S) in [0, 1] -> (B, K, g, g)."""
        self._check_images(images)
        return self.encoder(map_pixels(images))

    def embed(self, z: torch.Tensor) -> torch.Tensor:
        """Read the codebook: soft one-hots (B, K, g, g) or ids (B, g, g) -> (B, D, g, g)."""
        if z.dtype in (torch.int64, torch.int32):
            return self.codebook(z.long()).permute(0, 3, 1, 2)  # (B, g, g, D) -> (B, D, g, g)
        return torch.einsum("bkhw,kd->bdhw", z.float(), self.codebook.weight)

    def decode_stats(self, z: torch.Tensor) -> torch.Tensor:
        """Decoder output (B, 2C, S, S) = [mu, ln b] from ids or soft one-hots."""
        return self.decoder(self.embed(z))

    def reconstruct(self, stats: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] from decoder stats: unmap(sigmoid(mu)) (or mu clamped to [0, 1] for MSE)."""
        mu = stats.float()[:, : self.config.channels]
        if self.config.likelihood == "mse":
            return mu.clamp(0.0, 1.0)
        return unmap_pixels(torch.sigmoid(mu))

    def nll(self, images: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
        """-ln p_theta(x | z) per image (B,), with the configured likelihood."""
        if self.config.likelihood == "mse":
            return mse_nll(images, stats)
        return logit_laplace_nll(images, stats)

    # -- public API
    # Inference runs in batches of 64 with channels-last inputs: on a CPU that is 2-3x faster
    # than one big contiguous batch (oneDNN's convolutions; measured 1,280 against 465 images/s
    # on one thread) and gives bit-identical outputs.
    @torch.no_grad()
    def encode(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Images (B, C, S, S) in [0, 1] -> token ids (B, g, g), the argmax of q (no noise)."""
        self._check_images(images)
        dev = next(self.parameters()).device
        out = [self.logits(_channels_last(images[i:i + batch_size].to(dev))).argmax(1)
               for i in range(0, len(images), batch_size)]
        return torch.cat(out) if out else torch.empty(0, self.config.grid, self.config.grid, dtype=torch.long)

    @torch.no_grad()
    def decode(self, ids: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Token ids (B, g, g) -> images (B, C, S, S) in [0, 1]."""
        if not isinstance(ids, torch.Tensor) or ids.ndim != 3 or ids.dtype not in (torch.int64, torch.int32):
            raise ValueError("decode expects token ids as an integer tensor of shape (B, grid, grid), got "
                             f"{tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.config.n_codes):
            raise ValueError(f"token ids must lie in [0, {self.config.n_codes}), got "
                             f"[{int(ids.min())}, {int(ids.max())}]")
        dev = next(self.parameters()).device
        out = [self.reconstruct(self.decoder(_channels_last(self.embed(ids[i:i + batch_size].to(dev)))))
               for i in range(0, len(ids), batch_size)]
        return torch.cat(out).contiguous()

    def forward(self, images: torch.Tensor, tau: float = 1.0, hard: bool = False,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Training pass: logits -> gumbel-softmax z (soft, or straight-through ``hard``) ->
        decoder stats. Returns dict(logits (B,K,g,g), z (B,K,g,g), stats (B,2C,S,S))."""
        logits = self.logits(images)  # (B, K, g, g)
        z = gumbel_softmax(logits, tau=tau, hard=hard, dim=1, generator=generator)  # (B, K, g, g)
        return {"logits": logits, "z": z, "stats": self.decode_stats(z)}

    # -- saving
    def save(self, path: str | os.PathLike, step: int = 0, extra: dict | None = None) -> Path:
        """Weights and config only (small); ``training/dvae.py`` writes resumable checkpoints."""
        return save_checkpoint(path, model=self, config=self.config, step=step, extra=extra, rng=False)

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> "DiscreteVAE":
        """A dVAE from a checkpoint written by ``save`` or by ``python -m dalle_mini_impl.training dvae``."""
        state = load_checkpoint(path, map_location=map_location)
        cfg = state.get("config")
        if not isinstance(cfg, dict) or "n_codes" not in cfg:
            raise ValueError(f"{path} is not a dVAE checkpoint (its config has no n_codes)")
        model = cls(DVAEConfig(**cfg)).to(map_location)
        model.load_state_dict(state["model"])
        return model.eval()


def load_pretrained_toy(map_location: str | torch.device = "cpu") -> DiscreteVAE:
    """The shipped CPU-toy dVAE (32x32 shapes -> 8x8 tokens, 512 codes), trained by the command
    in data/dvae_shapes_toy/README.md."""
    path = data_dir() / TOY_CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"no shipped toy dVAE at {path}; train it with the command in "
                                "data/dvae_shapes_toy/README.md")
    return DiscreteVAE.load(path, map_location)


# --------------------------------------------------------------------------- training
def dequantize(images: torch.Tensor, levels: int = 256, generator: torch.Generator | None = None) -> torch.Tensor:
    """Spread each 8-bit pixel value uniformly over its bin: (x (levels - 1) + u) / levels.

    A density fitted to exactly repeated values (a black background is exactly 0) can grow
    without bound; on dequantized pixels its NLL is an honest upper bound on the discrete
    NLL (Theis et al. 2016), so bits/dim mean something."""
    u = torch.rand(images.shape, generator=generator, device=images.device, dtype=images.dtype)
    return (images * (levels - 1) + u) / levels


def dvae_loss(model: DiscreteVAE, images: torch.Tensor, tau: float, beta: float, hard: bool = False,
              generator: torch.Generator | None = None, dequantize_target: bool = True,
              usage_weight: float = 0.0, usage_sharpness: float = 0.1
              ) -> tuple[ELBTerms, dict[str, torch.Tensor]]:
    """The stage-1 objective (eq. 1 with the uniform prior) on one batch of images in [0, 1]:
    the encoder sees the images, the likelihood scores their dequantized version.
    ``usage_weight`` > 0 adds the codebook-usage term of ``elb.usage_kl`` (not in the paper)."""
    out = model(images, tau=tau, hard=hard, generator=generator)
    target = dequantize(images, generator=generator) if dequantize_target else images
    terms = elb_stage1(model.nll(target, out["stats"]), out["logits"], beta=beta,
                       n_dims=images[0].numel(), usage_weight=usage_weight, usage_sharpness=usage_sharpness)
    return terms, out


def _update(model: DiscreteVAE, optimizer: torch.optim.Optimizer, loss: torch.Tensor, clip: float | None,
            prec: Precision) -> bool:
    """Backward, optional gradient clipping at ``clip``, optimizer step (both dVAE stages).
    A non-finite gradient skips the step (``Precision.step``); returns whether it was applied."""
    optimizer.zero_grad(set_to_none=True)
    prec.backward(loss)
    prec.unscale(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip if clip is not None else float("inf"))
    return prec.step(optimizer, norm)


def _set_lr(optimizer: torch.optim.Optimizer, lr: float | None) -> None:
    if lr is not None:
        for group in optimizer.param_groups:
            group["lr"] = lr


def train_step(model: DiscreteVAE, optimizer: torch.optim.Optimizer, images: torch.Tensor, tau: float,
               beta: float, lr: float | None = None, precision: Precision | str | None = None,
               generator: torch.Generator | None = None, clip: float | None = 1.0,
               usage_weight: float = 0.0, usage_sharpness: float = 0.1) -> dict[str, float]:
    """One update: forward (under ``precision``'s autocast: a ``precision.Precision``, a name,
    or None for the package's policy -- bf16 where the device computes it natively, else
    float32), ELB loss (+ the optional usage term), backward, step (skipped if a gradient is
    non-finite).

    Returns the floats worth logging: loss, recon_nll, kl, usage (when used), tau, beta, the
    batch MSE of the relaxed reconstruction, and ``skipped`` (1.0 if the update was skipped).
    """
    prec = as_precision(precision, images.device)
    model.train()
    _set_lr(optimizer, lr)
    with prec.autocast():
        terms, out = dvae_loss(model, images, tau, beta, generator=generator,
                               usage_weight=usage_weight, usage_sharpness=usage_sharpness)
    applied = _update(model, optimizer, terms.loss, clip, prec)
    with torch.no_grad():
        mse = F.mse_loss(model.reconstruct(out["stats"].float()), images).item()
    rec = {"loss": terms.loss.item(), "recon_nll": terms.recon_nll.item(), "kl": terms.kl.item(),
           "tau": float(tau), "beta": float(beta), "mse": mse, "skipped": float(not applied)}
    if terms.usage is not None:
        rec["usage"] = terms.usage.item()
    return rec


def decoder_step(model: DiscreteVAE, optimizer: torch.optim.Optimizer, ids: torch.Tensor, images: torch.Tensor,
                 lr: float | None = None, precision: Precision | str | None = None,
                 clip: float | None = 1.0) -> dict[str, float]:
    """One update of the decoder and the codebook on *hard* tokens (not in the paper).

    Training decodes relaxed one-hots (a gumbel-softmax mixture of codebook vectors); at
    sampling time the decoder reads single codes. Even at tau = 1/16 that gap shows on small
    details: the toy dVAE drew small diamonds and squares with rounded corners from its own
    argmax tokens. A short second stage with the encoder frozen (``ids`` = its argmax tokens
    of ``images``) fits the decoder to exactly what the prior will hand it. The tokens do not
    change, so a prior trained on them stays valid. Encoder parameters get no gradient (an
    optimizer skips them). Returns the loss (the likelihood's nats per image) and the MSE.
    """
    prec = as_precision(precision, images.device)
    model.train()
    _set_lr(optimizer, lr)
    with prec.autocast():
        stats = model.decode_stats(ids)
    loss = model.nll(images, stats.float()).mean()
    applied = _update(model, optimizer, loss, clip, prec)
    with torch.no_grad():
        mse = F.mse_loss(model.reconstruct(stats.float()), images).item()
    return {"loss": loss.item(), "mse": mse, "stage": "decoder", "skipped": float(not applied)}


def config_dict(cfg: DVAEConfig) -> dict:
    return asdict(cfg)
