"""Sparse attention masks over text + image tokens, and attention computed three ways.

Paper: Ramesh et al. 2021, *Zero-Shot Text-to-Image Generation*, section 2.2, appendix B.1
and figure 11; the masks come from Child et al. 2019, *Generating Long Sequences with
Sparse Transformers*.

The sequence is ``T`` text tokens followed by an ``H x W`` grid of image tokens in raster
order (row by row), ``L = T + H*W`` positions. Position ``p < T`` is text token ``p``;
position ``p >= T`` is image token ``j = p - T`` at row ``j // W``, column ``j % W``.
A mask is a boolean ``(L, L)`` matrix, ``mask[q, k] = True`` when query ``q`` may attend
to key ``k``. Every mask here is causal (``k <= q``) and every row allows at least the
token itself, so no softmax row is empty.

What each mask allows (appendix B.1, figure 11):

* text queries: causal over the text (``k <= q``), the standard language-model mask;
* image queries: **all** text tokens, plus these earlier image tokens (``d = j - j'``):

  - ``"row"`` (fig. 11a): the window of the last ``W + 1`` image tokens *counting the
    token itself*, ``0 <= d <= W``. The caption: "each image token attends to the previous
    5 image tokens in raster order" for a 4x4 grid, "chosen to be 5, so that the last
    token being attended to is the one in the same column of the previous row" -- with
    ``d = 0..W`` the furthest key back (``d = W``) is exactly that token, and the token
    itself is included as in every causal mask. The window wraps around row ends in raster
    order: the first tokens of a row see the end of the previous row.
  - ``"column"`` (fig. 11b): earlier image tokens in the same column, ``d >= 0`` and
    ``d % W == 0``. The paper transposes the image states so this becomes the band mask of
    fig. 11c (better GPU utilisation); the set of allowed pairs is the same, so we keep
    raster order and the mask of fig. 11b.
  - ``"conv"`` (fig. 11d): a causal ``k x k`` convolutional neighbourhood (``k = 11`` in
    the paper, ``conv_kernel`` here): the rows ``0..h`` above (``h = k // 2``), columns
    within ``h`` either side, and in the current row only the tokens to the left. "With
    wraparound behavior (similar to the row attention)": the offsets are taken on the
    raster index, ``|d - r*W| <= h`` for some ``r`` in ``0..h`` (``d >= 0``), so near the
    left and right edges the neighbourhood wraps into the neighbouring row, as the row
    window does. ``wraparound=False`` gives the strict 2-D neighbourhood instead.
  - ``"full"``: every earlier image token (dense causal attention).

Layer schedule (appendix B.1): the paper numbers its 64 self-attention layers from
``i = 1``; layer ``i < 64`` uses column attention if ``(i - 2) mod 4 == 0`` and row
attention otherwise, and the last layer uses the convolutional mask: "row, column, row,
row, row, column, ..., conv". :func:`layer_schedule` returns that list, index ``0`` being
the paper's layer 1.

Attention, eq. ``softmax(Q K^T / sqrt(d) + M) V`` with ``M = 0`` where allowed and
``-inf`` elsewhere, is computed three ways that agree:

* :func:`attention_reference` -- the explicit scores, mask and softmax (materialises the
  ``(L, L)`` score matrix; the readable version);
* :func:`attention_sdpa` -- ``torch.nn.functional.scaled_dot_product_attention`` with the
  boolean mask (the path we train with: it has a backward pass everywhere);
* :func:`attention_flex` -- ``torch.nn.attention.flex_attention`` with a ``BlockMask``
  built from the *same rule* (:func:`mask_rule`), which can skip whole blocks of keys
  that the mask forbids. On CPU it runs forward only (no backward); eager flex
  materialises the scores, compiled flex (``torch.compile``) skips masked blocks. Where
  flex is not available, ``FLEX_AVAILABLE`` is False and :func:`attention` falls back to
  SDPA.

:class:`KVCache` holds the keys and values of earlier positions for sampling one token
at a time.
"""
from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

try:  # torch >= 2.5
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    FLEX_AVAILABLE = True
except ImportError:  # pragma: no cover - older torch
    create_block_mask = flex_attention = None
    FLEX_AVAILABLE = False

MASK_KINDS = ("full", "row", "column", "conv")
BACKENDS = ("reference", "sdpa", "flex")


@dataclass(frozen=True)
class MaskSpec:
    """Which mask, over which layout: ``text_len`` tokens then a ``grid x grid`` image."""

    kind: str
    text_len: int
    grid: int
    conv_kernel: int = 11
    wraparound: bool = True

    def __post_init__(self):
        if self.kind not in MASK_KINDS:
            raise ValueError(f"unknown mask kind {self.kind!r}; choose one of {MASK_KINDS}")
        if self.text_len < 0 or self.grid < 1:
            raise ValueError(f"need text_len >= 0 and grid >= 1, got text_len={self.text_len}, "
                             f"grid={self.grid}")
        if self.conv_kernel < 1 or self.conv_kernel % 2 == 0:
            raise ValueError(f"conv_kernel must be a positive odd number (the paper uses 11), "
                             f"got {self.conv_kernel}")

    @property
    def seq_len(self) -> int:
        return self.text_len + self.grid * self.grid


# --------------------------------------------------------------------------- the mask rule
def image_rule(kind: str, jq: torch.Tensor, jk: torch.Tensor, width: int, conv_kernel: int = 11,
               wraparound: bool = True) -> torch.Tensor:
    """May image token ``jq`` attend to image token ``jk``? (raster indices, any shapes that
    broadcast). Only elementwise integer ops, so flex_attention can trace it."""
    d = jq - jk  # how far back the key is, in raster order
    causal = d >= 0
    if kind == "full":
        return causal
    if kind == "row":  # the last W+1 tokens, itself included (fig. 11a)
        return causal & (d <= width)
    if kind == "column":  # same column, earlier rows (fig. 11b)
        return causal & (d % width == 0)
    if kind == "conv":  # causal k x k neighbourhood (fig. 11d)
        h = conv_kernel // 2
        if wraparound:  # offsets on the raster index: bands around 0, W, 2W, ..., hW
            near = torch.zeros_like(causal)
            for r in range(h + 1):
                near = near | ((d - r * width).abs() <= h)
            return causal & near
        rq, cq = jq // width, jq % width
        rk, ck = jk // width, jk % width
        return causal & (rq - rk <= h) & ((cq - ck).abs() <= h)
    raise ValueError(f"unknown mask kind {kind!r}; choose one of {MASK_KINDS}")


def mask_rule(spec: MaskSpec):
    """The mask as a function ``allowed(q_idx, kv_idx) -> bool tensor`` on sequence positions.

    The same function builds the dense boolean mask (:func:`build_mask`) and flex's
    ``BlockMask`` (:func:`build_block_mask`), so the two cannot disagree.
    """
    T, W = spec.text_len, spec.grid

    def allowed(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        text_key = (k < T) & (k <= q)  # text: causal; image queries see all text
        image_key = (k >= T) & (q >= T) & image_rule(spec.kind, q - T, k - T, W,
                                                     spec.conv_kernel, spec.wraparound)
        return text_key | image_key

    return allowed


def build_mask(kind: str, text_len: int, grid: int, conv_kernel: int = 11,
               wraparound: bool = True, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean ``(L, L)`` mask, ``L = text_len + grid**2``; True where attention is allowed."""
    spec = MaskSpec(kind, text_len, grid, conv_kernel, wraparound)
    pos = torch.arange(spec.seq_len, device=device)
    return mask_rule(spec)(pos[:, None], pos[None, :])  # (L, L)


def text_causal_mask(text_len: int, device=None) -> torch.Tensor:
    """The text block alone: lower-triangular ``(T, T)``."""
    return torch.ones(text_len, text_len, dtype=torch.bool, device=device).tril()


def row_mask(text_len: int, grid: int, device=None) -> torch.Tensor:
    return build_mask("row", text_len, grid, device=device)


def column_mask(text_len: int, grid: int, device=None) -> torch.Tensor:
    return build_mask("column", text_len, grid, device=device)


def conv_mask(text_len: int, grid: int, kernel: int = 11, wraparound: bool = True,
              device=None) -> torch.Tensor:
    return build_mask("conv", text_len, grid, kernel, wraparound, device=device)


def full_causal_mask(text_len: int, grid: int, device=None) -> torch.Tensor:
    return build_mask("full", text_len, grid, device=device)


# --------------------------------------------------------------------------- the schedule
def layer_schedule(n_layers: int, attention: str = "sparse") -> list[str]:
    """Mask kind per layer; list index ``i0`` is the paper's layer ``i = i0 + 1``.

    ``"sparse"`` (appendix B.1): the last layer ``"conv"``; layer ``i`` before it
    ``"column"`` if ``(i - 2) % 4 == 0`` else ``"row"``. ``"full"``: dense causal everywhere.
    """
    if not isinstance(n_layers, int) or n_layers < 1:
        raise ValueError(f"n_layers must be a positive int, got {n_layers!r}")
    if attention == "full":
        return ["full"] * n_layers
    if attention != "sparse":
        raise ValueError(f"attention schedule must be 'full' or 'sparse', got {attention!r}")
    kinds = ["column" if (i - 2) % 4 == 0 else "row" for i in range(1, n_layers)]
    return kinds + ["conv"]


# --------------------------------------------------------------------------- attention
def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        mask: torch.Tensor | None = None, dropout_p: float = 0.0,
                        training: bool = False) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d), masked) v`` written out. q: (B, nh, Lq, hd), k, v:
    (B, nh, Lk, hd), mask: (Lq, Lk) bool (True = allowed) -> (B, nh, Lq, hd)."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = (q @ k.transpose(-2, -1)) * scale  # (B, nh, Lq, Lk)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = scores.float().softmax(dim=-1).to(q.dtype)  # softmax in float32
    probs = F.dropout(probs, dropout_p, training=training)
    return probs @ v  # (B, nh, Lq, hd)


# On CPU, SDPA is slow for short 16-bit sequences: its MATH backend computes half and bfloat16
# inputs in float32, and its fused (flash) kernel is tuned for long ones. `bench/attention.py
# --short-only` times one attention call forward + backward (batch 32, 4 heads of 64, causal, one
# thread) on each path. On an AVX-512 + bf16 CPU, over five runs: at the toy's 96 keys in bf16,
# fused 44-50 ms, MATH 62-76, written out (bf16 matmuls, float32 softmax) 34-55, the written-out
# one fastest in four runs of five; at 128 keys 96 / 118 / 68; at 256 keys the fused kernel wins
# (138-209 against 231-274). In float32 the fused kernel is the fastest at every length. So
# 16-bit CPU attention over at most CPU_WRITTEN_OUT_MAX_LEN keys runs written out; everything
# else (GPUs, float32, longer sequences) goes to SDPA. Both compute the same function
# (tests/test_attention.py checks them against each other).
CPU_WRITTEN_OUT_MAX_LEN = 128


def attention_sdpa(q, k, v, mask: torch.Tensor | None = None, dropout_p: float = 0.0,
                   training: bool = False) -> torch.Tensor:
    """The same through ``F.scaled_dot_product_attention`` with the boolean mask (except for
    short 16-bit sequences on CPU, which run :func:`attention_reference`: faster there, see
    ``CPU_WRITTEN_OUT_MAX_LEN``)."""
    if (q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16)
            and k.shape[-2] <= CPU_WRITTEN_OUT_MAX_LEN):
        return attention_reference(q, k, v, mask, dropout_p, training)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p if training else 0.0)


@functools.lru_cache(maxsize=64)
def _block_mask_cached(spec: MaskSpec, q_len: int, kv_len: int, device: str, block_size: int):
    rule = mask_rule(spec)
    return create_block_mask(lambda b, h, q, k: rule(q, k), None, None, q_len, kv_len,
                             device=device, BLOCK_SIZE=block_size)


def build_block_mask(kind: str, text_len: int, grid: int, conv_kernel: int = 11,
                     wraparound: bool = True, device: torch.device | str = "cpu",
                     seq_len: int | None = None, block_size: int = 128):
    """flex_attention's ``BlockMask`` from the same rule as :func:`build_mask` (cached).

    ``seq_len`` (default ``text_len + grid**2``) may be shorter, for a prefix of the sequence.
    """
    if not FLEX_AVAILABLE:
        raise RuntimeError("flex_attention needs torch >= 2.5; use attention_sdpa with "
                           "build_mask instead")
    spec = MaskSpec(kind, text_len, grid, conv_kernel, wraparound)
    L = spec.seq_len if seq_len is None else seq_len
    return _block_mask_cached(spec, L, L, str(torch.device(device)), block_size)


_compiled_flex = None


def attention_flex(q, k, v, block_mask, compiled: bool | None = None) -> torch.Tensor:
    """flex_attention with a ``BlockMask``. ``compiled=None``: compiled on CUDA (fused,
    skips masked blocks), eager on CPU (fast to start; computes every score). Forward only
    on CPU: train with :func:`attention_sdpa` there."""
    global _compiled_flex
    if not FLEX_AVAILABLE:
        raise RuntimeError("flex_attention needs torch >= 2.5; use attention_sdpa instead")
    if compiled is None:
        compiled = q.device.type == "cuda"
    if compiled:
        if _compiled_flex is None:
            _compiled_flex = torch.compile(flex_attention, dynamic=False)
        return _compiled_flex(q, k, v, block_mask=block_mask)
    with warnings.catch_warnings():  # eager flex warns that it is unfused: we know
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        return flex_attention(q, k, v, block_mask=block_mask)


def attention(q, k, v, spec: MaskSpec, backend: str = "sdpa", dropout_p: float = 0.0,
              training: bool = False) -> torch.Tensor:
    """Masked attention over the full sequence of ``spec`` (or a prefix of it: ``q``'s
    length), by ``backend`` in ``("reference", "sdpa", "flex")``. Flex falls back to SDPA
    where it is unavailable, and where dropout is asked for in training (flex has none)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")
    L = q.shape[-2]
    if L > spec.seq_len:
        raise ValueError(f"sequence of {L} tokens is longer than the mask's {spec.seq_len}")
    if backend == "flex" and FLEX_AVAILABLE and not (training and dropout_p > 0):
        if q.device.type == "cpu" and torch.is_grad_enabled() and q.requires_grad:
            raise RuntimeError("flex_attention has no backward pass on CPU: train with "
                               "backend='sdpa' and use flex for inference or on CUDA")
        bm = build_block_mask(spec.kind, spec.text_len, spec.grid, spec.conv_kernel,
                              spec.wraparound, q.device, seq_len=L)
        return attention_flex(q, k, v, bm)
    mask = _dense_mask_cached(spec, str(q.device))[:L, :L]
    if backend == "reference":
        return attention_reference(q, k, v, mask, dropout_p, training)
    return attention_sdpa(q, k, v, mask, dropout_p, training)


@functools.lru_cache(maxsize=64)
def _dense_mask_cached(spec: MaskSpec, device: str) -> torch.Tensor:
    return build_mask(spec.kind, spec.text_len, spec.grid, spec.conv_kernel, spec.wraparound,
                      device=device)


def mask_rows(spec: MaskSpec, start: int, n: int, device) -> torch.Tensor:
    """Rows ``start..start+n`` of the mask over keys ``0..start+n``: (n, start+n) bool, sliced
    from the dense mask (built once per mask and device)."""
    return _dense_mask_cached(spec, str(torch.device(device)))[start:start + n, :start + n]


def attention_cached(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention of new positions over the keys in a KV cache (sampling). One new position
    (q: (B, nh, 1, hd)) runs written out: a (1, L) score row is a tiny matmul, and SDPA's fused
    kernel costs about 10x more per call at that size on a CPU (0.44 ms against 0.04 ms per
    layer at batch 16, 96 keys). Several positions (reading a caption) go to SDPA."""
    if q.shape[-2] == 1:
        return attention_reference(q, k.to(q.dtype), v.to(q.dtype), mask)
    return F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask)


# --------------------------------------------------------------------------- KV cache
@dataclass
class KVCache:
    """Keys and values of every layer for the positions seen so far, for sampling one token
    at a time: position ``p`` then costs attention over ``p + 1`` keys instead of a whole
    forward pass over ``p + 1`` tokens.

    ``k[layer]``, ``v[layer]``: (B, nh, max_len, hd), filled up to ``length``.
    """

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    length: int = 0

    @classmethod
    def empty(cls, n_layers: int, batch: int, n_heads: int, max_len: int, head_dim: int,
              device=None, dtype=torch.float32) -> "KVCache":
        shape = (batch, n_heads, max_len, head_dim)
        return cls([torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)],
                   [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)])

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]

    def write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor):
        """Store k, v (B, nh, n, hd) at positions ``start..start+n``; return the keys and
        values of positions ``0..start+n`` (B, nh, start+n, hd)."""
        end = start + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; asked to write up to {end}")
        if k.shape[0] != self.k[layer].shape[0]:
            raise ValueError(f"cache was made for batch {self.k[layer].shape[0]}, got {k.shape[0]}")
        self.k[layer][:, :, start:end] = k.to(self.k[layer].dtype)
        self.v[layer][:, :, start:end] = v.to(self.v[layer].dtype)
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]
