"""Lesson 08 benchmark: our DALL-E training throughput and generation time on CPU.

The comparison setting (shared with bench/baseline_*, which measures DALLE-pytorch):
d_model 256, 4 layers, 4 heads of 64, 32 text tokens, 32x32 images -> an 8x8 token grid
(512 codes), batch 32, 2 CPU threads, images pre-tokenised (the dVAE is not in the
training step). Prints training image-caption pairs/s (float32 and bf16 autocast, SDPA with
the paper's sparse masks and with dense causal attention) and the time to generate 16
images (4 captions x 4, top-k 32, KV cache, bf16, dVAE decoding included).

    .venv/bin/python bench/throughput.py [--steps 10] [--threads 2]

The numbers depend on the machine and on what else runs on it; report them with `uptime`.
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
from dalle_mini_impl.tokenizer import course_tokenizer  # noqa: E402
from dalle_mini_impl.train_dalle import make_optimizer  # noqa: E402

CAPTIONS = ["a small red circle on the left", "a large blue square at the top",
            "a large green triangle in the centre", "a small yellow diamond on the right"]


def build(attention: str) -> DALLE:
    torch.manual_seed(0)
    tok = course_tokenizer(text_len=32)
    dvae = DiscreteVAE(DVAEConfig.toy(image_size=32, grid=8, n_codes=512))
    cfg = prior_config_for(tok, dvae, d_model=256, n_layers=4, n_heads=4, attention=attention)
    return DALLE(tok, dvae, DALLEConfig(cfg))


def train_pairs_per_s(model: DALLE, bf16: bool, steps: int, warmup: int = 2, batch: int = 32) -> float:
    g = torch.Generator().manual_seed(0)
    text = torch.randint(0, model.tokenizer.vocab_size, (batch, 32), generator=g)
    image = torch.randint(0, 512, (batch, 64), generator=g)
    opt = make_optimizer(model.prior, 1e-4, 0.045)
    model.train()
    for i in range(warmup + steps):
        if i == warmup:
            t = time.perf_counter()
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            loss = model(text, image)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.prior.parameters(), 4.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return steps * batch / (time.perf_counter() - t)


def generate_seconds(model: DALLE, bf16: bool, use_cache: bool = True, repeats: int = 3) -> float:
    model.eval()
    model.generate(CAPTIONS[:1], n=1, top_k=32, seed=0, bf16=bf16, use_cache=use_cache)  # warm-up
    best = float("inf")
    for r in range(repeats):
        t = time.perf_counter()
        model.generate(CAPTIONS, n=4, top_k=32, seed=r, bf16=bf16, use_cache=use_cache)
        best = min(best, time.perf_counter() - t)
    return best


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-cache-too", action="store_true", help="also time generation without the KV cache")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{os.getloadavg()[0]:.1f} (other work on the machine slows every figure)")
    res = {}
    for attention in ("sparse", "full"):
        model = build(attention)
        for bf16 in (False, True):
            key = f"train_pairs_per_s_{attention}_{'bf16' if bf16 else 'fp32'}"
            res[key] = train_pairs_per_s(model, bf16, args.steps)
            print(f"training, {attention:6s} attention, {'bf16' if bf16 else 'fp32'}: "
                  f"{res[key]:7.1f} image-caption pairs/s (batch 32, {args.steps} steps)", flush=True)
    model = build("sparse")
    res["generate_16_s_bf16_cache"] = generate_seconds(model, True)
    res["generate_16_s_fp32_cache"] = generate_seconds(model, False)
    print(f"generate 16 images (KV cache, top-k 32, dVAE decode): {res['generate_16_s_bf16_cache']:.2f} s bf16, "
          f"{res['generate_16_s_fp32_cache']:.2f} s fp32")
    if args.no_cache_too:
        res["generate_16_s_fp32_nocache"] = generate_seconds(model, False, use_cache=False, repeats=1)
        print(f"generate 16 images without the KV cache: {res['generate_16_s_fp32_nocache']:.2f} s fp32")
    return res


if __name__ == "__main__":
    main()
