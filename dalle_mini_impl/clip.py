"""``clip``: a small contrastive image-text model, and reranking DALL-E's samples with it.

Paper: Ramesh et al. 2021, section 2.6 ("we draw N samples per caption and rerank them
with a pretrained contrastive model ... which assigns a score based on how well the image
matches the caption"; figure 9c: quality rises with N up to about 32), and the contrastive
model itself, CLIP (Radford et al. 2021, *Learning Transferable Visual Models From Natural
Language Supervision*, section 2.3 and figure 3).

The model
---------
* image encoder: a small CNN, (B, 3, S, S) -> (B, d_image); the feature map is flattened,
  not pooled, so the embedding knows *where* an object is ("on the left").
* text encoder: a transformer (``nn.TransformerEncoder``, pre-norm, bidirectional) over the
  caption tokenizer's ids (lesson 05, per-position padding); mean over the non-padding
  positions -> (B, d_text).
* linear projections of both into one ``embed_dim`` space, L2-normalised:
  ``I_e = norm(W_i f_i)``, ``T_e = norm(W_t f_t)``.
* a learned temperature, stored as ``logit_scale = log(1 / tau)`` (initialised to
  ``log(1 / 0.07)``, clamped at 100 as in CLIP).

The symmetric contrastive loss (CLIP figure 3, "InfoNCE" in both directions): for a batch of
B matching pairs, the similarity matrix is

    L_ij = exp(logit_scale) * <I_e[i], T_e[j]>                         (B, B)
    loss = ( CE(L, arange(B)) + CE(L^T, arange(B)) ) / 2

so each image must pick its own caption among the batch's captions, and each caption its
own image. Shapes captions repeat (a few hundred distinct scenes), so a batch can hold two
copies of one caption; they are then each other's "negatives". CLIP lives with this at
scale; here it costs a little accuracy and nothing else.

Use
---
* ``score(images, captions)`` -> (B,) cosine similarity of each image with its caption.
* ``rerank(captions, images, top)``: for B captions with N candidate images each, keep the
  ``top`` highest-scoring ones, best first (paper 2.6).
* ``zero_shot_classify(model, images, class_prompts)``: CLIP's zero-shot classifier: embed
  one prompt (or an ensemble of prompts, CLIP 3.1.4) per class, pick the class whose text
  embedding is closest to the image's. ``shapes_prompts("colour")`` builds them for shapes.

The shipped model (``data/clip_shapes_toy/``) was trained by the command in
data/clip_shapes_toy/README.md (``python -m dalle_mini_impl.training clip ...``).

The CLIP here is trained on *all* (colour, shape) combinations, including the ones the
DALL-E prior never sees (``split="all"``): the paper's CLIP was trained on its own,
larger data set than DALL-E's, and the reranker's job is to recognise what the prior was
asked for.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .datasets import ShapesDataset
from .datasets.shapes import COLOUR_NAMES, POSITIONS, SHAPES, SIZES, caption_from_attributes
from .precision import Precision, as_precision
from .tokenizer import course_tokenizer
from .utils import data_dir, load_checkpoint, save_checkpoint, seed_everything


@dataclass
class CLIPConfig:
    image_size: int = 32
    channels: int = 3
    width: int = 16           # CNN channels at full resolution (x2, x4, x4 after each stride 2)
    text_len: int = 16        # caption tokenizer positions (the longest shapes caption has 14 tokens)
    vocab_size: int = 512     # caption tokenizer BPE vocabulary asked for (course_tokenizer)
    d_text: int = 96          # text transformer width
    text_layers: int = 2
    text_heads: int = 4
    embed_dim: int = 96       # shared embedding space
    init_temperature: float = 0.07

    def __post_init__(self):
        if self.image_size % 8 or self.image_size < 16:
            raise ValueError(f"image_size must be a multiple of 8 and at least 16, got {self.image_size}")
        if self.d_text % self.text_heads:
            raise ValueError(f"d_text ({self.d_text}) must be divisible by text_heads ({self.text_heads})")
        if not 0 < self.init_temperature < 1:
            raise ValueError(f"init_temperature must lie in (0, 1), got {self.init_temperature}")


# --------------------------------------------------------------------------- the loss
def contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor,
                     logit_scale: torch.Tensor | float) -> torch.Tensor:
    """CLIP's symmetric cross-entropy over the (B, B) similarity matrix (CLIP figure 3).

    ``image_emb`` and ``text_emb`` are (B, D), row i of one matching row i of the other; they
    are L2-normalised here. ``logit_scale`` is log(1 / temperature)."""
    if image_emb.shape != text_emb.shape or image_emb.dim() != 2:
        raise ValueError(f"image_emb and text_emb must both be (B, D); got {tuple(image_emb.shape)} "
                         f"and {tuple(text_emb.shape)}")
    i = F.normalize(image_emb.float(), dim=-1)  # (B, D)
    t = F.normalize(text_emb.float(), dim=-1)  # (B, D)
    logits = torch.as_tensor(logit_scale, dtype=torch.float32).exp() * i @ t.T  # (B, B)
    target = torch.arange(len(i), device=i.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


# --------------------------------------------------------------------------- the model
class ImageEncoder(nn.Module):
    """(B, 3, S, S) in [0, 1] -> (B, 4 w) features."""

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        w = cfg.width

        def block(cin, cout, stride):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.GELU())

        s = cfg.image_size
        self.net = nn.Sequential(
            block(cfg.channels, w, 1),        # S x S
            block(w, 2 * w, 2),               # S/2
            block(2 * w, 4 * w, 2),           # S/4
            block(4 * w, 4 * w, 2),           # S/8
            nn.Flatten(),                     # (B, 4 w (S/8)^2): keeps where things are
            nn.Linear(4 * w * (s // 8) ** 2, 4 * w), nn.GELU(),
        )
        self.out_dim = 4 * w

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images * 2 - 1)  # (B, 4 w)


class TextEncoder(nn.Module):
    """(B, T) caption ids (per-position padding ids >= ``n_bpe``) -> (B, d_text)."""

    def __init__(self, cfg: CLIPConfig, n_text_tokens: int, n_bpe: int):
        super().__init__()
        self.n_bpe = n_bpe
        self.tok = nn.Embedding(n_text_tokens, cfg.d_text)
        self.pos = nn.Parameter(torch.randn(cfg.text_len, cfg.d_text) * 0.02)
        layer = nn.TransformerEncoderLayer(cfg.d_text, cfg.text_heads, 4 * cfg.d_text, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, cfg.text_layers, enable_nested_tensor=False)
        self.ln = nn.LayerNorm(cfg.d_text)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.tok(ids) + self.pos[: ids.shape[1]]  # (B, T, C)
        h = self.ln(self.blocks(h))  # (B, T, C)
        real = (ids < self.n_bpe).float()  # (B, T): 1 on caption tokens, 0 on padding
        real[real.sum(1) == 0] = 1.0  # an empty caption: average every position
        return (h * real[..., None]).sum(1) / real.sum(1, keepdim=True)  # (B, C)


class CLIP(nn.Module):
    """A small CLIP over the course's caption tokenizer. ``model.tokenizer`` encodes text."""

    def __init__(self, config: CLIPConfig = CLIPConfig(), tokenizer=None):
        super().__init__()
        self.config = cfg = config
        self.tokenizer = tokenizer if tokenizer is not None else course_tokenizer(cfg.text_len, cfg.vocab_size)
        if self.tokenizer.text_len != cfg.text_len:
            raise ValueError(f"tokenizer.text_len={self.tokenizer.text_len} differs from config.text_len={cfg.text_len}")
        self.image_encoder = ImageEncoder(cfg)
        self.text_encoder = TextEncoder(cfg, self.tokenizer.n_text_tokens, self.tokenizer.bpe_vocab_size)
        self.image_proj = nn.Linear(self.image_encoder.out_dim, cfg.embed_dim, bias=False)
        self.text_proj = nn.Linear(cfg.d_text, cfg.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / cfg.init_temperature)))

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    # ---- encoders
    def _images(self, images: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(images) or images.dim() != 4 or images.shape[1] != self.config.channels:
            raise ValueError(f"images must be a (B, {self.config.channels}, S, S) tensor, got "
                             f"{tuple(images.shape) if torch.is_tensor(images) else type(images).__name__}")
        if images.shape[-1] != self.config.image_size or images.shape[-2] != self.config.image_size:
            raise ValueError(f"this CLIP reads {self.config.image_size}x{self.config.image_size} images, "
                             f"got {images.shape[-2]}x{images.shape[-1]}: resize them first")
        x = images.to(self.device)
        return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()

    def _ids(self, captions) -> torch.Tensor:
        if torch.is_tensor(captions):
            if captions.dim() != 2:
                raise ValueError(f"caption ids must be (B, T), got shape {tuple(captions.shape)}")
            return captions.to(self.device)
        return self.tokenizer.encode(captions).to(self.device)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, embed_dim), unit length."""
        return F.normalize(self.image_proj(self.image_encoder(self._images(images))).float(), dim=-1)

    def encode_text(self, captions: Sequence[str] | torch.Tensor) -> torch.Tensor:
        """Captions (strings, or (B, T) ids) -> (B, embed_dim), unit length."""
        return F.normalize(self.text_proj(self.text_encoder(self._ids(captions))).float(), dim=-1)

    def forward(self, images: torch.Tensor, captions) -> torch.Tensor:
        """The (B, B) similarity logits, image i against caption j."""
        scale = self.logit_scale.clamp(max=math.log(100)).exp()
        return scale * self.encode_image(images) @ self.encode_text(captions).T  # (B, B)

    def loss(self, images: torch.Tensor, captions) -> torch.Tensor:
        i = self.image_proj(self.image_encoder(self._images(images)))
        t = self.text_proj(self.text_encoder(self._ids(captions)))
        return contrastive_loss(i, t, self.logit_scale.clamp(max=math.log(100)))

    # ---- scoring and reranking
    @torch.no_grad()
    def score(self, images: torch.Tensor, captions, batch_size: int = 512) -> torch.Tensor:
        """(B,) cosine similarity of image i with caption i (higher: a better match)."""
        n = len(images)
        if len(captions) != n:
            raise ValueError(f"score needs one caption per image: {n} images, {len(captions)} captions")
        was = self.training
        self.eval()
        out = []
        for s in range(0, n, batch_size):
            out.append((self.encode_image(images[s:s + batch_size]) *
                        self.encode_text(captions[s:s + batch_size])).sum(-1).cpu())
        self.train(was)
        return torch.cat(out) if out else torch.zeros(0)

    @torch.no_grad()
    def rerank(self, captions, images: torch.Tensor, top: int = 1):
        """Keep the ``top`` best of N candidates per caption (paper 2.6).

        ``captions``: B strings (or one string); ``images``: (B, N, C, S, S) candidates, or
        (N, C, S, S) for a single caption. Returns ``(best, scores, order)``: the chosen
        images (B, top, C, S, S), their scores (B, top) in decreasing order, and their
        indices among the N candidates (B, top)."""
        single = isinstance(captions, str)
        if single:
            captions = [captions]
            if torch.is_tensor(images) and images.dim() == 4:
                images = images[None]
        if not torch.is_tensor(images) or images.dim() != 5:
            raise ValueError("images must be (B, N, C, S, S): N candidates for each of B captions "
                             "(or (N, C, S, S) with one caption string)")
        b, n = images.shape[:2]
        if len(captions) != b:
            raise ValueError(f"{len(captions)} captions for {b} groups of candidates")
        if not 1 <= top <= n:
            raise ValueError(f"top must lie in [1, N={n}], got {top}")
        flat_caps = [c for c in captions for _ in range(n)]
        scores = self.score(images.flatten(0, 1), flat_caps).view(b, n)  # (B, N)
        s, order = scores.topk(top, dim=1)  # (B, top), sorted, best first
        best = images[torch.arange(b)[:, None], order.to(images.device)]  # (B, top, C, S, S)
        if single:
            return best[0], s[0], order[0]
        return best, s, order


# --------------------------------------------------------------------------- zero-shot
@torch.no_grad()
def zero_shot_classify(model: CLIP, images: torch.Tensor, class_prompts: dict[str, Sequence[str]] | Sequence[str],
                       template: str = "{}") -> list[str]:
    """CLIP's zero-shot classifier (CLIP 3.1.2): the class whose prompt embedding is nearest.

    ``images``: (B, C, S, S), or their (B, embed_dim) embeddings from ``encode_image`` (to
    classify one set several ways without encoding it again). ``class_prompts`` maps each
    class name to its prompts (their unit embeddings are averaged and renormalised: prompt
    ensembling, CLIP 3.1.4); a plain list of class names uses ``template.format(name)`` as
    the one prompt per class."""
    if not isinstance(class_prompts, dict):
        class_prompts = {c: [template.format(c)] for c in class_prompts}
    if not class_prompts or any(len(p) == 0 for p in class_prompts.values()):
        raise ValueError("class_prompts needs at least one class, each with at least one prompt")
    was = model.training
    model.eval()
    names = list(class_prompts)
    text = torch.stack([F.normalize(model.encode_text(list(class_prompts[c])).mean(0), dim=-1)
                        for c in names])  # (K, D)
    preds = []
    for s in range(0, len(images), 512):
        emb = images[s:s + 512].to(text.device).float() if images.dim() == 2 else model.encode_image(images[s:s + 512])
        preds += (emb @ text.T).argmax(-1).tolist()  # (B,)
    model.train(was)
    return [names[i] for i in preds]


def shapes_prompts(attribute: str) -> dict[str, list[str]]:
    """Prompt ensembles for classifying one attribute of one-object shapes images:
    ``"colour"``, ``"shape"``, ``"size"`` or ``"position"``. Each class gets every caption of
    the course's language that states it (the other attributes varied): the ensemble
    averages them out."""
    values = {"colour": COLOUR_NAMES, "shape": SHAPES, "size": SIZES, "position": POSITIONS}
    if attribute not in values:
        raise ValueError(f"attribute must be one of {list(values)}, got {attribute!r}")
    prompts = {v: [] for v in values[attribute]}
    for s in SHAPES:
        for c in COLOUR_NAMES:
            for z in SIZES:
                for p in POSITIONS:
                    obj = {"shape": s, "colour": c, "size": z, "position": p}
                    prompts[obj[attribute]].append(caption_from_attributes({"objects": [obj], "relation": None}))
    return prompts


# --------------------------------------------------------------------------- training
def train_clip(steps: int = 1500, n_train: int = 30_000, batch_size: int = 256, lr: float = 1e-3,
               seed: int = 0, config: CLIPConfig = CLIPConfig(), split: str = "all",
               n_objects: tuple[int, ...] = (1, 2), precision: "Precision | str | None" = None,
               device: str | torch.device = "cpu",
               log: Callable[[dict], None] | None = None, log_every: int = 100,
               start_model: CLIP | None = None, resume: dict | None = None,
               at_boundary: Callable[[int, Callable[[], dict]], bool] | None = None) -> CLIP:
    """Train a CLIP on shapes pairs with AdamW and a one-cycle step size (the training
    command's ``clip`` subcommand calls this). Deterministic for a given seed and device.
    ``precision``: a ``precision.Precision``, a name, or None for the package's policy (bf16
    where the device computes it natively, else float32).

    For the training command: ``at_boundary(step, snapshot)`` is called before every update
    and after the last; ``snapshot()`` gives the whole state (model, optimizer, schedule, data
    RNG, step) and a True return stops the loop there. ``resume`` (such a snapshot) continues
    exactly where it was taken."""
    device = torch.device(device)
    prec = as_precision(precision, device)
    g = seed_everything(seed)
    data = ShapesDataset(n_train, image_size=config.image_size, seed=seed + 2000, split=split,
                         n_objects=n_objects)
    images = data.images.to(device)  # uint8, (N, 3, S, S)
    model = (start_model or CLIP(config)).to(device)
    ids = model.tokenizer.encode(data.captions).to(device)  # (N, T)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    start = 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        g.set_state(resume["generator"])
        start = resume["step"]

    def snapshot(step: int) -> dict:
        return {"step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "generator": g.get_state()}

    t0 = time.perf_counter()
    model.train()
    for step in range(start, steps):
        if at_boundary is not None and at_boundary(step, lambda: snapshot(step)):
            return model.eval()
        idx = torch.randint(0, n_train, (batch_size,), generator=g).to(device)
        with prec.autocast():
            loss = model.loss(images[idx], ids[idx])
        opt.zero_grad(set_to_none=True)
        prec.backward(loss)
        prec.unscale(opt)
        prec.step(opt)
        sched.step()
        if log is not None and ((step + 1) % log_every == 0 or step + 1 == steps):
            log({"step": step + 1, "loss": loss.item(), "temperature": float(1 / model.logit_scale.detach().exp()),
                 "pairs_per_s": (step + 1 - start) * batch_size / (time.perf_counter() - t0)})
    if at_boundary is not None:
        at_boundary(steps, lambda: snapshot(steps))
    return model.eval()


@torch.no_grad()
def evaluate_clip(model: CLIP, n: int = 2000, seed: int = 54_321) -> dict[str, float]:
    """Zero-shot accuracy on one-object shapes (colour, shape, size, position; prompt
    ensembles) on every split, and image->caption retrieval accuracy within batches of 64."""
    out = {}
    for split in ("train", "holdout"):
        data = ShapesDataset(n, image_size=model.config.image_size, seed=seed, split=split, n_objects=1)
        x = model.encode_image(data.float_images())  # (n, D), once for every attribute
        for j, (attr, names) in enumerate([("shape", SHAPES), ("colour", COLOUR_NAMES),
                                           ("size", SIZES), ("position", POSITIONS)]):
            pred = zero_shot_classify(model, x, shapes_prompts(attr))
            truth = [names[i] for i in data.labels[:, 0, j].tolist()]
            out[f"zero_shot_{attr}_{split}"] = sum(p == t for p, t in zip(pred, truth)) / len(truth)
    data = ShapesDataset(n, image_size=model.config.image_size, seed=seed + 1, split="all", n_objects=(1, 2))
    right = 0
    for s in range(0, n - 63, 64):
        logits = model(data.float_images()[s:s + 64], data.captions[s:s + 64])
        right += (logits.argmax(1) == torch.arange(64)).sum().item()
    out["retrieval_top1_in_64"] = right / (64 * (n // 64))
    return out


def save_clip(model: CLIP, path: str | Path, step: int = 0, extra: dict | None = None) -> Path:
    return save_checkpoint(path, model=model, config=model.config, step=step, rng=False, extra=extra)


def load_clip(path: str | Path | None = None, device: str | torch.device = "cpu") -> CLIP:
    """The shipped CLIP (``data/clip_shapes_toy/clip.pt``) or one saved by the training command."""
    path = Path(path) if path is not None else data_dir() / "clip_shapes_toy" / "clip.pt"
    if path.is_dir():
        path = path / "clip.pt"
    state = load_checkpoint(path, map_location=device)
    model = CLIP(CLIPConfig(**state["config"]))
    model.load_state_dict(state["model"])
    return model.to(device).eval()
