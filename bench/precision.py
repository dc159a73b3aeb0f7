"""Lesson 07 benchmark: training-step time of the deep residual stack in each precision mode.

    python bench/precision.py [--blocks 18] [--batch 128] [--steps 20] [--threads 1]

Prints milliseconds per step (forward + backward + Adam) for: float32; bf16 autocast;
fp16 autocast with torch.amp.GradScaler; float32 compute with emulated float16 gradient storage
and the per-resblock scaler (the lesson's CPU path); and, on CUDA, real fp16 autocast with the
per-resblock scaler. Figures, not a timed test.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from dalle_mini_impl import get_device  # noqa: E402
from dalle_mini_impl import precision as P  # noqa: E402


def time_mode(mode: str, cfg: P.DeepStackConfig, batch: int, steps: int, device) -> float:
    torch.manual_seed(0)
    model = P.DeepResidualStack(cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x, y = P.teacher_task(batch, cfg)
    x, y = x.to(device), y.to(device)
    prec = {"fp32": P.pick_precision(device, prefer="fp32"), "bf16": P.pick_precision(device, prefer="bf16"),
            "fp16+GradScaler": P.pick_precision(device, prefer="fp16")}.get(mode)
    sc = None
    if mode == "fp16-emulated+per-resblock":
        sc = P.PerResblockGradScaler(model.branches, emulate=torch.float16, track_stats=False)
    elif mode == "fp16-autocast+per-resblock":
        sc = P.PerResblockGradScaler(model.branches, track_stats=False)
        prec = P.pick_precision(device, prefer="fp16")

    def step():
        if sc is None:
            with prec.autocast():
                logits = model(x)
            prec.backward_step(F.cross_entropy(logits, y, reduction="sum"), opt)
        else:
            ctx = prec.autocast() if prec is not None else torch.autocast(device.type, enabled=False)
            with ctx:
                logits = model(x)
            F.cross_entropy(logits, y, reduction="sum").backward()
            sc.step(opt)
            opt.zero_grad(set_to_none=True)

    for _ in range(3):  # warm-up
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    P.check_fp32_master_weights(model, opt)
    return (time.perf_counter() - t0) / steps * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--blocks", type=int, default=18)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = get_device(args.device)
    cfg = P.DeepStackConfig(n_blocks=args.blocks)
    modes = ["fp32", "bf16", "fp16+GradScaler", "fp16-emulated+per-resblock"]
    if device.type == "cuda":
        modes.append("fp16-autocast+per-resblock")
    print(f"device {device.type}, threads {args.threads}, {args.blocks} resblocks, batch {args.batch}")
    for mode in modes:
        steps = max(2, args.steps // 10) if (mode.startswith("fp16+") and device.type == "cpu") else args.steps
        print(f"{mode:28s} {time_mode(mode, cfg, args.batch, steps, device):8.1f} ms/step", flush=True)


if __name__ == "__main__":
    main()
