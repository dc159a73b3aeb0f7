"""Training throughput, model FLOPs utilisation (MFU) and peak memory per preset, for the
dVAE and the transformer prior, on whatever device this runs on.

    .venv/bin/python bench/gpu_throughput.py --steps 3            # CPU: the cpu preset only
    .venv/bin/python bench/gpu_throughput.py --steps 1 --all      # CPU: every preset, batch --cpu-batch
    python bench/gpu_throughput.py --steps 20                     # CUDA: cpu, gpu16, gpu80

Each row times ``--steps`` training steps (forward, backward, clip, AdamW; one warm-up step
first, not timed) on random tokens or images of the preset's sizes, under the precision and
optimizer ``train`` would use there (``accel.py``: bf16 autocast where supported, else fp16
with the loss scaler; fused AdamW on CUDA).

FLOPs of a step
---------------
* transformer, per token (position) of a training step, as in PaLM (appendix B)::

      F_token = 6 N_mm + 12 L s d

  ``N_mm``: the matrix weights a token passes through (``12 d^2`` per layer plus the average
  output head), ``L`` layers, ``s`` positions, ``d = d_model``; the second term is attention
  (``q k^T`` and the sum over ``v``, dense: SDPA with a boolean mask computes every score).
  See ``dalle_mini_impl/training/sizing.py``. tokens/s counts every position of every sequence.
* dVAE: counted, not derived -- ``torch.utils.flop_counter.FlopCounterMode`` over one
  training forward + backward of one image on fake tensors (convolutions and matmuls), times
  the batch. Its tokens/s are image tokens produced (``grid**2`` per image).

MFU = achieved FLOP/s / the device's peak dense bf16 (fp16 on a T4) tensor FLOP/s from the
vendor's data sheet: T4 65, L4 121, A100 312, H100 SXM 989, H200 989 TFLOP/s. Other devices,
and the CPU, print ``n/a`` unless ``--peak-tflops`` gives the peak.

Peak memory: ``torch.cuda.max_memory_allocated`` per row on CUDA. On CPU the resident set
size (``resource.getrusage``'s ``ru_maxrss``) can only grow within a process, so each row runs
in its own process and reports that process's maximum (the Python interpreter and torch
included, about 0.3-0.5 GiB before any model).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

PEAK_TFLOPS = [("H200", 989.0), ("H100 SXM", 989.0), ("H100 80GB HBM3", 989.0), ("A100", 312.0),
               ("L4", 121.0), ("T4", 65.0)]  # dense bf16 (T4: fp16) tensor-core TFLOP/s


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    """--peak-tflops if given, else the table entry whose name is in the CUDA device's name."""
    if given is not None:
        if given <= 0:
            raise SystemExit(f"--peak-tflops must be positive, got {given}")
        return given
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tf for key, tf in PEAK_TFLOPS if key in name), None)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step, steps: int, device) -> float:
    step()  # warm-up (allocations, kernel selection)
    _sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return time.perf_counter() - t


def bench_transformer(preset, batch: int, steps: int, device, text_vocab: int) -> dict:
    from dalle_mini_impl.dalle import dalle_loss
    from dalle_mini_impl.precision import pick_precision
    from dalle_mini_impl.training.sizing import prior_config_for_preset, transformer_flops_per_token
    from dalle_mini_impl.training.dalle import make_optimizer
    from dalle_mini_impl.transformer import Transformer

    cfg = prior_config_for_preset(preset, text_vocab=text_vocab)
    torch.manual_seed(0)
    model = Transformer(cfg).to(device)
    opt = make_optimizer(model, 1e-4, 0.045, device)
    prec = pick_precision(device)
    text = torch.randint(0, cfg.text_vocab, (batch, cfg.text_len), device=device)
    image = torch.randint(0, cfg.image_vocab, (batch, cfg.image_len), device=device)

    def step():
        with prec.autocast():
            t, i = model(text, image)
        prec.backward(dalle_loss(t, i, text, image)["loss"])
        prec.unscale(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 4.0)
        prec.step(opt)

    seconds = _timed(step, steps, device)
    tokens = steps * batch * cfg.seq_len
    return {"model": "transformer", "params": sum(p.numel() for p in model.parameters()),
            "batch": batch, "precision": prec.name, "tokens_per_s": tokens / seconds,
            "flops_per_s": tokens * transformer_flops_per_token(cfg) / seconds}


def dvae_flops_per_image(cfg) -> float:
    """FLOPs of one training forward + backward of one image, counted on fake tensors."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    from dalle_mini_impl.dvae import DiscreteVAE, dvae_loss

    with FakeTensorMode():
        model = DiscreteVAE(cfg)
        x = torch.rand(1, cfg.channels, cfg.image_size, cfg.image_size)
        with FlopCounterMode(display=False) as fc:
            dvae_loss(model, x, tau=1.0, beta=1.0)[0].loss.backward()
    return float(fc.get_total_flops())


def bench_dvae(preset, batch: int, steps: int, device) -> dict:
    from dalle_mini_impl.dvae import DiscreteVAE, train_step
    from dalle_mini_impl.precision import pick_precision
    from dalle_mini_impl.training.sizing import dvae_config_for_preset
    from dalle_mini_impl.training.dalle import make_optimizer

    cfg = dvae_config_for_preset(preset)
    torch.manual_seed(0)
    model = DiscreteVAE(cfg).to(device)
    opt = make_optimizer(model, 1e-4, 0.0, device)
    images = torch.rand(batch, cfg.channels, cfg.image_size, cfg.image_size, device=device)
    prec = pick_precision(device)
    seconds = _timed(lambda: train_step(model, opt, images, tau=1.0, beta=1.0, precision=prec), steps, device)
    n_images = steps * batch
    return {"model": "dvae", "params": sum(p.numel() for p in model.parameters()), "batch": batch,
            "precision": prec.name, "tokens_per_s": n_images * cfg.grid ** 2 / seconds,
            "flops_per_s": n_images * dvae_flops_per_image(cfg) / seconds}


def run_row(kind: str, preset_name: str, batch: int, steps: int, device_name: str, threads: int,
            text_vocab: int) -> dict:
    from dalle_mini_impl.presets import PRESETS

    torch.set_num_threads(threads)
    device = torch.device(device_name)
    preset = PRESETS[preset_name]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if kind == "transformer":
        row = bench_transformer(preset, batch, steps, device, text_vocab)
    else:
        row = bench_dvae(preset, batch, steps, device)
    if device.type == "cuda":
        row["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    else:  # ru_maxrss is KiB on Linux, bytes on macOS
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        row["peak_mib"] = rss / (2**20 if sys.platform == "darwin" else 2**10)
    return dict(row, preset=preset_name)


def _child(queue, *args):
    try:
        queue.put(run_row(*args))
    except BaseException as exc:  # report, do not hang the parent
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10, help="timed steps per row (after one warm-up step)")
    p.add_argument("--all", action="store_true", help="on CPU also run gpu16 and gpu80 (at --cpu-batch)")
    p.add_argument("--presets", default=None, help="comma-separated presets (default: by device, see --all)")
    p.add_argument("--cpu-batch", type=int, default=2, help="batch of the GPU presets when run on CPU")
    p.add_argument("--batch", type=int, default=None,
                   help="batch of every row (default: the preset's micro-batch on CUDA; the cpu preset's batch)")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's peak, for MFU")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--text-vocab", type=int, default=512, help="text vocabulary (train dalle's --bpe-vocab default)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    args = p.parse_args(argv)
    if args.steps < 1:
        raise SystemExit("--steps must be >= 1")
    from dalle_mini_impl.presets import PRESETS
    from dalle_mini_impl.utils import cpu_summary, get_device

    device = get_device(args.device)
    names = args.presets.split(",") if args.presets else \
        (["cpu", "gpu16", "gpu80"] if device.type == "cuda" or args.all else ["cpu"])
    for n in names:
        if n not in PRESETS:
            raise SystemExit(f"unknown preset {n!r}; choose from {sorted(PRESETS)}")
    peak = peak_tflops(device, args.peak_tflops)
    torch.set_num_threads(args.threads)
    label = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_summary()
    print(f"{label}, load average {os.getloadavg()[0]:.1f}; "
          f"peak {'%.0f TFLOP/s' % peak if peak else 'unknown (MFU n/a; give --peak-tflops)'}; "
          f"{args.steps} timed steps per row", flush=True)
    ctx = mp.get_context("spawn")
    rows = []
    for name in names:
        pr = PRESETS[name]
        for kind in ("dvae", "transformer"):
            if args.batch:
                batch = args.batch
            elif device.type != "cuda" and name != "cpu":
                batch = args.cpu_batch
            elif kind == "transformer":
                batch = pr.micro_batch or pr.batch_size
            else:
                batch = pr.batch_size
            queue = ctx.Queue()
            proc = ctx.Process(target=_child, args=(queue, kind, name, batch, args.steps, str(device),
                                                    args.threads, args.text_vocab))
            proc.start()
            row = queue.get()
            proc.join()
            if "error" in row:
                print(f"{name:6s} {kind:11s} failed: {row['error']}", flush=True)
                continue
            row["mfu"] = row["flops_per_s"] / (peak * 1e12) if peak else None
            rows.append(row)
    print(f"\n{'preset':7s}{'model':12s}{'params':>12s}{'batch':>6s}{'prec':>6s}{'tokens/s':>12s}"
          f"{'TFLOP/s':>9s}{'MFU':>8s}{'peak MiB':>10s}")
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        print(f"{r['preset']:7s}{r['model']:12s}{r['params']:>12,}{r['batch']:>6d}{r['precision']:>6s}"
              f"{r['tokens_per_s']:>12,.0f}{r['flops_per_s'] / 1e12:>9.3f}{mfu:>8s}{r['peak_mib']:>10,.0f}")
    print("peak MiB: " + ("torch.cuda.max_memory_allocated per row" if device.type == "cuda"
                          else "max resident set size of the row's own process (ru_maxrss)"))
    return rows


if __name__ == "__main__":
    main()
