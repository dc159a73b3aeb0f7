"""DALL-E assembled: caption tokenizer + frozen dVAE + transformer prior.

Paper: Ramesh et al. 2021, *Zero-Shot Text-to-Image Generation*, section 2.2 (the joint
model over text and image tokens), 2.6 and 3.3 (sampling, image priming), appendix B.2
(training).

The token layout (one stream, one transformer; :mod:`dalle_mini_impl.transformer`)::

    text_0 .. text_{T-1}          image_0 .. image_{N-1}
    BPE ids, then pad_T(i)        dVAE codes of the G x G grid, raster order
    (a different padding id       (N = G * G)
     for every text position i)

The model is trained by maximum likelihood of the whole stream. The paper weights the two
parts (2.2: "we normalize the cross-entropy losses for the text and image tokens by the
total number of each kind in a batch of data ... the loss for the text tokens is weighted
by 1/8 and the loss for the image tokens by 7/8"):

.. math::

    \\mathcal{L} = \\tfrac18 \\cdot \\frac{1}{B T}\\sum_{b,t} -\\ln p(t_{b,t} \\mid t_{b,<t})
                 + \\tfrac78 \\cdot \\frac{1}{B N}\\sum_{b,n} -\\ln p(z_{b,n} \\mid t_b, z_{b,<n})

(:func:`dalle_loss`). Padding tokens are real targets: each position has its own padding
id, so the model learns where a caption ends.

Sampling (2.6): read the caption once into a KV cache, then draw the N image tokens one at
a time (temperature, top-k, top-p), optionally after the first rows of a given image's
tokens (*image priming*, 3.3, used for image-to-image translation), and decode them with
the dVAE. :meth:`DALLE.generate` does it in batches.

A ``DALLE`` is saved as one directory (:meth:`DALLE.save` / :meth:`DALLE.load`)::

    config.json      DALLEConfig + the transformer and dVAE configs
    tokenizer.json   the caption tokenizer
    dvae.pt          the frozen dVAE (weights + config)
    prior.pt         the transformer weights
"""
from __future__ import annotations

import contextlib
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .dvae import DiscreteVAE
from .precision import Precision, as_precision
from .tokenizer import CaptionTokenizer
from .transformer import Transformer, TransformerConfig, generate_image_tokens
from .utils import atomic_write_bytes, check_finite, progress_bar, safe_load

FORMAT = "dalle_mini_impl.DALLE/1"
TEXT_WEIGHT = 1 / 8  # section 2.2


# --------------------------------------------------------------------------- the loss
def dalle_loss(text_logits: torch.Tensor, image_logits: torch.Tensor, text_ids: torch.Tensor,
               image_ids: torch.Tensor, text_weight: float = TEXT_WEIGHT) -> dict[str, torch.Tensor]:
    """The paper's weighted cross-entropy (2.2).

    text_logits (B, T, Vt), image_logits (B, N, Vi), text_ids (B, T), image_ids (B, N).
    Each cross-entropy is the mean over its own tokens (normalised by its token count), then
    ``loss = text_weight * text + (1 - text_weight) * image``. Logits are cast to float32.
    Returns dict(loss, text, image).
    """
    if not 0.0 <= text_weight <= 1.0:
        raise ValueError(f"text_weight must be in [0, 1] (the paper uses 1/8), got {text_weight}")
    text = F.cross_entropy(text_logits.float().flatten(0, 1), text_ids.flatten())     # mean over B*T
    image = F.cross_entropy(image_logits.float().flatten(0, 1), image_ids.flatten())  # mean over B*N
    return {"loss": text_weight * text + (1.0 - text_weight) * image, "text": text, "image": image}


@torch.no_grad()
def validation_losses(prior: nn.Module, text_ids: torch.Tensor, image_ids: torch.Tensor,
                      text_weight: float = TEXT_WEIGHT, seed: int = 0, batch_size: int = 256) -> dict[str, float]:
    """The loss of held-out (caption, image) pairs, and what the caption is worth.

    Returns dict(loss, text, image) as :func:`dalle_loss` gives them, averaged over the pairs,
    plus ``image_shuffled`` -- the image-token loss (nats per token) when every image is scored
    after *another* pair's caption (a seeded derangement of the captions) -- and
    ``conditioning_gain = image_shuffled - image``: how many nats per image token the right
    caption saves. A prior that ignores the text gains exactly 0; one that draws what it is
    told gains a lot. The prior is run in eval mode (no dropout) under the caller's autocast."""
    n = len(text_ids)
    if n < 2:
        raise ValueError("validation needs at least 2 pairs (one caption to swap with another)")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    other = torch.empty_like(perm)
    other[perm] = perm.roll(-1)  # pair perm[i] gets the caption of pair perm[i + 1]: never its own
    other = other.to(text_ids.device)
    was = prior.training
    prior.eval()
    sums = {"loss": 0.0, "text": 0.0, "image": 0.0, "image_shuffled": 0.0}
    for s in range(0, n, batch_size):
        t, i, w = text_ids[s:s + batch_size], image_ids[s:s + batch_size], min(batch_size, n - s) / n
        part = dalle_loss(*prior(t, i), t, i, text_weight)
        shuffled = dalle_loss(*prior(text_ids[other[s:s + batch_size]], i), t, i, text_weight)["image"]
        for k in ("loss", "text", "image"):
            sums[k] += part[k].item() * w
        sums["image_shuffled"] += shuffled.item() * w
    prior.train(was)
    sums["conditioning_gain"] = sums["image_shuffled"] - sums["image"]
    return sums


# --------------------------------------------------------------------------- the system
@dataclass
class DALLEConfig:
    """What ties the three parts together. ``prior`` sizes the transformer; its vocabularies
    and lengths must match the tokenizer and the dVAE (checked by :class:`DALLE`)."""

    prior: TransformerConfig = field(default_factory=TransformerConfig)
    text_weight: float = TEXT_WEIGHT

    def to_dict(self) -> dict:
        d = asdict(self)
        if isinstance(d["prior"]["attention"], tuple):
            d["prior"]["attention"] = list(d["prior"]["attention"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DALLEConfig":
        prior = dict(d["prior"])
        if isinstance(prior.get("attention"), list):
            prior["attention"] = tuple(prior["attention"])
        return cls(prior=TransformerConfig(**prior), text_weight=d.get("text_weight", TEXT_WEIGHT))


def prior_config_for(tokenizer: CaptionTokenizer, dvae: DiscreteVAE, **sizes) -> TransformerConfig:
    """A TransformerConfig whose vocabularies and lengths fit this tokenizer and dVAE;
    ``sizes`` sets the rest (d_model, n_layers, n_heads, attention, ...)."""
    return TransformerConfig(text_vocab=tokenizer.n_text_tokens, image_vocab=dvae.config.n_codes,
                             text_len=tokenizer.text_len, image_grid=dvae.config.grid, **sizes)


class DALLE(nn.Module):
    """Caption tokenizer + frozen dVAE + transformer prior.

    * ``forward(text_ids, image_ids) -> dict(loss, text, image)``: the training loss on
      token ids (images pre-tokenised by the dVAE);
    * ``loss(images, captions)``: the same from raw images and captions;
    * ``generate(captions, n, ...) -> images``; ``generate_tokens`` for the token ids;
    * ``save(dir)`` / ``DALLE.load(dir)``.
    """

    def __init__(self, tokenizer: CaptionTokenizer, dvae: DiscreteVAE, config: DALLEConfig | None = None):
        super().__init__()
        config = config or DALLEConfig(prior=prior_config_for(tokenizer, dvae))
        p = config.prior
        if p.text_vocab != tokenizer.n_text_tokens or p.text_len != tokenizer.text_len:
            raise ValueError(f"the prior expects text_vocab={p.text_vocab}, text_len={p.text_len}; the "
                             f"tokenizer has n_text_tokens={tokenizer.n_text_tokens}, text_len={tokenizer.text_len}: "
                             "build the config with prior_config_for(tokenizer, dvae, ...)")
        if p.image_vocab != dvae.config.n_codes or p.image_grid != dvae.config.grid:
            raise ValueError(f"the prior expects image_vocab={p.image_vocab}, image_grid={p.image_grid}; the "
                             f"dVAE has n_codes={dvae.config.n_codes}, grid={dvae.config.grid}: "
                             "build the config with prior_config_for(tokenizer, dvae, ...)")
        self.config = config
        self.tokenizer = tokenizer
        self.dvae = dvae.eval().requires_grad_(False)  # frozen: stage 2 trains only the prior
        self.prior = Transformer(p)

    # ------------------------------------------------------------------ sizes
    @property
    def text_len(self) -> int:
        return self.config.prior.text_len

    @property
    def grid(self) -> int:
        return self.config.prior.image_grid

    @property
    def image_size(self) -> int:
        return self.dvae.config.image_size

    @property
    def device(self) -> torch.device:
        return self.prior.start.device

    def train(self, mode: bool = True):
        super().train(mode)
        self.dvae.eval()  # the dVAE stays in eval mode
        return self

    # ------------------------------------------------------------------ inputs
    def encode_text(self, captions: str | Sequence[str]) -> torch.Tensor:
        """Captions -> (B, T) ids with per-position padding. Empty captions, too-long captions
        and non-strings raise a ValueError / TypeError that says what to do
        (``CaptionTokenizer.encode(..., strict=True)``)."""
        return self.tokenizer.encode(captions, strict=True).to(self.device)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Images (B, C, S, S) in [0, 1] -> dVAE token ids (B, N), raster order."""
        return self.dvae.encode(images.to(self.device), batch_size).flatten(1)

    @torch.no_grad()
    def decode_tokens(self, image_ids: torch.Tensor) -> torch.Tensor:
        """(B, N) token ids -> images (B, C, S, S) in [0, 1]."""
        return self.dvae.decode(image_ids.view(-1, self.grid, self.grid))

    # ------------------------------------------------------------------ training
    def forward(self, text_ids: torch.Tensor, image_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """text_ids (B, T), image_ids (B, N) -> dict(loss, text, image) (:func:`dalle_loss`)."""
        text_logits, image_logits = self.prior(text_ids, image_ids)  # (B, T, Vt), (B, N, Vi)
        return dalle_loss(text_logits, image_logits, text_ids, image_ids, self.config.text_weight)

    def loss(self, images: torch.Tensor, captions: Sequence[str]) -> dict[str, torch.Tensor]:
        """The loss from images (B, C, S, S) in [0, 1] and their captions."""
        return self(self.encode_text(captions), self.encode_images(images))

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def generate_tokens(self, text_ids: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                        top_p: float | None = None, generator: torch.Generator | None = None,
                        prime: torch.Tensor | None = None, use_cache: bool = True,
                        guidance: float = 1.0) -> torch.Tensor:
        """Sample image tokens after each caption: text_ids (B, T) -> (B, N), by the package's
        one sampler (:func:`transformer.generate_image_tokens`; ``prime`` (B, k) fixes the first
        k image tokens, paper 3.3; ``guidance`` != 1: classifier-free guidance against the empty
        caption)."""
        null = self.tokenizer.pad_ids(self.text_len).to(text_ids.device) if guidance != 1 else None
        return generate_image_tokens(self.prior, text_ids, use_cache, temperature, top_k, top_p,
                                     generator, prime, guidance, null)

    @torch.no_grad()
    def generate(self, captions: str | Sequence[str], n: int = 1, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int | None = 0,
                 prime_images: torch.Tensor | None = None, prime_rows: int = 0,
                 batch_size: int = 64, use_cache: bool = True,
                 precision: "Precision | str | None" = None,
                 return_tokens: bool = False, progress: bool = False, guidance: float = 1.0):
        """``n`` images for each caption: (len(captions) * n, C, S, S) in [0, 1], caption-major
        (the n images of caption 0 first).

        ``seed`` fixes the draws (None: PyTorch's global RNG); ``prime_images`` (one per
        caption, (B, C, S, S)) with ``prime_rows`` > 0 keeps the top rows of each image's
        tokens and samples the rest (paper 3.3). ``precision``: a ``precision.Precision``, a
        name ("fp32", "bf16", ...) or None for the package's policy (bf16 where the device
        computes it natively, else float32; ``$DALLE_PRECISION`` overrides it). On a CPU fp16
        samples in float32 (float16 matmuls are many times slower there). With ``return_tokens``
        also returns the (B*n, N) ids; ``progress`` shows a bar over the batches. ``guidance`` s:
        classifier-free guidance, logits_uncond + s (logits_cond - logits_uncond), for a prior
        trained with caption dropout; 1 (the default) is plain sampling."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        text = self.encode_text(captions).repeat_interleave(n, dim=0)  # (B n, T)
        prime = None
        if prime_rows:
            if prime_images is None:
                raise ValueError("prime_rows > 0 needs prime_images (one image per caption)")
            if not 0 < prime_rows < self.grid:
                raise ValueError(f"prime_rows must be in [1, {self.grid - 1}], got {prime_rows}")
            ids = self.encode_images(prime_images)  # (B, N)
            if len(ids) * n != len(text):
                raise ValueError(f"give one prime image per caption: {len(ids)} images, {len(text) // n} captions")
            prime = ids[:, :prime_rows * self.grid].repeat_interleave(n, dim=0)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        was = self.training
        self.eval()
        prec = as_precision(precision, self.device)
        ctx = prec.autocast() if prec.name == "bf16" or self.device.type == "cuda" else contextlib.nullcontext()
        out = []
        with ctx:
            for s in progress_bar(range(0, len(text), batch_size), disable=not progress, desc="generating",
                                  unit="batch"):
                p = None if prime is None else prime[s:s + batch_size]
                out.append(self.generate_tokens(text[s:s + batch_size], temperature, top_k, top_p,
                                                generator, p, use_cache, guidance))
        self.train(was)
        tokens = torch.cat(out)  # (B n, N)
        images = self.decode_tokens(tokens).cpu()
        return (images, tokens) if return_tokens else images

    # ------------------------------------------------------------------ saving
    def save(self, path: str | Path, weights_dtype: torch.dtype | None = None,
             extra: dict | None = None) -> Path:
        """Write the whole system to the directory ``path`` (config, tokenizer, dVAE, prior).
        ``weights_dtype`` (e.g. torch.float16) stores the prior's floats smaller; they are
        cast back to float32 on load."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        check_finite(self.prior.state_dict(), f"saving {path / 'prior.pt'}")
        state = {k: (v.to(weights_dtype) if weights_dtype is not None and v.is_floating_point() else v)
                 for k, v in self.prior.state_dict().items()}
        buf = io.BytesIO()
        torch.save({"format": FORMAT, "prior": state}, buf)
        atomic_write_bytes(path / "prior.pt", buf.getvalue())
        self.dvae.save(path / "dvae.pt")
        self.tokenizer.save(path / "tokenizer.json")
        meta = {"format": FORMAT, "config": self.config.to_dict(), "extra": extra or {}}
        atomic_write_bytes(path / "config.json", (json.dumps(meta, indent=2) + "\n").encode())
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu",
             dvae: "str | Path | DiscreteVAE | None" = None) -> "DALLE":
        """A system saved by :meth:`save` (or by ``python -m dalle_mini_impl.training dalle``),
        on ``device`` ("cpu", "cuda", ...), in eval mode.

        ``dvae`` (a checkpoint path or a loaded model) replaces the directory's ``dvae.pt``:
        runs that share one dVAE (lesson 10's sweep) keep a single copy of it. It must be the
        dVAE the prior was trained on (same codes), or the samples are noise."""
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"no DALL-E model directory at {path}: train one with "
                                    "`python -m dalle_mini_impl.training dalle --out DIR` or use data/dalle_shapes_toy")
        need = ("config.json", "tokenizer.json", "prior.pt") + (("dvae.pt",) if dvae is None else ())
        missing = [f for f in need if not (path / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{path} is not a complete DALL-E directory: missing {missing}")
        meta = json.loads((path / "config.json").read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}/config.json has format {meta.get('format')!r}, expected {FORMAT!r}")
        tokenizer = CaptionTokenizer.load(path / "tokenizer.json")
        if not isinstance(dvae, DiscreteVAE):
            dvae = DiscreteVAE.load(path / "dvae.pt" if dvae is None else dvae, map_location="cpu")
        model = cls(tokenizer, dvae, DALLEConfig.from_dict(meta["config"]))
        state = safe_load(path / "prior.pt")["prior"]
        model.prior.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        model.meta = meta.get("extra", {})
        return model.to(device).eval()
