"""``unclip``: text -> CLIP image embedding -> image (unCLIP, "DALL-E 2", in miniature).

Paper: Ramesh et al. 2022, *Hierarchical Text-Conditional Image Generation with CLIP Latents*.
Section 2: a caption y, its CLIP text embedding z_t, the CLIP image embedding z_i of an image x;
generation is factored as

    P(x | y) = P(x | z_i, y) P(z_i | y)        (eq. 1; z_i is a function of x)

* the **prior** P(z_i | y) (section 2.2): here a diffusion model over the 96-number embedding,
  conditioned on z_t, which predicts the clean embedding directly (the paper's prior, too,
  predicts z_i, not the noise, with a mean squared error), sampled with DDIM;
  and the paper's simpler alternative for comparison, a deterministic map z_t -> z_i (the
  paper's baseline was an autoregressive prior; the simplest one is a regression: one image
  embedding per caption, the mean of the distribution, where the diffusion prior draws from it);
* the **decoder** P(x | z_i) (section 2.1): lesson 11's latent diffusion U-Net
  (:class:`diffusion.DiffusionSystem` with ``UNetConfig.embed_dim``), the embedding added to the
  timestep embedding and appended as 4 extra context tokens; trained with the embedding zeroed
  10% of the time, so classifier-free guidance works on it. The decoder here never reads the
  caption: all it knows is z_i (the paper's decoder also reads the caption, and says so helps
  little).

With the decoder alone: **variations** (section 3.1: encode an image to z_i, decode with fresh
noise: what CLIP keeps stays, the rest varies) and **interpolations** (section 3.2: slerp between
two images' z_i, the same noise for every frame).

The price (section 7, figure 15: "unCLIP struggles more than GLIDE with attribute binding"):
z_i is one 96-number summary, and whether "red" belongs to the triangle is only as recoverable
as CLIP made it. Lesson 12 measures it on held-out (colour, shape) pairs.

The shipped system (``data/unclip_shapes_toy``) and the commands that made it are in its README.
"""
from __future__ import annotations

import hashlib
import io
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .clip import CLIP, load_clip
from .diffusion import DiffusionSystem, GaussianDiffusion, timestep_embedding
from .utils import atomic_write_bytes, check_finite, safe_load

FORMAT = "dalle_mini_impl.unclip_prior/1"


@dataclass
class PriorConfig:
    embed_dim: int = 96      # CLIP's embedding size
    width: int = 256
    blocks: int = 2
    T: int = 1000
    schedule: str = "cosine"


class _Block(nn.Module):
    """LayerNorm -> Linear -> GELU -> Linear, + skip; the timestep as a scale and shift."""

    def __init__(self, width: int):
        super().__init__()
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(width), nn.Linear(width, 2 * width), nn.Linear(2 * width, width)
        self.film = nn.Linear(width, 2 * width)

    def forward(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(e).chunk(2, dim=-1)  # (B, width) each
        return h + self.fc2(F.gelu(self.fc1(self.norm(h) * (1 + scale) + shift)))


class DiffusionPrior(nn.Module):
    """x0_theta(z_t-noised image embedding, t, caption embedding): (B, D), (B,), (B, D) -> (B, D).

    The embeddings are unit vectors; the process runs on them times sqrt(D), so that each
    coordinate has about unit variance, as the process assumes."""

    def __init__(self, config: PriorConfig = PriorConfig()):
        super().__init__()
        self.config = cfg = config
        w = cfg.width
        self.inp = nn.Linear(2 * cfg.embed_dim, w)
        self.time = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        self.blocks = nn.ModuleList(_Block(w) for _ in range(cfg.blocks))
        self.out = nn.Sequential(nn.LayerNorm(w), nn.Linear(w, cfg.embed_dim))
        self.process = GaussianDiffusion(cfg.T, cfg.schedule)
        self.scale = math.sqrt(cfg.embed_dim)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        e = self.time(timestep_embedding(t, self.config.width))  # (B, w)
        h = self.inp(torch.cat([x_t, text_emb * self.scale], -1))  # (B, w)
        for block in self.blocks:
            h = block(h, e)
        return self.out(h)  # (B, D): the predicted clean (scaled) embedding

    def loss(self, image_emb: torch.Tensor, text_emb: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """|| z_i - f(z_i noised to a uniform t, t, z_t) ||^2 (unCLIP section 2.2)."""
        x0 = image_emb * self.scale
        t = torch.randint(1, self.config.T + 1, (len(x0),), generator=generator).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
        return F.mse_loss(self(self.process.q_sample(x0, t, noise), t, text_emb), x0)

    @torch.no_grad()
    def sample(self, text_emb: torch.Tensor, steps: int = 50, eta: float = 1.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """One image embedding per caption embedding (B, D) -> (B, D), unit length. The sampler
        wants a noise prediction; an x0 prediction gives it: eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar)."""
        def eps_fn(x, t):
            a = self.process.abar(t, x)
            return (x - a.sqrt() * self(x, t, text_emb)) / (1 - a).sqrt()
        x = self.process.sample(eps_fn, tuple(text_emb.shape), steps, eta, generator, text_emb.device, clip_x0=False)
        return F.normalize(x, dim=-1)


class DirectPrior(nn.Module):
    """The baseline: z_t -> one z_i (B, D) -> (B, D), unit; trained on the cosine."""

    def __init__(self, config: PriorConfig = PriorConfig()):
        super().__init__()
        w, d = config.width, config.embed_dim
        self.net = nn.Sequential(nn.Linear(d, w), nn.GELU(), nn.Linear(w, w), nn.GELU(), nn.Linear(w, d))

    def forward(self, text_emb: torch.Tensor) -> torch.Tensor:
        return F.normalize(text_emb + self.net(text_emb), dim=-1)

    def loss(self, image_emb: torch.Tensor, text_emb: torch.Tensor, generator=None) -> torch.Tensor:
        return (1 - (self(text_emb) * image_emb).sum(-1)).mean()


def fit_prior(model: nn.Module, image_emb: torch.Tensor, text_emb: torch.Tensor, steps: int, batch_size: int = 256,
              lr: float = 1e-3, seed: int = 0, start: int = 0, optimizer: torch.optim.Optimizer | None = None,
              log=None, log_every: int = 100, stop=None) -> torch.optim.Optimizer:
    """Train a prior (either kind) on paired embeddings (N, D): AdamW, linear warm-up over 5% then a
    cosine decay. Every draw of step k is a function of (seed, k), so training from ``start`` with
    the saved ``optimizer`` continues a run exactly. ``stop(step)`` -> True ends early (the
    training command saves there). Returns the optimizer."""
    opt = optimizer or torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warm = max(1, steps // 20)
    model.train()
    t0 = time.perf_counter()
    for step in range(start, steps):
        if stop is not None and stop(step):
            break
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        idx = torch.randint(0, len(image_emb), (batch_size,), generator=g)
        for group in opt.param_groups:
            group["lr"] = lr * min((step + 1) / warm, 0.5 * (1 + math.cos(math.pi * step / steps)))
        loss = model.loss(image_emb[idx], text_emb[idx], generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if log is not None and ((step + 1) % log_every == 0 or step + 1 == steps):
            log({"step": step + 1, "loss": loss.item(), "pairs_per_s": (step + 1 - start) * batch_size /
                 (time.perf_counter() - t0)})
    model.eval()
    return opt


def clip_digest(clip: CLIP) -> str:
    """A short fingerprint of a CLIP's weights: a prior only makes sense with its own CLIP."""
    h = hashlib.sha256()
    for k, v in sorted(clip.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def save_priors(path, prior: DiffusionPrior, direct: DirectPrior, clip: CLIP, extra: dict | None = None) -> None:
    """Both priors, their config and their CLIP's fingerprint in one file (tensors only)."""
    for m in (prior, direct):
        check_finite(m.state_dict(), f"saving {path}")
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "config": asdict(prior.config), "prior": prior.state_dict(),
                "direct": direct.state_dict(), "clip_digest": clip_digest(clip), "extra": extra or {}}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_priors(path, clip: CLIP | None = None) -> tuple[DiffusionPrior, DirectPrior]:
    state = safe_load(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not an unCLIP prior file (format {FORMAT!r}): train one with "
                         "`python -m dalle_mini_impl.training prior --out DIR`")
    if clip is not None and state["clip_digest"] != clip_digest(clip):
        raise ValueError(f"{path} was trained on another CLIP's embeddings (fingerprint {state['clip_digest']}, this "
                         f"one {clip_digest(clip)}): train the prior with the decoder's CLIP")
    cfg = PriorConfig(**state["config"])
    prior, direct = DiffusionPrior(cfg), DirectPrior(cfg)
    prior.load_state_dict(state["prior"])
    direct.load_state_dict(state["direct"])
    return prior.eval(), direct.eval()


def slerp(a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
    """Spherical interpolation between unit vectors (..., D) (unCLIP section 3.2)."""
    omega = torch.arccos((a * b).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))
    return (torch.sin((1 - alpha) * omega) * a + torch.sin(alpha * omega) * b) / torch.sin(omega)


class UnCLIP:
    """The CLIP, the two priors and the decoder: ``generate(captions)``, ``variations(images)``,
    ``interpolate(a, b)``. ``UnCLIP.load(dir)`` reads ``dir/decoder`` (a diffusion system and its
    ``clip.pt``) and ``dir/prior.pt``."""

    def __init__(self, clip: CLIP, prior: DiffusionPrior, direct: DirectPrior, decoder: DiffusionSystem):
        if decoder.unet.embed is None:
            raise ValueError("the decoder must be conditioned on an embedding (trained with --clip-model)")
        self.clip, self.prior, self.direct, self.decoder = clip.eval(), prior.eval(), direct.eval(), decoder.eval()

    @classmethod
    def load(cls, path, device: str | torch.device = "cpu") -> "UnCLIP":
        path = Path(path)
        if not (path / "prior.pt").is_file() or not (path / "decoder" / "clip.pt").is_file():
            raise FileNotFoundError(f"{path} is not an unCLIP directory (prior.pt and decoder/ with clip.pt): see "
                                    "data/unclip_shapes_toy/README.md for the two commands that make one")
        clip = load_clip(path / "decoder" / "clip.pt")
        prior, direct = load_priors(path / "prior.pt", clip)
        return cls(clip.to(device), prior.to(device), direct.to(device), DiffusionSystem.load(path / "decoder", device))

    @torch.no_grad()
    def image_embeddings(self, captions, n: int = 1, prior: str = "diffusion", steps: int = 50,
                         seed: int | None = 0) -> torch.Tensor:
        """(len(captions) n, D) unit image embeddings for the captions: drawn by the diffusion
        prior, predicted by the direct one (the same for all n), or the caption's own text
        embedding (``prior="text"``, the baseline with no prior at all)."""
        text = self.clip.encode_text(list(captions)).repeat_interleave(n, dim=0)  # (B n, D)
        if prior == "diffusion":
            g = torch.Generator().manual_seed(seed + 1_000_003) if seed is not None else None  # not the decoder's stream
            return self.prior.sample(text, steps, generator=g)
        if prior == "direct":
            return self.direct(text)
        if prior == "text":
            return text
        raise ValueError(f"prior must be 'diffusion', 'direct' or 'text', got {prior!r}")

    @torch.no_grad()
    def generate(self, captions, n: int = 1, prior: str = "diffusion", steps: int = 50, guidance: float = 3.0,
                 seed: int | None = 0, prior_steps: int = 50) -> torch.Tensor:
        """Caption -> embedding (the prior) -> image (the decoder): (len(captions) n, 3, S, S)."""
        emb = self.image_embeddings(captions, n, prior, prior_steps, seed)
        return self.decoder.generate(None, 1, steps=steps, guidance=guidance, seed=seed, embeds=emb)

    @torch.no_grad()
    def variations(self, images: torch.Tensor, n: int = 4, steps: int = 50, guidance: float = 3.0,
                   seed: int | None = 0) -> torch.Tensor:
        """``n`` decodings of each image's CLIP embedding with fresh noise: (len(images) n, 3, S, S)."""
        emb = self.clip.encode_image(images)  # (B, D)
        return self.decoder.generate(None, n, steps=steps, guidance=guidance, seed=seed, embeds=emb)

    @torch.no_grad()
    def interpolate(self, a: torch.Tensor, b: torch.Tensor, frames: int = 7, steps: int = 50,
                    guidance: float = 3.0, seed: int = 0, eta: float = 0.0) -> torch.Tensor:
        """Images a and b (3, S, S): ``frames`` decodings of slerp(z_a, z_b, alpha), alpha 0 .. 1, all
        from the same x_T and deterministic DDIM (eta 0), so only the embedding changes."""
        za, zb = self.clip.encode_image(torch.stack([a, b])).unbind(0)
        emb = torch.stack([slerp(za, zb, float(al)) for al in torch.linspace(0, 1, frames)])  # (frames, D)
        c, s = self.decoder.config.channels, self.decoder.config.image_size
        x_T = torch.randn((1, c, s, s), generator=torch.Generator().manual_seed(seed)).expand(frames, -1, -1, -1)
        return self.decoder.generate(None, 1, steps=steps, guidance=guidance, seed=seed, embeds=emb, eta=eta,
                                     noise=x_T)
