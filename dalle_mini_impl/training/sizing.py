"""How big is a preset: parameters, training memory and FLOPs, without building the model.

Used by ``python -m dalle_mini_impl.training dalle --preset paper`` (the 12B shape), by
``bench/gpu_throughput.py`` (model FLOPs utilisation) and by a test that checks that each GPU
preset fits its card. Parameters are counted exactly, on the meta device (no memory); memory
is a rough estimate, and says what it leaves out.

Training memory (bytes), mixed precision with float32 master weights
---------------------------------------------------------------------
* weights + gradients + AdamW's two moments, all float32: ``16 N``; plus the 16-bit copies
  autocast makes of the weights for the forward pass: ``2 N``.
* transformer activations kept for the backward pass, per layer, for a micro-batch of ``b``
  sequences of ``s`` positions, width ``d``, ``a`` heads (counted from our block under
  autocast, no dropout; compare Korthikanti et al. 2022, "Reducing Activation Recomputation
  in Large Transformer Models", who count ``34 s b d + 5 a s^2 b`` with dropout):

      ln_1 input (float32) 4 + qkv input 2 + q, k, v 6 + attention output 2 + proj input 2
      + ln_2 input (float32) 4 + fc input 2 + gelu input 8 + proj input 8   = 38 s b d

  plus ``2 a s^2 b`` when the attention probabilities are materialised (the math path of
  SDPA, or ``backend="reference"``; fused CUDA kernels keep only a log-sum-exp per row).
  float32 training doubles the 16-bit terms. The output heads add about 12 bytes per logit
  (16-bit logits, their float32 copy, log-softmax output): ``12 b (T V_text + N V_image)``.
* dVAE activations: *measured* rather than derived -- one training forward of the real
  module on fake tensors (``FakeTensorMode``: shapes, no memory) under bf16 autocast, with
  ``torch.autograd.graph.saved_tensors_hooks`` adding up every tensor saved for backward.
  (The transformer's forward reads token values, which fake tensors do not have; a test
  measures a small real one the same way and checks the formula above against it.)

Left out: the CUDA context and library workspaces (about 0.3-1 GiB), allocator
fragmentation, and temporary buffers during the backward pass. Hence the margin the test
asks for.

FLOPs per token of a training step (forward + backward = 3 x forward)
---------------------------------------------------------------------
As in PaLM (Chowdhery et al. 2022, appendix B)::

    F = 6 N_mm + 12 L s d

``N_mm`` counts the weights that multiply a token's activations: every block's four matrix
weights (``12 d^2`` per layer with ``mlp_ratio`` 4) plus the one output head a position
uses, averaged over positions (``d (T V_text + N V_image) / s``); embeddings are lookups
and not counted. ``12 L s d`` is attention itself: ``q k^T`` and the weighted sum of ``v``
cost ``2 s d`` each per token and layer in the forward pass, dense over all ``s`` keys (SDPA
with a boolean mask computes every score, so the sparse masks do not lower it). Biases,
layer norms, GELU and the softmax are left out. ``torch.utils.flop_counter.FlopCounterMode``
counts the same matmuls and agrees (a test checks it with the explicit-matmul attention
backend: the counter has no rule for the CPU SDPA kernel and would miss ``12 L s d``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

from ..dvae import DiscreteVAE, DVAEConfig, dvae_loss
from ..presets import PAPER, PRESETS, Preset
from ..transformer import Transformer, TransformerConfig
from ..utils import count_parameters_meta

GIB = 2 ** 30
# A preset's card, from its name: 16 GB and 80 GB (decimal, as vendors count) in GiB.
CARD_GIB = {"gpu16": 16e9 / GIB, "gpu80": 80e9 / GIB}


@dataclass(frozen=True)
class MemoryEstimate:
    """Training memory of one model, in GiB."""

    parameters: int
    states_gib: float        # float32 weights, gradients, AdamW moments + 16-bit weight copies
    activations_gib: float   # kept for the backward pass, one micro-batch
    micro_batch: int

    @property
    def total_gib(self) -> float:
        return self.states_gib + self.activations_gib


def states_bytes(n_params: int, autocast_copies: bool = True) -> int:
    """16 bytes per parameter (float32 weight, gradient, two AdamW moments), plus 2 for the
    16-bit copies autocast makes."""
    return n_params * (18 if autocast_copies else 16)


# --------------------------------------------------------------------------- transformer
def _preset(preset: Preset | str) -> Preset:
    if isinstance(preset, Preset):
        return preset
    return PAPER if preset == "paper" else PRESETS[preset]


def prior_config_for_preset(preset: Preset | str, text_vocab: int | None = None,
                            **changes) -> TransformerConfig:
    """The prior ``train dalle --preset NAME`` builds (its dVAE grid and codebook, its text
    length). ``text_vocab`` defaults to the preset's own for ``paper``, and to the paper's BPE
    vocabulary (16,384) plus 256 padding ids for the others: the largest a caption tokenizer
    gets, so memory estimates are upper bounds."""
    p = _preset(preset)
    if text_vocab is None:
        text_vocab = p.text_vocab if p is PAPER else PAPER.text_vocab
    sizes = dict(text_vocab=text_vocab, image_vocab=p.dvae_codes, text_len=p.text_len,
                 image_grid=p.dvae_grid, d_model=p.d_model, n_layers=p.n_layers, n_heads=p.n_heads)
    sizes.update(changes)
    return TransformerConfig(**sizes)


def matmul_params_per_token(cfg: TransformerConfig) -> float:
    """``N_mm`` of the module docstring: block matrices plus the average output head."""
    d, L = cfg.d_model, cfg.n_layers
    blocks = L * (4 * d * d + 2 * cfg.mlp_ratio * d * d)
    heads = d * (cfg.text_len * cfg.text_vocab + cfg.image_len * cfg.image_vocab) / cfg.seq_len
    return blocks + heads


def transformer_flops_per_token(cfg: TransformerConfig) -> float:
    """Training FLOPs per position: ``6 N_mm + 12 L s d`` (module docstring)."""
    return 6 * matmul_params_per_token(cfg) + 12 * cfg.n_layers * cfg.seq_len * cfg.d_model


def transformer_activation_bytes(cfg: TransformerConfig, batch: int, bits: int = 16,
                                 scores: bool = False) -> int:
    """Activations a training step keeps for backward (module docstring): ``38 s b d`` per
    layer in 16 bits (float32: ``(8 + 15 * 4) s b d``), ``+ 2 a s^2 b`` with materialised
    attention probabilities, plus 12 bytes per logit."""
    if bits not in (16, 32):
        raise ValueError(f"bits must be 16 (autocast) or 32, got {bits}")
    s, b, d, a = cfg.seq_len, batch, cfg.d_model, cfg.n_heads
    w = bits // 8  # bytes of a 16-bit (or float32) activation
    per_layer = (8 + 15 * w) * s * b * d  # 4 + 4 float32 layer-norm inputs, 30 sbd at 2 bytes
    if scores:
        per_layer += w * a * s * s * b
    logits = 12 * b * (cfg.text_len * cfg.text_vocab + cfg.image_len * cfg.image_vocab)
    return cfg.n_layers * per_layer + logits


def transformer_memory(cfg: TransformerConfig, micro_batch: int, scores: bool = False) -> MemoryEstimate:
    """Training memory of a prior under bf16/fp16 autocast with AdamW (module docstring)."""
    n = count_parameters_meta(lambda: Transformer(cfg))
    return MemoryEstimate(n, states_bytes(n) / GIB,
                          transformer_activation_bytes(cfg, micro_batch, 16, scores) / GIB, micro_batch)


# --------------------------------------------------------------------------- dVAE
def dvae_config_for_preset(preset: Preset | str) -> DVAEConfig:
    """The dVAE ``train dvae --preset NAME`` builds."""
    p = _preset(preset)
    return DVAEConfig.toy(image_size=p.image_size, grid=p.dvae_grid, n_codes=p.dvae_codes,
                          n_hid=p.dvae_hidden)


def saved_activation_bytes(loss_fn, params=()) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``loss_fn()`` runs,
    leaving out the storages of ``params`` (counted with the optimizer states). Run it under
    ``FakeTensorMode`` to measure a model too big for this machine: fake tensors have no
    storage, so each saved tensor then counts once by identity."""
    owned = {p.untyped_storage().data_ptr() for p in params if not _is_fake(p)}
    seen: dict = {}

    def pack(t: torch.Tensor):
        if _is_fake(t):
            seen[("fake", id(t))] = t.numel() * t.element_size()
        else:
            storage = t.untyped_storage()
            if storage.data_ptr() not in owned:
                seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = loss_fn()  # keep the graph (and so every saved tensor) alive while counting
        total = sum(seen.values())
    del out
    return total


def _is_fake(t: torch.Tensor) -> bool:
    return isinstance(t, FakeTensor)


def dvae_memory(cfg, micro_batch: int, bf16: bool = True) -> MemoryEstimate:
    """Training memory of a dVAE: exact parameter count; activations measured from one
    training forward (``dvae.dvae_loss``) on fake tensors (``FakeTensorMode``: shapes and
    dtypes, no memory), under bf16 autocast as ``train dvae`` runs by default."""
    with FakeTensorMode():
        model = DiscreteVAE(cfg)
        images = torch.rand(micro_batch, cfg.channels, cfg.image_size, cfg.image_size)
        n = sum(p.numel() for p in model.parameters())

        def step():
            with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                return dvae_loss(model, images, tau=1.0, beta=1.0)[0].loss

        act = saved_activation_bytes(step, list(model.parameters()))
    return MemoryEstimate(n, states_bytes(n) / GIB, act / GIB, micro_batch)


def preset_report(name: str, micro_batch: int | None = None) -> dict:
    """Parameters and memory of a preset's transformer and dVAE at ``micro_batch`` (default:
    the ``train dalle`` micro-batch of the preset, else its batch size)."""
    p = PRESETS[name]
    mb = micro_batch or p.micro_batch or p.batch_size
    prior = transformer_memory(prior_config_for_preset(p), mb)
    dvae = dvae_memory(dvae_config_for_preset(p), micro_batch or p.batch_size)
    return {"preset": name, "card_gib": CARD_GIB.get(name), "transformer": prior, "dvae": dvae}


# --------------------------------------------------------------------------- the paper
def paper_prior_config() -> TransformerConfig:
    """The paper's 12-billion-parameter prior (2.2, B.1): ``presets.PAPER``'s 64 layers of
    width 3,968 with 62 heads of 64, 256 text tokens from 16,384 BPE ids (+256 padding ids)
    and 32 x 32 image tokens from 8,192 codes."""
    return prior_config_for_preset(PAPER)


def paper_report() -> dict:
    """The paper's prior: parameters (counted on the meta device) and training-state memory."""
    cfg = paper_prior_config()
    n = count_parameters_meta(lambda: Transformer(cfg))
    return {"preset": "paper", "d_model": cfg.d_model, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads,
            "text_len": cfg.text_len, "image_tokens": cfg.image_len, "text_vocab": cfg.text_vocab,
            "image_vocab": cfg.image_vocab, "parameters": n, "parameters_billions": round(n / 1e9, 2),
            "gib_fp32_adam": round(states_bytes(n, autocast_copies=False) / GIB, 1),
            "gib_fp16_weights_only": round(2 * n / GIB, 1)}
