"""Mixed-precision training and per-resblock gradient scaling (Ramesh et al. 2021, 2.4 and D).

DALL-E trained its 12B transformer with 16-bit activations and activation gradients. In
float16 the smallest positive number is 2**-24 (normal numbers start at 2**-14): a
gradient element smaller than that is rounded to zero ("underflow"). Standard loss scaling
(Micikevicius et al. 2017) multiplies the loss by one number S, so every gradient is S times
larger while it is stored in 16 bits, and divides by S again in float32 before the update.
That works while the spread between the largest and the smallest activation gradients fits
in float16's exponent range. The paper found that the norms of the activation gradients
*decrease from the earlier resblocks to the later ones*, and that at 12B parameters the
spread no longer fits: with one S the later resblocks' gradients underflow. The fix
(figure 4) is one gradient scale s_l per resblock l.

What this module gives
----------------------
* ``float16_stats`` and ``GradientMonitor``: how many gradient elements are zero, subnormal
  or non-finite when stored in float16, and each resblock's gradient norm, from backward hooks.
* ``PerResblockGradScaler``: appendix D's rule, attached to any list of residual branches.
* ``pick_precision`` / ``Precision``: the ordinary case and the package's one precision policy
  (``auto``: bf16 on a GPU or CPU that computes it natively, fp16 plus ``torch.amp.GradScaler``
  on an older GPU, float32 elsewhere; ``$DALLE_PRECISION`` or an argument overrides it); it
  wraps ``torch.autocast`` and never applies a non-finite gradient.
* ``DeepResidualStack``: the lesson's toy, a deep stack of residual MLP blocks.

Per-resblock scaling, as implemented (figure 4 and appendix D)
--------------------------------------------------------------
A resblock computes ``y = x + branch(x)``. On the way back, with g = dL/dy (float32):

1. **scale on the way in**: the gradient entering the branch is g * s_l, stored in the branch's
   16-bit dtype;
2. the branch back-propagates in 16 bits; its parameter gradients come out multiplied by s_l;
3. **unscale on the way out**: the gradient leaving the branch (dL/dx through the branch,
   times s_l) is checked for non-finite values, divided by s_l in float32, and *filtered*
   (replaced by zeros if it had any inf/NaN) before it is added to the identity path.

The identity path therefore carries the true, unscaled gradient in float32, and an overflow in
one resblock cannot poison the gradients of the resblocks before it. Before the optimizer
step every branch parameter gradient is divided by its resblock's s_l.

The update rule (appendix D, M = number of data-parallel processes)::

    s_l = M * 2**13 at the start
    after an update in which resblock l's gradients were all finite:   s_l *= 2**(1/1000)
    if resblock l had a non-finite gradient:  skip the update;  s_l /= sqrt(2),
        unless s_l was already divided within the last 125 updates (then it is kept)
    clamp s_l to [M * 2**7, M * 2**24] after every change

Our reading of "skip the update": one optimizer step updates all parameters at once, so a
non-finite gradient in *any* resblock skips the whole step (no weight changes anywhere,
``n_skipped`` counts it, ``skipped_per_block`` says which resblocks caused it). Each scale
follows only its own resblock's gradients: the resblocks that saw non-finite values back off,
every other resblock grows by 2**(1/1000) as usual ("after each update whose gradients in
that resblock were all finite"), so one resblock's overflow never moves another's scale.
The 125-update hold counts every call to ``step``, skipped or not. Scales are kept as
base-2 logarithms (growth adds 1/1000, backoff subtracts 1/2) so a trace is exact.

Which tensors stay in float32 (appendix D): gains, biases, embeddings and the logits. With
``torch.autocast`` the master weights are float32 anyway (autocast casts matmul weights to
16 bits per op); layer norms run in float32 under autocast, embeddings are not autocast, and
``fp32_logits`` computes the output head outside autocast. ``check_fp32_master_weights``
asserts that no parameter, gradient or optimizer state became 16-bit.

Attaching it to a model
-----------------------
Any model whose resblocks are ``x + branch(x)`` works. Pass, per resblock, the module(s)
that compute its residual branch(es); a pre-norm transformer block with an attention and an
MLP branch passes both (they share the block's scale)::

    scaler = PerResblockGradScaler([[blk.attn_branch, blk.mlp_branch] for blk in model.blocks])
    loss.backward()
    scaler.step(optimizer)          # unscale, check, step or skip, update the scales
    optimizer.zero_grad()

Each branch module must take the residual stream as its first positional argument and return
a tensor (or a tuple whose first element is the branch output), and must be what is added to
the identity path (if a block does ``x = x + self.attn(self.ln1(x))``, pass a module that
wraps ``ln1`` and ``attn`` together). The scaler works through forward hooks, so the block's
code is not changed; ``scaler.remove()`` detaches it.

CPU emulation of float16 storage
--------------------------------
float16 autocast on CPU is about 35x slower than float32 here, so the lesson's deep stack
computes in float32 and *emulates* 16-bit storage of the activation gradients: with
``emulate=torch.float16`` the gradient entering each branch (after scaling) and the gradient
leaving it (before unscaling) are rounded to float16 (``t.half().float()``), exactly as a GPU
would store them at those two points, including subnormals, rounding to zero and overflow
to inf. What is *not* emulated: the branch's own matmuls still run in float32, so the rounding
inside the branch (between its layers), float16 accumulation details of GPU kernels
(tensor cores accumulate in fp32 and round once), and 16-bit forward activations are absent.
Underflow is therefore measured at the branch boundaries only. On CUDA use real autocast
(``emulate=None``); the same scaler then works on the real float16 gradients.
"""
from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn

from . import utils

__all__ = [
    "float16_stats", "underflow_fraction", "GradientMonitor", "GradScaleConfig",
    "update_log2_scale", "replay_scales", "ActivationGradHooks", "PerResblockGradScaler", "Precision",
    "pick_precision", "as_precision", "ResblockPrecision", "PRECISION_ENV", "PRECISION_CHOICES", "fp32_logits", "check_fp32_master_weights", "DeepStackConfig",
    "DeepResidualStack", "ResidualMLPBlock", "teacher_task",
]


# --------------------------------------------------------------------------- seeing underflow
def float16_stats(t: torch.Tensor, dtype: torch.dtype = torch.float16) -> dict[str, int]:
    """Count the elements of ``t`` that are zero, subnormal or non-finite once stored in ``dtype``.

    Subnormal: 0 < |v| < finfo(dtype).tiny (2**-14 for float16), where precision is lost bit by
    bit; zero: |v| rounded below 2**-25 (float16) or exactly zero.
    """
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        raise TypeError(f"float16_stats needs a floating-point tensor, got {type(t).__name__}")
    v = t.detach().to(dtype)
    a = v.abs()
    finite = torch.isfinite(v)
    zero = (a == 0)
    sub = finite & (a > 0) & (a < torch.finfo(dtype).tiny)
    return {"numel": v.numel(), "zero": int(zero.sum()), "subnormal": int(sub.sum()),
            "nonfinite": int((~finite).sum())}


def underflow_fraction(stats: dict[str, int]) -> float:
    """(zero + subnormal) / numel from ``float16_stats``-style counts."""
    return (stats["zero"] + stats["subnormal"]) / max(stats["numel"], 1)


def _latest(history: list, key: str, hint: str) -> list[float]:
    """Per-block ``key`` of the latest recorded backward ("underflow" is computed)."""
    if not history:
        raise RuntimeError(f"no backward pass recorded yet ({hint})")
    if key == "underflow":
        return [underflow_fraction(s) for s in history[-1]]
    return [s[key] for s in history[-1]]


class GradientMonitor:
    """Backward hooks on modules (e.g. each resblock's branch) that record, per backward pass,
    the norm of the gradient w.r.t. the module's output and its float16 zero/subnormal/
    non-finite counts. ``divide_by`` (a number, or a callable returning one) is applied to the
    norm, e.g. the loss scale, so ``norms`` are true gradient norms.

    >>> mon = GradientMonitor(branches); loss.backward(); mon.history[-1]  # one dict per module
    """

    def __init__(self, modules: Sequence[nn.Module], dtype: torch.dtype = torch.float16,
                 divide_by=1.0):
        self.modules = list(modules)
        if not self.modules:
            raise ValueError("GradientMonitor needs at least one module to watch")
        self.dtype, self.divide_by = dtype, divide_by
        self.history: list[list[dict]] = []
        self._current: dict[int, dict] = {}
        self._handles = [m.register_full_backward_hook(self._make_hook(i))
                         for i, m in enumerate(self.modules)]

    def _make_hook(self, i: int):
        def hook(module, grad_input, grad_output):
            g = grad_output[0]
            if g is None:
                return None
            d = self.divide_by() if callable(self.divide_by) else self.divide_by
            st = float16_stats(g, self.dtype)
            st["norm"] = float(g.detach().float().norm()) / float(d)
            self._current[i] = st
            if len(self._current) == len(self.modules):
                self.history.append([self._current[j] for j in range(len(self.modules))])
                self._current = {}
            return None
        return hook

    def last(self, key: str) -> list[float]:
        """The latest backward's ``key`` ("norm", "underflow", ...) per module."""
        return _latest(self.history, key, "call loss.backward() first")

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


# --------------------------------------------------------------------------- the update rule
@dataclass(frozen=True)
class GradScaleConfig:
    """Appendix D's constants. ``n_replicas`` is M, the number of data-parallel processes."""

    n_replicas: int = 1
    init_log2: float = 13.0       # s = M * 2**13 at the start
    growth_log2: float = 1 / 1000  # s *= 2**(1/1000) after each update with finite gradients
    backoff_log2: float = 0.5      # s /= sqrt(2) = 2**0.5 on a non-finite gradient
    hold: int = 125                # no further division within 125 updates
    min_log2: float = 7.0          # clamp to [M * 2**7, M * 2**24]
    max_log2: float = 24.0

    def __post_init__(self):
        if not isinstance(self.n_replicas, int) or self.n_replicas < 1:
            raise ValueError(f"n_replicas (M) must be a positive int, got {self.n_replicas!r}")
        if not self.min_log2 <= self.init_log2 <= self.max_log2:
            raise ValueError("need min_log2 <= init_log2 <= max_log2, got "
                             f"{self.min_log2}, {self.init_log2}, {self.max_log2}")
        if self.hold < 0:
            raise ValueError(f"hold must be >= 0, got {self.hold}")

    @property
    def log2_m(self) -> float:
        return math.log2(self.n_replicas)


def update_log2_scale(log2_s: float, nonfinite: bool, step: int, last_backoff: int | None,
                      cfg: GradScaleConfig) -> tuple[float, int | None]:
    """One resblock's scale after update number ``step`` (0-based). Returns (log2 s, last backoff).

    ``nonfinite``: this resblock saw an inf/NaN in this update. Appendix D: grow by 2**(1/1000)
    when its gradients were all finite; otherwise divide by sqrt(2) unless a division happened
    within the last ``hold`` updates (step - last_backoff < hold); clamp to [M 2**7, M 2**24].
    """
    if nonfinite:
        if last_backoff is None or step - last_backoff >= cfg.hold:
            log2_s, last_backoff = log2_s - cfg.backoff_log2, step
    else:
        log2_s = log2_s + cfg.growth_log2
    lo, hi = cfg.log2_m + cfg.min_log2, cfg.log2_m + cfg.max_log2
    return min(max(log2_s, lo), hi), last_backoff


# --------------------------------------------------------------------------- branch hooks
class _ScaleIntoBranch(torch.autograd.Function):
    """Wraps a branch's output. Forward: cast to float32 (so the identity-path sum and its
    gradient stay float32). Backward: the gradient entering the branch is multiplied by s_l
    and stored in the branch's dtype (or rounded to ``emulate``)."""

    @staticmethod
    def forward(ctx, y, hooks, i):
        ctx.hooks, ctx.i, ctx.dtype = hooks, i, y.dtype
        return y.float() if y.dtype != torch.float32 else y.view_as(y)

    @staticmethod
    def backward(ctx, g):
        h, i = ctx.hooks, ctx.i
        g32 = g.float()
        gs = g32 * h.scale(i)
        if h.emulate is not None:
            gs = gs.to(h.emulate).float()  # what a 16-bit gradient buffer would hold
        h._record(i, "in", g32, gs)
        return gs.to(ctx.dtype), None, None


class _UnscaleOutOfBranch(torch.autograd.Function):
    """Wraps a branch's input. Backward: the gradient leaving the branch (times s_l) is
    checked, divided by s_l in float32 and zeroed if it had any inf/NaN (filtered)."""

    @staticmethod
    def forward(ctx, x, hooks, i):
        ctx.hooks, ctx.i, ctx.dtype = hooks, i, x.dtype
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        h, i = ctx.hooks, ctx.i
        gs = g.float()
        if h.emulate is not None:
            gs = gs.to(h.emulate).float()
        finite = torch.isfinite(gs).all()
        h._flag_nonfinite(i, ~finite)
        h._record(i, "out", None, gs)
        out = torch.where(finite, gs / h.scale(i), torch.zeros_like(gs))  # unscale + filter
        return out.to(ctx.dtype), None, None


class ActivationGradHooks:
    """Attach scale-in / unscale-out autograd functions around each resblock's branch(es).

    ``branches``: one entry per resblock, a module or a list of modules (all branches of that
    resblock). With all scales at 1 and ``emulate=torch.float16`` this is the *one global loss
    scale* baseline (scale the loss yourself); ``PerResblockGradScaler`` adds appendix D's
    per-resblock scales. ``stats`` holds, per backward, per resblock, the true (unscaled)
    norm of the incoming gradient and the float16 zero/subnormal/non-finite counts of the
    stored gradients at the branch entry and exit.
    """

    def __init__(self, branches: Sequence, emulate: torch.dtype | None = None,
                 track_stats: bool = True, stats_dtype: torch.dtype | None = None):
        groups = [list(b) if isinstance(b, (list, tuple)) else [b] for b in branches]
        if not groups:
            raise ValueError("no resblocks given: pass one branch module (or a list) per resblock")
        for g in groups:
            for m in g:
                if not isinstance(m, nn.Module):
                    raise TypeError("each branch must be an nn.Module (the residual branch, so "
                                    f"that block(x) = x + branch(x)); got {type(m).__name__}")
        if emulate not in (None, torch.float16, torch.bfloat16):
            raise ValueError(f"emulate must be None, torch.float16 or torch.bfloat16, got {emulate}")
        self.groups, self.emulate = groups, emulate
        self.track_stats = track_stats
        self.stats_dtype = stats_dtype or emulate or torch.float16  # count in the stored dtype
        self.n_blocks = len(groups)
        self.params: list[list[nn.Parameter]] = []
        seen: dict[int, int] = {}
        for i, g in enumerate(groups):
            ps = []
            for m in g:
                for p in m.parameters():
                    if id(p) in seen and seen[id(p)] != i:
                        raise ValueError(f"a parameter is shared by resblocks {seen[id(p)]} and {i}; "
                                         "per-resblock scales need disjoint parameters")
                    if id(p) not in seen:
                        seen[id(p)] = i
                        ps.append(p)
            self.params.append(ps)
        self.log2_scales = [0.0] * self.n_blocks
        self._found_nonfinite = [torch.zeros((), dtype=torch.bool) for _ in range(self.n_blocks)]
        self.stats: list[list[dict]] = []
        self._pending: dict[int, dict] = {}
        self._expected: dict[int, int] = {}  # per resblock, the records the next backward makes
        self._handles = []
        for i, g in enumerate(groups):
            for m in g:
                self._handles.append(m.register_forward_pre_hook(self._pre_hook(i)))
                self._handles.append(m.register_forward_hook(self._post_hook(i)))

    # -- hooks
    def _pre_hook(self, i):
        def hook(module, args):
            if not torch.is_grad_enabled() or not args or not isinstance(args[0], torch.Tensor):
                return None
            if i == 0 and module is self.groups[0][0]:  # a new forward pass: count its branches afresh
                self._expected = {}
            if args[0].requires_grad:  # its backward will record the gradient leaving the branch
                self._expected[i] = self._expected.get(i, 0) + 1
            return (_UnscaleOutOfBranch.apply(args[0], self, i), *args[1:])
        return hook

    def _post_hook(self, i):
        def hook(module, args, out):
            if not torch.is_grad_enabled():
                return None
            y = out if isinstance(out, torch.Tensor) else (
                out[0] if isinstance(out, tuple) and out and isinstance(out[0], torch.Tensor) else None)
            if y is not None and y.requires_grad:  # its backward will record the gradient entering
                self._expected[i] = self._expected.get(i, 0) + 1
            if isinstance(out, torch.Tensor):
                return _ScaleIntoBranch.apply(out, self, i)
            if isinstance(out, tuple) and out and isinstance(out[0], torch.Tensor):
                return (_ScaleIntoBranch.apply(out[0], self, i), *out[1:])
            raise TypeError(f"branch {type(module).__name__} returned {type(out).__name__}; "
                            "expected a tensor or a tuple whose first element is a tensor")
        return hook

    def scale(self, i: int) -> float:
        return 2.0 ** self.log2_scales[i]

    def _flag_nonfinite(self, i: int, flag: torch.Tensor) -> None:
        f = self._found_nonfinite[i]
        self._found_nonfinite[i] = f.to(flag.device) | flag  # stays on the device: no sync

    @property
    def scales(self) -> list[float]:
        return [2.0 ** v for v in self.log2_scales]

    def _record(self, i: int, where: str, true_grad, stored) -> None:
        if not self.track_stats:
            return
        d = self._pending.setdefault(i, {"zero": 0, "subnormal": 0, "nonfinite": 0, "numel": 0})
        st = float16_stats(stored, self.stats_dtype)
        for k in ("zero", "subnormal", "nonfinite", "numel"):
            d[k] += st[k]
        d["amax"] = max(d.get("amax", 0.0), float(stored.detach().abs().max()))  # as stored (scaled)
        if true_grad is not None:  # the largest true gradient entering one of the block's branches
            d["norm"] = max(d.get("norm", 0.0), float(true_grad.norm()))
        d[where] = True
        d["records"] = d.get("records", 0) + 1
        # a backward is complete when every branch entry and exit the forward pass wrapped has
        # recorded (2 per branch, 1 for a branch whose input needs no gradient): only then is the
        # row appended, so one row never mixes two backwards or two blocks
        if all(self._pending.get(j, {}).get("records", 0) >= self._expected.get(j, 1)
               for j in range(self.n_blocks)):
            self.stats.append([self._pending[j] for j in range(self.n_blocks)])
            self._pending, self._expected = {}, {}

    def last(self, key: str) -> list[float]:
        """Latest backward's per-resblock "norm", "underflow" (zero+subnormal fraction) or a count."""
        return _latest(self.stats, key, "or track_stats=False")

    def nonfinite_blocks(self) -> list[bool]:
        return [bool(f) for f in self._found_nonfinite]

    def reset(self) -> None:
        """Forget this backward's non-finite flags (``step`` does this)."""
        self._found_nonfinite = [torch.zeros_like(f) for f in self._found_nonfinite]
        self._pending, self._expected = {}, {}

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


class PerResblockGradScaler(ActivationGradHooks):
    """One gradient scale per resblock, updated by appendix D's rule (see the module docstring).

    Use: build it on the model's branches, ``loss.backward()`` (no loss scaling), then
    ``scaler.step(optimizer)`` which unscales the branch parameters' gradients, skips the
    update if any resblock (or any other parameter) has a non-finite gradient, and updates
    the scales. Counters: ``n_updates`` (calls to step), ``n_skipped``, ``skipped_per_block``;
    ``scale_history`` holds log2 scales after every step (figure 12).
    """

    def __init__(self, branches: Sequence, config: GradScaleConfig | None = None,
                 emulate: torch.dtype | None = None, track_stats: bool = True):
        super().__init__(branches, emulate=emulate, track_stats=track_stats)
        self.config = config or GradScaleConfig()
        start = self.config.log2_m + self.config.init_log2
        self.log2_scales = [start] * self.n_blocks
        self.last_backoff: list[int | None] = [None] * self.n_blocks
        self.n_updates = 0
        self.n_skipped = 0
        self.skipped_per_block = [0] * self.n_blocks
        self.scale_history: list[list[float]] = []
        self._unscaled = False

    @property
    def skip_rate(self) -> float:
        return self.n_skipped / max(self.n_updates, 1)

    def unscale_(self) -> None:
        """Divide each resblock's parameter gradients by its scale (once per step; ``step`` does
        it if it was not done). Call it before clipping the gradient norm."""
        if self._unscaled:
            return
        for i, ps in enumerate(self.params):
            inv = 1.0 / self.scale(i)
            for p in ps:
                if p.grad is not None:
                    p.grad.mul_(inv)
        self._unscaled = True

    def reset(self) -> None:
        super().reset()
        self._unscaled = False

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Unscale, check, step or skip, update scales. Returns True if the update was applied."""
        bad = [bool(f) for f in self._found_nonfinite]
        for i, ps in enumerate(self.params):  # also catch non-finite parameter gradients
            if not bad[i] and any(p.grad is not None and not torch.isfinite(p.grad).all() for p in ps):
                bad[i] = True
        branch_ids = {id(p) for ps in self.params for p in ps}
        other_bad = any(p.grad is not None and id(p) not in branch_ids and not torch.isfinite(p.grad).all()
                        for grp in optimizer.param_groups for p in grp["params"])
        applied = not (any(bad) or other_bad)
        if applied:
            self.unscale_()
            optimizer.step()
        else:
            self.n_skipped += 1
            for i, b in enumerate(bad):
                self.skipped_per_block[i] += int(b)
        for i in range(self.n_blocks):
            self.log2_scales[i], self.last_backoff[i] = update_log2_scale(
                self.log2_scales[i], bad[i], self.n_updates, self.last_backoff[i], self.config)
        self.n_updates += 1
        self.scale_history.append(list(self.log2_scales))
        self.reset()
        return applied

    def state_dict(self) -> dict:
        return {"log2_scales": list(self.log2_scales), "last_backoff": list(self.last_backoff),
                "n_updates": self.n_updates, "n_skipped": self.n_skipped,
                "skipped_per_block": list(self.skipped_per_block)}

    def load_state_dict(self, state: dict) -> None:
        if len(state["log2_scales"]) != self.n_blocks:
            raise ValueError(f"state has {len(state['log2_scales'])} resblocks, scaler has {self.n_blocks}")
        self.log2_scales = list(state["log2_scales"])
        self.last_backoff = list(state["last_backoff"])
        self.n_updates, self.n_skipped = state["n_updates"], state["n_skipped"]
        self.skipped_per_block = list(state["skipped_per_block"])


def replay_scales(log2_amax, n_updates: int, config: GradScaleConfig | None = None,
                  seed: int = 0, overflow_log2: float = math.log2(65520.0)) -> dict:
    """Run appendix D's rule for ``n_updates`` updates against recorded gradient maxima.

    ``log2_amax``: (T, L) base-2 logs of the largest |activation gradient| of each resblock at
    T recorded training steps (true, unscaled values, e.g. ``ActivationGradHooks.last("amax")``
    of a float32 run). Each simulated update draws one recorded row at random; resblock l
    overflows when log2 s_l + log2_amax >= log2 65520 (the float16 value that rounds to inf).
    Cheap (no model), so it can replay the thousands of updates the paper's scales need to
    settle (figure 12). Returns {"log2_scales": (n_updates+1, L) history, "skipped": n,
    "state": a ``PerResblockGradScaler.state_dict``-style dict}.
    """
    import numpy as np

    cfg = config or GradScaleConfig()
    amax = np.asarray(log2_amax, dtype=float)
    if amax.ndim != 2 or amax.shape[0] < 1:
        raise ValueError(f"log2_amax must be (T, L) with T >= 1, got shape {amax.shape}")
    rng = np.random.default_rng(seed)
    n_blocks = amax.shape[1]
    log2_s = [cfg.log2_m + cfg.init_log2] * n_blocks
    last: list[int | None] = [None] * n_blocks
    hist, skipped, per_block = [list(log2_s)], 0, [0] * n_blocks
    rows = rng.integers(0, amax.shape[0], size=n_updates)
    for t in range(n_updates):
        bad = [log2_s[i] + amax[rows[t], i] >= overflow_log2 for i in range(n_blocks)]
        applied = not any(bad)
        skipped += int(not applied)
        for i in range(n_blocks):
            per_block[i] += int(bad[i])
            log2_s[i], last[i] = update_log2_scale(log2_s[i], bad[i], t, last[i], cfg)
        hist.append(list(log2_s))
    state = {"log2_scales": list(log2_s), "last_backoff": last, "n_updates": n_updates,
             "n_skipped": skipped, "skipped_per_block": per_block}
    return {"log2_scales": np.asarray(hist), "skipped": skipped, "state": state}


# --------------------------------------------------------------------------- the ordinary case
PRECISION_ENV = "DALLE_PRECISION"
PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Precision:
    """The precision a device trains in: ``autocast()`` for the forward, then ``backward``,
    ``unscale`` (before clipping) and ``step`` for the update. Master weights stay float32 in
    every mode. ``step`` never applies a non-finite gradient: it skips the update instead
    (``torch.amp.GradScaler`` does so under fp16; here the same holds for fp32 and bf16) and
    counts it in ``n_skipped``."""

    device_type: str
    dtype: torch.dtype
    scaler: torch.amp.GradScaler | None = None
    reason: str = ""
    n_skipped: int = 0

    @property
    def name(self) -> str:
        return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def __str__(self) -> str:
        return f"{self.name} on {self.device_type}" + (f" ({self.reason})" if self.reason else "")

    def autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        """loss.backward(), of the scaled loss under fp16 (call once per micro-batch)."""
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring fp16 gradients back to their true size (before clipping them); else nothing."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer, grad_norm: torch.Tensor | float | None = None) -> bool:
        """optimizer.step() unless a gradient is inf or NaN, then zero_grad. Returns True if
        the weights changed.

        fp16: ``GradScaler.step`` checks and skips (and lowers its scale). fp32 / bf16: the
        gradient norm decides (pass the one ``clip_grad_norm_`` returned; otherwise it is
        computed here): a non-finite norm means a non-finite gradient, and the step is
        skipped, so a bad batch never writes inf or NaN into a weight."""
        if self.scaler is not None:
            before = self.scaler.get_scale()
            self.scaler.step(optimizer)
            self.scaler.update()
            applied = not self.scaler.is_enabled() or self.scaler.get_scale() >= before
        else:
            if grad_norm is None:
                grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
                grad_norm = torch.linalg.vector_norm(torch.stack(
                    [torch.linalg.vector_norm(g.detach().float()) for g in grads])) if grads else 0.0
            applied = bool(torch.isfinite(torch.as_tensor(grad_norm)).all())
            if applied:
                optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self.n_skipped += int(not applied)
        return applied

    def backward_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> bool:
        """backward, step (skipped on a non-finite gradient), zero_grad. Returns True if stepped."""
        self.backward(loss)
        self.unscale(optimizer)
        return self.step(optimizer)


class ResblockPrecision:
    """Appendix D in a training loop: the interface of ``Precision`` (autocast, backward,
    unscale, step) with one gradient scale per resblock (``PerResblockGradScaler``) in place of
    one loss scale. On CUDA it runs real float16 autocast; on a CPU, where float16 matmuls are
    many times slower, it computes in float32 and emulates float16 storage of the activation
    gradients at every branch boundary, as lesson 07 does, so the mechanism (underflow, the
    scales, the skipped steps) is the same one. ``branches``: per resblock, its branch
    module(s). A non-finite gradient in any block skips the whole update (no weight changes)
    and lowers only that block's scale."""

    def __init__(self, device: torch.device | str, branches: Sequence, config: GradScaleConfig | None = None):
        device = torch.device(device)
        emulate = None if device.type == "cuda" else torch.float16
        how = "real float16 autocast" if emulate is None else "float32 compute, float16 gradients emulated"
        self.compute = Precision(device.type, torch.float16 if emulate is None else torch.float32, None,
                                 f"per-resblock gradient scaling, {how}")
        self.grad_scaler = PerResblockGradScaler(branches, config, emulate=emulate, track_stats=False)
        self.scaler = None  # no loss scaler: the resblocks' scales do its job
        self.n_skipped = 0

    name = "fp16"
    dtype = torch.float16

    def __str__(self) -> str:
        return f"fp16 on {self.compute.device_type} ({self.compute.reason})"

    def autocast(self):
        return self.compute.autocast()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        self.grad_scaler.unscale_()

    def step(self, optimizer: torch.optim.Optimizer, grad_norm: torch.Tensor | float | None = None) -> bool:
        applied = self.grad_scaler.step(optimizer)
        optimizer.zero_grad(set_to_none=True)
        self.grad_scaler.scale_history.clear()  # a long run keeps only the current scales
        self.n_skipped += int(not applied)
        return applied

    def state_dict(self) -> dict:
        return self.grad_scaler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.grad_scaler.load_state_dict(state)


def _requested(prefer: str | None) -> tuple[str, str]:
    """(choice, where it came from): the argument, else ``$DALLE_PRECISION``, else auto."""
    if prefer is not None:
        choice, source = prefer, "asked for"
    elif os.environ.get(PRECISION_ENV, "").strip():
        choice, source = os.environ[PRECISION_ENV], f"${PRECISION_ENV}"
    else:
        choice, source = "auto", "auto"
    key = str(choice).strip().lower()
    if key not in PRECISION_CHOICES:
        raise ValueError(f"unknown precision {choice!r} ({source}): choose one of "
                         f"{', '.join(PRECISION_CHOICES)}")
    return key, source


def pick_precision(device: torch.device | str | None = None, prefer: str | None = None,
                   bf16_supported: bool | None = None) -> Precision:
    """The precision to train and sample in: the one policy every command, lesson and
    benchmark uses.

    ``prefer`` ("auto", "fp32", "bf16", "fp16"; default ``$DALLE_PRECISION``, else "auto").
    ``auto`` picks:

    * CUDA: bf16 where the card supports it (A100, H100, L4, RTX 30xx+), else fp16 with
      ``torch.amp.GradScaler`` (T4, V100);
    * CPU: bf16 only where the CPU computes it natively (``utils.cpu_bf16_native``: AVX512_BF16
      or AMX on x86, the bf16 extension on Arm), float32 otherwise -- on an AVX2-only CPU a
      bf16 matmul is 7-40x slower than float32;
    * anything else (MPS): float32.

    ``bf16_supported`` overrides the detection (tests use it to exercise every branch).
    """
    device = torch.device(device) if device is not None else \
        torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind = device.type
    choice, source = _requested(prefer)
    if bf16_supported is None:
        if kind == "cuda":
            bf16_supported = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        elif kind == "cpu":
            bf16_supported = utils.cpu_bf16_native()  # looked up at call time: tests replace it
        else:
            bf16_supported = False
    if choice == "auto":
        if bf16_supported and kind in ("cuda", "cpu"):
            choice, reason = "bf16", f"auto: this {'GPU' if kind == 'cuda' else 'CPU'} computes bf16 natively"
        elif kind == "cuda":
            choice, reason = "fp16", "auto: this GPU has no bf16; fp16 with loss scaling"
        elif kind == "cpu":
            choice, reason = "fp32", "auto: this CPU has no native bf16"
        else:
            choice, reason = "fp32", f"auto: float32 on {kind}"
    else:
        reason = source
        if choice == "bf16" and kind == "cpu" and not bf16_supported:
            import warnings

            warnings.warn("bf16 on a CPU without native bf16 instructions is emulated and can be "
                          "7-40x slower than float32: use precision 'auto' or 'fp32'", stacklevel=2)
    dtype = _DTYPES[choice]
    scaler = None
    if dtype == torch.float16:  # (disabled, not warned about, when CUDA is asked for but absent)
        scaler = torch.amp.GradScaler(kind, enabled=kind != "cuda" or torch.cuda.is_available())
    return Precision(kind, dtype, scaler, reason)


def as_precision(precision: "Precision | str | None", device: torch.device | str | None) -> Precision:
    """A ``Precision`` from one, from a name ("auto", "fp32", "bf16", "fp16") or from None
    (the policy of :func:`pick_precision`)."""
    if isinstance(precision, Precision):
        return precision
    return pick_precision(device, prefer=precision)


def fp32_logits(head: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """Compute the output head in float32 even inside autocast (appendix D keeps logits fp32)."""
    with torch.autocast(h.device.type, enabled=False):
        return head(h.float())


def check_fp32_master_weights(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Raise if any parameter, its gradient or an optimizer state tensor is not float32."""
    for name, p in model.named_parameters():
        if p.dtype != torch.float32:
            raise AssertionError(f"master weight {name} is {p.dtype}; keep master weights float32 "
                                 "(use torch.autocast instead of model.half())")
        if p.grad is not None and p.grad.dtype != torch.float32:
            raise AssertionError(f"gradient of {name} is {p.grad.dtype}, expected float32")
    if optimizer is not None:
        for st in optimizer.state.values():
            for k, v in st.items():
                if isinstance(v, torch.Tensor) and v.is_floating_point() and v.numel() > 1 \
                        and v.dtype != torch.float32:
                    raise AssertionError(f"optimizer state {k} is {v.dtype}, expected float32")


# --------------------------------------------------------------------------- the lesson's toy
@dataclass(frozen=True)
class DeepStackConfig:
    """A deep stack of residual MLP blocks without normalisation inside the blocks, so the
    residual stream grows by about ``growth`` per block; a final LayerNorm and a linear head.
    The backward pass mirrors it: the activation gradient shrinks by about ``growth`` per block
    from the first resblock to the last, the pattern the paper reports (2.4)."""

    d_in: int = 16
    d_model: int = 32
    hidden: int = 64
    n_blocks: int = 48
    n_classes: int = 8
    growth: float = 1.5   # target growth of the residual stream per block at init


class ResidualMLPBlock(nn.Module):
    """y = x + branch(x), branch = Linear -> GELU -> Linear.  # (B, d) -> (B, d)"""

    def __init__(self, d: int, hidden: int, out_std: float):
        super().__init__()
        self.branch = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d))
        nn.init.normal_(self.branch[0].weight, std=math.sqrt(2.0 / d))
        nn.init.normal_(self.branch[2].weight, std=out_std / math.sqrt(hidden))
        nn.init.zeros_(self.branch[0].bias)
        nn.init.zeros_(self.branch[2].bias)

    def forward(self, x):
        return x + self.branch(x)


class DeepResidualStack(nn.Module):
    """embed (fp32) -> n_blocks resblocks -> LayerNorm (fp32 gains) -> head (fp32 logits)."""

    def __init__(self, cfg: DeepStackConfig = DeepStackConfig()):
        super().__init__()
        if cfg.growth <= 1.0:
            raise ValueError(f"growth must be > 1 (the residual stream grows), got {cfg.growth}")
        self.config = cfg
        self.embed = nn.Linear(cfg.d_in, cfg.d_model)
        # |x + b(x)|^2 ~ |x|^2 (1 + c^2) for a branch of gain c uncorrelated with x
        c = math.sqrt(cfg.growth ** 2 - 1.0)
        out_std = c / math.sqrt(0.5 * 0.84)  # GELU keeps about 0.42 of the input's power
        self.blocks = nn.ModuleList(ResidualMLPBlock(cfg.d_model, cfg.hidden, out_std)
                                    for _ in range(cfg.n_blocks))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.n_classes)

    @property
    def branches(self) -> list[nn.Module]:
        return [b.branch for b in self.blocks]

    def forward(self, x):  # (B, d_in) -> (B, n_classes)
        h = self.embed(x)  # (B, d)
        for blk in self.blocks:
            h = blk(h)
        return fp32_logits(self.head, self.norm(h))  # (B, n_classes)


def teacher_task(n: int, cfg: DeepStackConfig, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and labels of a random linear teacher: y = argmax(W x). Deterministic from seed."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(cfg.n_classes, cfg.d_in, generator=g)
    x = torch.randn(n, cfg.d_in, generator=g)
    x = x * (math.sqrt(cfg.d_in) / x.norm(dim=1, keepdim=True))  # (n, d_in), every row the same norm
    return x, (x @ w.T).argmax(-1)
