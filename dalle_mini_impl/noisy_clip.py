"""``noisy_clip``: a noise-aware CLIP, and CLIP guidance with it (GLIDE section 2.4).

Paper: Nichol et al. 2021, *GLIDE*, section 2.4: "we train noised CLIP models ... on noised
images x_t with the timestep t as input"; guidance moves each sampling step up the gradient
of the image-caption score: mu_hat = mu + s Sigma grad_x (f(x_t, t) . g(c)). A CLIP trained
on clean images only would be scored on inputs it never saw (GLIDE: "an ordinary CLIP ... is
not trained on noised images"): its gradient at high noise points nowhere in particular.

Here the diffusion runs in a latent (:class:`diffusion.DiffusionSystem` with an autoencoder,
8x8x4), so the noise-aware image encoder reads that latent x_t and t directly and needs no
decoder in the gradient. Its text side *is* the clean CLIP's (lesson 09's ``clip.CLIP``,
frozen): both CLIPs embed a caption the same way, and the new image encoder is trained to
land where the clean one does:

    loss = contrastive(f(x_t, t), g(c))  +  5 (1 - cos(f(x_t, t), f_clean(x_0)))

t is drawn uniformly from 0..T, t = 0 included (x_0 itself), so at t = 0 the noise-aware CLIP
should agree with the clean one: the tests and lesson 11 check it.

The encoder: two 3x3 convolutions at 8x8 and one with stride 2 to 4x4, each followed by a
group norm scaled and shifted by the timestep's embedding (as the U-Net's ResBlocks do),
flattened (it keeps where the object is, as lesson 09's CNN does) and projected to CLIP's
embedding space.
"""
from __future__ import annotations

import io
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .clip import CLIP, CLIPConfig, contrastive_loss, shapes_prompts, zero_shot_classify
from .datasets.shapes import COLOUR_NAMES, SHAPES
from .diffusion import DiffusionSystem, GaussianDiffusion, gradient_guided, timestep_embedding
from .utils import atomic_write_bytes, check_finite, safe_load

FORMAT = "dalle_mini_impl.noisy_clip/1"


@dataclass
class NoisyCLIPConfig:
    channels: int = 4        # the diffusion space's channels (the latent's)
    size: int = 8            # and its side
    width: int = 64
    T: int = 1000            # the process's steps (the timestep embedding's range)
    schedule: str = "cosine"


class NoisyCLIP(nn.Module):
    """f(x_t, t) -> (B, D) unit embeddings in the frozen clean CLIP's space, plus that CLIP's
    text encoder. ``similarity(x_t, t, text_emb)`` is the (B,) score CLIP guidance climbs."""

    def __init__(self, clip: CLIP, config: NoisyCLIPConfig = NoisyCLIPConfig()):
        super().__init__()
        self.config = cfg = config
        self.clip = clip.requires_grad_(False).eval()
        w = cfg.width
        self.time = nn.Sequential(nn.Linear(w, 4 * w), nn.SiLU(), nn.Linear(4 * w, 4 * w))
        self.convs = nn.ModuleList([nn.Conv2d(cfg.channels, w, 3, padding=1), nn.Conv2d(w, w, 3, padding=1),
                                    nn.Conv2d(w, 2 * w, 3, stride=2, padding=1)])
        self.norms = nn.ModuleList([nn.GroupNorm(8, w), nn.GroupNorm(8, w), nn.GroupNorm(8, 2 * w)])
        self.films = nn.ModuleList([nn.Linear(4 * w, 2 * c.out_channels) for c in self.convs])
        side = (cfg.size + 1) // 2
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * w * side * side, 4 * w), nn.GELU(),
                                  nn.Linear(4 * w, clip.config.embed_dim))
        self.process = GaussianDiffusion(cfg.T, cfg.schedule)

    def train(self, mode: bool = True):
        super().train(mode)
        self.clip.eval()  # frozen: always in eval mode
        return self

    @property
    def device(self) -> torch.device:
        return self.head[1].weight.device

    def encode_image(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t (B, c, g, g) in the diffusion space, t (B,) integer timesteps -> (B, D), unit."""
        e = self.time(timestep_embedding(t.to(x_t.device), self.config.width))  # (B, 4w)
        h = x_t
        for conv, norm, film in zip(self.convs, self.norms, self.films):
            scale, shift = film(F.silu(e))[:, :, None, None].chunk(2, dim=1)  # (B, c, 1, 1) each
            h = F.gelu(norm(conv(h)) * (1 + scale) + shift)
        return F.normalize(self.head(h).float(), dim=-1)  # (B, D)

    def encode_text(self, captions) -> torch.Tensor:
        """The clean CLIP's caption embedding, (B, D), unit."""
        with torch.no_grad():
            return self.clip.encode_text(captions)

    def similarity(self, x_t: torch.Tensor, t: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """(B,) cosine of each noisy image with its caption's embedding (differentiable in x_t)."""
        return (self.encode_image(x_t, t) * text_emb.to(x_t.device)).sum(-1)

    def loss(self, x0: torch.Tensor, text_emb: torch.Tensor, clean_emb: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """The training loss on clean latents x0 (B, c, g, g), their captions' and images' clean
        CLIP embeddings (B, D): contrastive against the captions + distance to the clean image
        embedding, at a uniform t in 0..T."""
        B = x0.shape[0]
        t = torch.randint(0, self.config.T + 1, (B,), generator=generator).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
        f = self.encode_image(self.process.q_sample(x0, t, noise), t)
        distill = (1 - (f * clean_emb.to(f.device)).sum(-1)).mean()
        return contrastive_loss(f, text_emb, self.clip.logit_scale.detach().clamp(max=4.6052)) + 5 * distill

    # ---- saving: the new encoder and the frozen CLIP in one file (tensors only)
    def save(self, path) -> None:
        state = {k: v for k, v in self.state_dict().items() if not k.startswith("clip.")}
        check_finite(state, f"saving {path}")
        buf = io.BytesIO()
        torch.save({"format": FORMAT, "config": asdict(self.config), "encoder": state,
                    "clip_config": asdict(self.clip.config), "clip": self.clip.state_dict()}, buf)
        atomic_write_bytes(path, buf.getvalue())

    @classmethod
    def load(cls, path, device: str | torch.device = "cpu") -> "NoisyCLIP":
        state = safe_load(path)
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ValueError(f"{path} is not a noise-aware CLIP (format {FORMAT!r}): make one with "
                             "noisy_clip.train_noisy_clip and NoisyCLIP.save")
        clip = CLIP(CLIPConfig(**state["clip_config"]))  # the course tokenizer, rebuilt from the config
        clip.load_state_dict(state["clip"])
        model = cls(clip, NoisyCLIPConfig(**state["config"]))
        model.load_state_dict(state["encoder"], strict=False)
        return model.to(device).eval()


def train_noisy_clip(clip: CLIP, system: DiffusionSystem, images: torch.Tensor, captions: list[str],
                     steps: int = 1500, batch_size: int = 256, lr: float = 2e-3, seed: int = 0,
                     width: int = 64, log=None, log_every: int = 100) -> NoisyCLIP:
    """Fit a noise-aware CLIP in ``system``'s space: ``images`` (N, 3, S, S) in [0, 1] and their
    captions are embedded once by the clean ``clip`` and encoded once into the system's latent.
    AdamW with a one-cycle step size; deterministic for a seed."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    c, s = system.config.channels, system.config.image_size
    model = NoisyCLIP(clip, NoisyCLIPConfig(c, s, width, system.process.T, system.process.schedule))
    with torch.no_grad():
        x0 = torch.cat([system.to_space(images[i:i + 512]).cpu() for i in range(0, len(images), 512)])
        img_emb = torch.cat([clip.encode_image(images[i:i + 512]).cpu() for i in range(0, len(images), 512)])
        txt_emb = torch.cat([clip.encode_text(captions[i:i + 512]).cpu() for i in range(0, len(captions), 512)])
    params = [p for n, p in model.named_parameters() if not n.startswith("clip.")]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    t0 = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(0, len(x0), (batch_size,), generator=g)
        loss = model.loss(x0[idx], txt_emb[idx], img_emb[idx], generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log is not None and ((step + 1) % log_every == 0 or step + 1 == steps):
            log({"step": step + 1, "loss": loss.item(), "pairs_per_s": (step + 1) * batch_size / (time.perf_counter() - t0)})
    return model.eval()


def clip_guided(eps_fn, model: NoisyCLIP, process: GaussianDiffusion, text_emb: torch.Tensor, scale: float):
    """CLIP guidance (GLIDE 2.4) as an ``eps_fn``: the noise prediction moved up the gradient of
    the noise-aware CLIP's score of (x_t, t) against ``text_emb`` (B, D)."""
    return gradient_guided(eps_fn, process, lambda x, t: model.similarity(x, t, text_emb), scale)


@torch.no_grad()
def noise_report(model: NoisyCLIP, system: DiffusionSystem, images: torch.Tensor, labels: torch.Tensor,
                 timesteps=(0, 250, 500, 750, 900), seed: int = 0) -> dict[int, dict[str, float]]:
    """How the noise-aware CLIP reads one-object ``images`` (N, 3, S, S) in [0, 1] (their shapes
    ``labels`` (N, 1, 4)) noised to each t: the mean cosine of its embedding with the clean CLIP's
    embedding of the clean image, its zero-shot shape and colour accuracy (lesson 09's prompt
    ensembles), and how often that zero-shot answer equals the clean CLIP's on the clean image.
    At t = 0 the two CLIPs should agree."""
    clip = model.clip
    clean = clip.encode_image(images)  # (N, D)
    x0 = system.to_space(images).to(model.device)
    out = {}
    for t in timesteps:
        tt = torch.full((len(x0),), int(t), dtype=torch.long, device=x0.device)
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed + int(t))).to(x0.device)
        emb = model.encode_image(model.process.q_sample(x0, tt, noise), tt)  # (N, D)
        row = {"cos_to_clean": (emb * clean.to(emb.device)).sum(-1).mean().item()}
        for j, (attr, names) in enumerate([("shape", SHAPES), ("colour", COLOUR_NAMES)]):
            truth = [names[i] for i in labels[:, 0, j].tolist()]
            noisy_says = zero_shot_classify(clip, emb, shapes_prompts(attr))
            clean_says = zero_shot_classify(clip, clean, shapes_prompts(attr))
            row[f"{attr}_accuracy"] = sum(a == b for a, b in zip(noisy_says, truth)) / len(truth)
            row[f"{attr}_agrees_with_clean"] = sum(a == b for a, b in zip(noisy_says, clean_says)) / len(truth)
        out[int(t)] = row
    return out
