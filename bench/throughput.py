"""Lesson 08 benchmark: our DALL-E training throughput and generation time on CPU.

The comparison setting (shared with bench/baseline_*, which measures DALLE-pytorch):
d_model 256, 4 layers, 4 heads of 64, 32 text tokens, 32x32 images -> an 8x8 token grid
(512 codes), batch 32, images pre-tokenised (the dVAE is not in the training step). Prints,
for float32 and (where this CPU computes it natively) bf16 autocast:

* training image-caption pairs/s, with the paper's sparse masks and with dense causal attention;
* generating 16 images (4 captions x 4, top-k 32, KV cache): the whole call (dVAE decoding
  included) and the 64 sequential token steps alone, in ms per step, next to the step's
  *floor*: its arithmetic (the matmuls of the 4 layers and the image head for 16 sequences, plus
  attention over the cached keys) at this thread's measured matmul rate (a 1024x1024x1024
  product in the same dtype). The ratio says how much of a step is overhead.

    .venv/bin/python bench/throughput.py [--steps 10] [--threads 2]

The first line names the CPU (model, the instruction set PyTorch uses, whether bf16 is native).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from dalle_mini_impl.dalle import DALLE, DALLEConfig, prior_config_for  # noqa: E402
from dalle_mini_impl.dvae import DiscreteVAE, DVAEConfig  # noqa: E402
from dalle_mini_impl.precision import pick_precision  # noqa: E402
from dalle_mini_impl.tokenizer import course_tokenizer  # noqa: E402
from dalle_mini_impl.training.dalle import make_optimizer  # noqa: E402
from dalle_mini_impl.utils import cpu_bf16_native, cpu_summary  # noqa: E402

CAPTIONS = ["a small red circle on the left", "a large blue square at the top",
            "a large green triangle in the centre", "a small yellow diamond on the right"]


def build(attention: str) -> DALLE:
    torch.manual_seed(0)
    tok = course_tokenizer(text_len=32)
    dvae = DiscreteVAE(DVAEConfig.toy(image_size=32, grid=8, n_codes=512))
    cfg = prior_config_for(tok, dvae, d_model=256, n_layers=4, n_heads=4, attention=attention)
    return DALLE(tok, dvae, DALLEConfig(cfg))


def train_pairs_per_s(model: DALLE, prec, steps: int, warmup: int = 2, batch: int = 32) -> float:
    g = torch.Generator().manual_seed(0)
    text = torch.randint(0, model.tokenizer.n_text_tokens, (batch, 32), generator=g)
    image = torch.randint(0, 512, (batch, 64), generator=g)
    opt = make_optimizer(model.prior, 1e-4, 0.045)
    model.train()
    for i in range(warmup + steps):
        if i == warmup:
            t = time.perf_counter()
        with prec.autocast():
            loss = model(text, image)["loss"]
        prec.backward(loss)
        prec.unscale(opt)
        prec.step(opt, torch.nn.utils.clip_grad_norm_(model.prior.parameters(), 4.0))
    return steps * batch / (time.perf_counter() - t)


def matmul_gflops(dtype: torch.dtype, n: int = 1024, repeats: int = 5) -> float:
    """This thread's matmul rate: the best of ``repeats`` n x n x n products."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def decode_step_flops(model: DALLE, batch: int = 16) -> float:
    """FLOPs of the 64 token steps of one generate call, averaged per step: per sequence and
    step, 2 x (the block matrices + the image head) and 4 x d_model x (keys attended), over the
    keys 0..p of each step (every key of the cache is read: the masks do not shorten it)."""
    cfg = model.config.prior
    d, L = cfg.d_model, cfg.n_layers
    mm = L * (4 * d * d + 2 * cfg.mlp_ratio * d * d) + d * cfg.image_vocab
    N, T = cfg.image_len, cfg.text_len
    keys = sum(T + 1 + j + 1 for j in range(N - 1)) / (N - 1)  # average keys at a token step
    return batch * (2 * mm + L * 4 * d * keys)


def generate_seconds(model: DALLE, prec, repeats: int = 3) -> tuple[float, float]:
    """(best seconds of a whole generate call for 16 images, best seconds of its token loop)."""
    model.eval()
    text = model.encode_text(CAPTIONS).repeat_interleave(4, dim=0)  # (16, T)
    model.generate(CAPTIONS[:1], n=1, top_k=32, seed=0, precision=prec)  # warm-up
    best_call = best_loop = float("inf")
    ctx = prec.autocast if prec.name == "bf16" else torch.no_grad
    for r in range(repeats):
        t = time.perf_counter()
        model.generate(CAPTIONS, n=4, top_k=32, seed=r, precision=prec)
        best_call = min(best_call, time.perf_counter() - t)
        with ctx():
            t = time.perf_counter()
            model.generate_tokens(text, top_k=32, generator=torch.Generator().manual_seed(r))
            best_loop = min(best_loop, time.perf_counter() - t)
    return best_call, best_loop


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(cpu_summary())
    print(f"load average {os.getloadavg()[0]:.1f} (other work on the machine slows every figure)", flush=True)
    precs = [pick_precision("cpu", "fp32")] + ([pick_precision("cpu", "bf16")] if cpu_bf16_native() else [])
    if not cpu_bf16_native():
        print("(no native bf16 on this CPU: bf16 is not measured; it would be the slow emulated path)")
    res = {}
    for attention in ("sparse", "full"):
        model = build(attention)
        for prec in precs:
            key = f"train_pairs_per_s_{attention}_{prec.name}"
            res[key] = train_pairs_per_s(model, prec, args.steps)
            print(f"training, {attention:6s} attention, {prec.name}: {res[key]:7.1f} image-caption pairs/s "
                  f"(batch 32, {args.steps} steps)", flush=True)
    model = build("sparse")
    flops = decode_step_flops(model)
    for prec in precs:
        call, loop = generate_seconds(model, prec)
        rate = matmul_gflops(prec.dtype)
        step_ms, floor_ms = 1000 * loop / 64, flops / (rate * 1e9) * 1000
        res[f"generate_16_s_{prec.name}"] = call
        res[f"decode_step_ms_{prec.name}"] = step_ms
        res[f"decode_floor_ms_{prec.name}"] = floor_ms
        print(f"generate 16 images, {prec.name}: {call:.2f} s per call (KV cache, top-k 32, dVAE decode); "
              f"token step {step_ms:.2f} ms, floor {floor_ms:.2f} ms ({flops / 1e6:.0f} MFLOP at "
              f"{rate:.0f} GFLOP/s) = {step_ms / floor_ms:.1f}x the floor", flush=True)
    return res


if __name__ == "__main__":
    main()
