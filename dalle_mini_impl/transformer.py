"""The decoder-only transformer over text and image tokens: DALL-E's prior.

Paper: Ramesh et al. 2021, section 2.2 ("we concatenate up to 256 BPE-encoded text tokens
with the 32 x 32 = 1024 image tokens, and train an autoregressive transformer to model the
joint distribution over the text and image tokens"), appendix B.1 (sparse attention
schedule, :mod:`dalle_mini_impl.attention`) and figure 10 (embeddings).

Layout and next-token shift
---------------------------
The stream is ``text_0 .. text_{T-1}, image_0 .. image_{N-1}`` (``N = grid**2``, image in
raster order). The model reads it shifted right by one behind a learned start vector:

    sequence position   0        1       ...  T          T+1      ...  T+N-1
    input token         <start>  text_0  ...  text_{T-1} image_0  ...  image_{N-2}
    predicts            text_0   text_1  ...  image_0    image_1  ...  image_{N-1}

Position ``p`` predicts the token after the one it reads (the standard next-token shift);
the last text position predicts the first image token. So the outputs line up with the
targets: ``text_logits[:, t]`` predicts ``text_ids[:, t]`` from the tokens before it, and
``image_logits[:, n]`` predicts ``image_ids[:, n]`` from all the text and ``image_ids[:, :n]``.
The last image token is never read. Sequence positions ``0..T`` are "text" positions for the
masks (``text_len + 1`` of them, the start vector included) and ``image_j`` sits at position
``T + 1 + j``; its query uses the image mask of raster index ``j``.

Embeddings (figure 10): text tokens get a token embedding plus a learned position embedding;
image tokens get a token embedding plus a learned **row** and a learned **column**
embedding of their grid cell.

Blocks: pre-norm residual blocks, ``x = x + attn_branch(x); x = x + mlp_branch(x)`` with
``attn_branch = dropout(attn(ln_1(x)))`` and ``mlp_branch = dropout(mlp(ln_2(x)))``. The two
branches are sub-modules (``model.blocks[i].attn_branch``, ``.mlp_branch``) so that lesson
07's per-resblock gradient scaling (appendix D) can hook their outputs
(``register_forward_hook``) without touching this file.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import (BACKENDS, MASK_KINDS, KVCache, MaskSpec, attention, attention_cached,
                        layer_schedule, mask_rows)


@dataclass
class TransformerConfig:
    """Sizes of the prior. The paper: text_vocab 16384, image_vocab 8192, text_len 256,
    image_grid 32, d_model 3968, n_layers 64, n_heads 62, conv_kernel 11."""

    text_vocab: int = 512
    image_vocab: int = 512
    text_len: int = 32
    image_grid: int = 8        # H = W
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    mlp_ratio: int = 4
    dropout: float = 0.0
    attention: str | tuple = "sparse"   # "full", "sparse", or one mask kind per layer
    conv_kernel: int = 11
    backend: str = "sdpa"      # "sdpa" (trains everywhere), "flex", "reference"

    def __post_init__(self):
        for name in ("text_vocab", "image_vocab", "text_len", "image_grid", "d_model",
                     "n_layers", "n_heads", "mlp_ratio"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"TransformerConfig.{name} must be a positive int, got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.conv_kernel < 1 or self.conv_kernel % 2 == 0:
            raise ValueError(f"conv_kernel must be a positive odd number, got {self.conv_kernel}")
        if not isinstance(self.attention, str):
            kinds = tuple(self.attention)
            if len(kinds) != self.n_layers or any(k not in MASK_KINDS for k in kinds):
                raise ValueError(f"attention as a list needs {self.n_layers} kinds from "
                                 f"{MASK_KINDS}, got {kinds}")
            self.attention = kinds
        else:
            layer_schedule(self.n_layers, self.attention)  # raises on a bad name

    @property
    def image_len(self) -> int:
        return self.image_grid * self.image_grid

    @property
    def seq_len(self) -> int:
        """Positions the model reads: start + text + image minus the unread last token."""
        return self.text_len + self.image_len

    @property
    def schedule(self) -> list[str]:
        if isinstance(self.attention, tuple):
            return list(self.attention)
        return layer_schedule(self.n_layers, self.attention)


class SelfAttention(nn.Module):
    """Multi-head masked self-attention; ``spec`` fixes the mask (one per layer)."""

    def __init__(self, cfg: TransformerConfig, spec: MaskSpec):
        super().__init__()
        self.n_heads, self.spec, self.backend = cfg.n_heads, spec, cfg.backend
        self.dropout = cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)

    def _heads(self, x):  # (B, L, C) -> 3 x (B, nh, L, hd)
        B, L, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=-1)
        return [t.view(B, L, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v)]

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                start: int = 0) -> torch.Tensor:
        """x: (B, n, C) the positions ``start..start+n``. Without a cache ``start`` must be
        0 (a full forward over a prefix of the sequence); with one, keys and values of
        earlier positions come from it and these positions' are written to it."""
        B, n, C = x.shape
        q, k, v = self._heads(x)  # (B, nh, n, hd)
        if cache is None:
            y = attention(q, k, v, self.spec, self.backend, self.dropout, self.training)
        else:
            k_all, v_all = cache.write(layer, start, k, v)  # (B, nh, start+n, hd)
            y = attention_cached(q, k_all, v_all, mask_rows(self.spec, start, n, x.device))
        y = y.transpose(1, 2).reshape(B, n, C)  # (B, n, C)
        return self.proj(y)


class AttentionBranch(nn.Module):
    """The residual branch ``dropout(attn(ln_1(x)))`` of a block."""

    def __init__(self, cfg: TransformerConfig, spec: MaskSpec):
        super().__init__()
        self.ln = nn.LayerNorm(cfg.d_model)
        self.attn = SelfAttention(cfg, spec)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, cache=None, layer=0, start=0):
        return self.drop(self.attn(self.ln(x), cache, layer, start))


class MLPBranch(nn.Module):
    """The residual branch ``dropout(W_2 gelu(W_1 ln_2(x)))`` of a block."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.ln = nn.LayerNorm(cfg.d_model)
        self.fc = nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model)
        self.proj = nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.drop(self.proj(F.gelu(self.fc(self.ln(x)))))


class ResBlock(nn.Module):
    """Pre-norm residual block: ``x + attn_branch(x)``, then ``+ mlp_branch(x)``."""

    def __init__(self, cfg: TransformerConfig, layer: int, kind: str):
        super().__init__()
        self.layer, self.kind = layer, kind
        spec = MaskSpec(kind, cfg.text_len + 1, cfg.image_grid, cfg.conv_kernel)
        self.attn_branch = AttentionBranch(cfg, spec)
        self.mlp_branch = MLPBranch(cfg)

    def forward(self, x, cache=None, start=0):
        x = x + self.attn_branch(x, cache, self.layer, start)  # (B, n, C)
        return x + self.mlp_branch(x)  # (B, n, C)


class Transformer(nn.Module):
    """DALL-E's prior: embeddings -> ``n_layers`` resblocks -> layer norm -> two heads."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.config = cfg
        C, G = cfg.d_model, cfg.image_grid
        self.start = nn.Parameter(torch.zeros(C))                     # <start> vector
        self.text_emb = nn.Embedding(cfg.text_vocab, C)
        self.text_pos = nn.Embedding(cfg.text_len + 1, C)              # start + T positions
        self.image_emb = nn.Embedding(cfg.image_vocab, C)
        self.row_emb = nn.Embedding(G, C)                              # figure 10
        self.col_emb = nn.Embedding(G, C)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(ResBlock(cfg, i, kind) for i, kind in enumerate(cfg.schedule))
        self.ln_f = nn.LayerNorm(C)
        self.text_head = nn.Linear(C, cfg.text_vocab, bias=False)
        self.image_head = nn.Linear(C, cfg.image_vocab, bias=False)
        self.apply(self._init)
        nn.init.normal_(self.start, std=0.02)

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    # ----------------------------------------------------------------- embeddings
    def embed(self, start: int, tokens: torch.Tensor | None, batch: int) -> torch.Tensor:
        """Embeddings of sequence positions ``start..start+n``. ``tokens`` (B, n) are the
        tokens read there (text ids at positions 1..T, image ids after); position 0 is the
        start vector and takes no token (give None for n = 1 at position 0)."""
        cfg, C = self.config, self.config.d_model
        T = cfg.text_len
        n = 1 if tokens is None else tokens.shape[1]
        dev = self.start.device
        pos = torch.arange(start, start + n, device=dev)  # (n,)
        out = torch.zeros(batch, n, C, device=dev, dtype=self.start.dtype)  # (B, n, C)
        if tokens is not None and tokens.shape[0] != batch:
            raise ValueError(f"tokens have batch {tokens.shape[0]}, expected {batch}")
        is_start, is_text, is_image = pos == 0, (pos >= 1) & (pos <= T), pos > T
        if is_start.any():  # the start vector, at text position 0
            out[:, is_start] = self.start + self.text_pos(pos[is_start])
        if is_text.any():
            ids = tokens[:, is_text]
            _check_ids(ids, cfg.text_vocab, "text")
            out[:, is_text] = self.text_emb(ids) + self.text_pos(pos[is_text])
        if is_image.any():
            ids = tokens[:, is_image]
            _check_ids(ids, cfg.image_vocab, "image")
            j = pos[is_image] - T - 1  # raster index of the image token read here
            out[:, is_image] = (self.image_emb(ids) + self.row_emb(j // cfg.image_grid)
                                + self.col_emb(j % cfg.image_grid))
        return self.drop(out)

    def _logits(self, h: torch.Tensor, start: int):
        """Heads for hidden states of positions ``start..``: text vocab where the next token
        is text (position < T), image vocab after. Returns (text_logits, image_logits)."""
        h = self.ln_f(h)
        n_text = max(0, min(self.config.text_len - start, h.shape[1]))
        return self.text_head(h[:, :n_text]), self.image_head(h[:, n_text:])

    # ----------------------------------------------------------------- full forward
    def forward(self, text_ids: torch.Tensor, image_ids: torch.Tensor | None = None):
        """text_ids (B, T), image_ids (B, n) with 0 <= n <= N ->
        text_logits (B, T, text_vocab), image_logits (B, n, image_vocab).

        ``text_logits[:, t]`` predicts ``text_ids[:, t]`` and ``image_logits[:, j]`` predicts
        ``image_ids[:, j]``, each from the tokens before it (see the module docstring);
        ``image_ids[:, -1]`` is not read. A prefix of the image (n < N) is allowed, which is
        how one samples without a KV cache.
        """
        cfg = self.config
        if text_ids.dim() != 2 or text_ids.shape[1] != cfg.text_len:
            raise ValueError(f"text_ids must be (batch, {cfg.text_len}) (pad captions to "
                             f"text_len), got {tuple(text_ids.shape)}")
        B = text_ids.shape[0]
        if image_ids is None:
            image_ids = text_ids.new_zeros(B, 0)
        if image_ids.dim() != 2 or image_ids.shape[0] != B or image_ids.shape[1] > cfg.image_len:
            raise ValueError(f"image_ids must be (batch={B}, n <= {cfg.image_len}), "
                             f"got {tuple(image_ids.shape)}")
        n_img = image_ids.shape[1]
        # read: start, text, image_0..image_{n-2} (T + n positions; with n = 0 the last
        # text token is not read either)
        tokens = torch.cat([text_ids, image_ids], dim=1)[:, :cfg.text_len + n_img - 1]
        x = torch.cat([self.embed(0, None, B), self.embed(1, tokens, B)], dim=1)  # (B, T+n, C)
        for block in self.blocks:
            x = block(x)  # (B, T+n, C)
        return self._logits(x, 0)

    # ----------------------------------------------------------------- decoding
    def init_cache(self, batch: int, dtype: torch.dtype | None = None) -> KVCache:
        """An empty KV cache for ``batch`` sequences of up to ``seq_len`` positions, in the
        dtype keys and values are computed in (16 bits under autocast: the same values in
        half the memory that every sampling step reads)."""
        cfg = self.config
        if dtype is None:
            dev = self.start.device.type
            dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else self.start.dtype
        return KVCache.empty(cfg.n_layers, batch, cfg.n_heads, cfg.seq_len,
                             cfg.d_model // cfg.n_heads, device=self.start.device, dtype=dtype)

    def _run_cached(self, x: torch.Tensor, start: int, cache: KVCache) -> torch.Tensor:
        if start != cache.length:
            raise ValueError(f"positions must be fed in order: the cache holds {cache.length} "
                             f"positions, got position {start}")
        for block in self.blocks:
            x = block(x, cache, start)
        cache.length = start + x.shape[1]
        return x

    @torch.no_grad()
    def step(self, token: torch.Tensor | None, position: int, cache: KVCache) -> torch.Tensor:
        """Feed the token read at sequence ``position`` (None at position 0, the start
        vector; text_ids[:, p-1] for 1 <= p <= T; image_ids[:, p-T-1] after) and return the
        logits of the next token, (B, text_vocab) if it is text (position < T) else
        (B, image_vocab). Equal to the full forward pass's logits at that position."""
        if not 0 <= position < self.config.seq_len:
            raise ValueError(f"position must be in [0, {self.config.seq_len}), got {position}")
        B = cache.k[0].shape[0]
        if position > 0:
            if token is None:
                raise ValueError(f"position {position} reads a token; got None")
            token = token.reshape(B, 1)
        if position > self.config.text_len:  # an image token: its embedding, row and column (fig. 10)
            j, G = position - self.config.text_len - 1, self.config.image_grid
            x = self.drop(self.image_emb(token) + self.row_emb.weight[j // G] + self.col_emb.weight[j % G])
        else:
            x = self.embed(position, None if position == 0 else token, B)  # (B, 1, C)
        h = self._run_cached(x, position, cache)
        text_logits, image_logits = self._logits(h, position)
        return (text_logits if position < self.config.text_len else image_logits)[:, 0]

    @torch.no_grad()
    def prefill(self, text_ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Read the start vector and the whole caption in one pass, filling the cache with
        positions ``0..T``; return the logits of the first image token (B, image_vocab)."""
        B = text_ids.shape[0]
        if text_ids.shape != (B, self.config.text_len):
            raise ValueError(f"text_ids must be (batch, {self.config.text_len}), got "
                             f"{tuple(text_ids.shape)}")
        x = torch.cat([self.embed(0, None, B), self.embed(1, text_ids, B)], dim=1)  # (B, T+1, C)
        h = self._run_cached(x, 0, cache)
        return self._logits(h, 0)[1][:, -1]


def _check_ids(ids: torch.Tensor, vocab: int, what: str) -> None:
    if ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{what} ids must be integer (long) tensors, got {ids.dtype}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        raise ValueError(f"{what} ids must be in [0, {vocab}), got values in "
                         f"[{int(ids.min())}, {int(ids.max())}]")


# --------------------------------------------------------------------------- sampling
def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Keep the ``top_k`` largest logits of each row and/or the smallest set whose
    probability reaches ``top_p`` (nucleus sampling, Holtzman et al. 2019); the rest -> -inf."""
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
        probs = sorted_logits.softmax(-1)
        # drop a token when the tokens before it already hold top_p of the mass
        drop_sorted = probs.cumsum(-1) - probs >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of logits (B, V) (paper 2.6: temperature, top-k, top-p).
    ``temperature == 0`` is greedy (argmax). The draw runs on the CPU, so a CPU generator
    fixes it on any device."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return logits.argmax(-1)
    logits = filter_logits(logits.float() / temperature, top_k, top_p)
    probs = logits.softmax(-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(logits.device)


@torch.no_grad()
def generate_image_tokens(model: Transformer, text_ids: torch.Tensor, use_cache: bool = True,
                          temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                          generator: torch.Generator | None = None,
                          prime: torch.Tensor | None = None, guidance: float = 1.0,
                          null_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Sample the N image tokens after each caption, one at a time: (B, T) -> (B, N). The
    package's one sampler (``DALLE.generate`` calls it).

    ``prime`` (B, k) fixes the first k image tokens (paper 3.3: the top rows of an image);
    sampling continues from token k. With ``use_cache`` the caption (and the prime) is read
    once (:meth:`Transformer.prefill`) and each image token costs one position
    (:meth:`Transformer.step`); without it every token re-runs the forward pass over the whole
    prefix. Same generator, same tokens either way.

    ``guidance`` s != 1 with ``null_ids`` (B, T) or (T,), the empty caption: classifier-free
    guidance (Ho & Salimans 2021; GLIDE 2.3) for an autoregressive prior. A second stream
    reads the empty caption; each token is sampled from ``logits_uncond + s (logits_cond -
    logits_uncond)`` and fed to both streams. s = 1 runs the single stream: exactly the
    unguided tokens. It needs a prior trained with caption dropout (``train dalle
    --caption-dropout``), else the empty caption is a string it never saw.
    """
    T, N = model.config.text_len, model.config.image_len
    B = text_ids.shape[0]
    two = guidance != 1
    if two:
        if null_ids is None:
            raise ValueError("guidance != 1 needs null_ids, the empty caption's ids (tokenizer.pad_ids())")
        text_ids = torch.cat([text_ids, null_ids.to(text_ids.device).long().expand(B, T)])  # (2B, T)

    def mix(logits):  # (2B, V) -> (B, V): the guided logits
        if not two:
            return logits
        cond, uncond = logits.float().chunk(2)
        return uncond + guidance * (cond - uncond)

    def both(x):  # what the streams read: the same image tokens twice
        return torch.cat([x, x]) if two else x

    image = text_ids.new_zeros(B, N)  # (B, N)
    k = 0
    if prime is not None:
        prime = prime.to(text_ids.device).long().reshape(B, -1)
        k = prime.shape[1]
        if not 0 <= k < N:
            raise ValueError(f"prime must hold fewer than {N} tokens per image, got {k}")
        image[:, :k] = prime
    if use_cache:
        cache = model.init_cache(len(text_ids))
        logits = model.prefill(text_ids, cache)  # (B or 2B, Vi): logits of image_0
        if k:
            x = model.embed(T + 1, both(image[:, :k]), len(text_ids))  # read image_0 .. image_{k-1}
            h = model._run_cached(x, T + 1, cache)
            logits = model._logits(h[:, -1:], T + k)[1][:, 0]  # logits of image_k
        for j in range(k, N):
            image[:, j] = sample_logits(mix(logits), temperature, top_k, top_p, generator)
            if j + 1 < N:
                logits = model.step(both(image[:, j]), T + 1 + j, cache)
    else:
        for j in range(k, N):
            logits = model(text_ids, both(image[:, :j + 1]))[1][:, j]  # image[:, j] is not read
            image[:, j] = sample_logits(mix(logits), temperature, top_k, top_p, generator)
    return image
