"""Benchmark lesson 06: time and peak memory of each attention path, and the KV cache.

    python bench/attention.py                 # CPU (and the GPU too where there is one)
    python bench/attention.py --compile-flex  # also compiled flex_attention on CPU (slow to
                                              # compile: ~30 s per mask and size)

For image grids 8x8, 16x16 and 32x32 (with 32, 64 and 256 text tokens: the CPU preset's,
the gpu16 preset's and the paper's text length), batch 2, 8 heads of 64, it times the
forward pass of each path (reference = explicit softmax, SDPA with the boolean mask,
flex_attention with a BlockMask) for each mask (dense causal, row, column, conv 11x11),
and measures its peak memory above what was resident before the call (inputs excluded,
output included). On CPU: the process's peak resident set (VmHWM, reset before each call
through /proc/self/clear_refs; the script re-runs itself with glibc told to return freed
memory at once, so that every call's pages are counted). On CUDA:
torch.cuda.max_memory_allocated.

Then it samples a 64-token image (8x8 grid) for 16 captions of 32 tokens with the CPU
preset's transformer (4 layers, d_model 256, 4 heads), with and without the KV cache.
Last, the short-sequence CPU table behind ``attention.CPU_WRITTEN_OUT_MAX_LEN`` (``--short-only``
prints it alone): one attention call forward + backward, batch 32, 4 heads of 64, one thread,
through SDPA's fused kernel, its MATH kernel and the written-out reference, bf16 and float32.
Timings are the best of a few runs (the least disturbed by other processes); they vary
from run to run and machine to machine.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
if any(os.environ.get(k) != v for k, v in ENV.items()):  # re-run with the allocator settings
    os.environ.update(ENV)
    os.execv(sys.executable, [sys.executable, *sys.argv])

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch  # noqa: E402

from dalle_mini_impl.attention import (FLEX_AVAILABLE, MASK_KINDS, attention_flex,  # noqa: E402
                                       attention_reference, attention_sdpa, build_block_mask,
                                       build_mask)
from dalle_mini_impl.transformer import (Transformer, TransformerConfig,  # noqa: E402
                                         generate_image_tokens)

SIZES = [(8, 32), (16, 64), (32, 256)]  # (grid, text tokens)
BATCH, HEADS, HEAD_DIM, KERNEL = 2, 8, 64, 11


def _rss_mib(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    return float("nan")


def measure(fn, device: torch.device, repeats: int) -> tuple[float, float]:
    """(best-of-``repeats`` ms, peak MiB above the memory in use before the call)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    out = fn()  # warm-up (flex builds and compiles here)
    del out
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = fn()
        sync()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the peak resident set size
            base = _rss_mib("VmRSS")
            out = fn()
            peak = _rss_mib("VmHWM") - base
        except OSError:
            peak = float("nan")
    del out
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
        del out
    return min(times), peak


def bench_paths(device: torch.device, repeats: int, compile_flex: bool) -> None:
    print(f"\n== attention paths on {device.type} ({torch.get_num_threads()} threads), "
          f"batch {BATCH}, {HEADS} heads x {HEAD_DIM}, float32, forward only")
    print(f"{'grid':>6} {'text':>5} {'L':>5} {'mask':>7} {'allowed':>8} {'path':>14} "
          f"{'ms':>9} {'peak MiB':>9}")
    g = torch.Generator().manual_seed(0)
    for grid, text_len in SIZES:
        L = text_len + grid * grid
        q, k, v = (torch.randn(BATCH, HEADS, L, HEAD_DIM, generator=g).to(device)
                   for _ in range(3))
        for kind in MASK_KINDS:
            mask = build_mask(kind, text_len, grid, KERNEL, device=device)
            density = mask.float().mean().item()
            paths = {"reference": lambda: attention_reference(q, k, v, mask),
                     "sdpa": lambda: attention_sdpa(q, k, v, mask)}
            if FLEX_AVAILABLE:
                bm = build_block_mask(kind, text_len, grid, KERNEL, device=device)
                on_gpu = device.type == "cuda"
                paths["flex (compiled)" if on_gpu else "flex (eager)"] = (
                    lambda: attention_flex(q, k, v, bm))
                if compile_flex and not on_gpu:
                    paths["flex (compiled)"] = lambda: attention_flex(q, k, v, bm, compiled=True)
            for name, fn in paths.items():
                with torch.no_grad():
                    ms, mib = measure(fn, device, repeats)
                print(f"{grid}x{grid:<3} {text_len:>5} {L:>5} {kind:>7} {density:>8.3f} "
                      f"{name:>14} {ms:>9.2f} {mib:>9.1f}", flush=True)
            del mask


def bench_kv_cache(device: torch.device, repeats: int) -> None:
    cfg = TransformerConfig(text_vocab=512, image_vocab=512, text_len=32, image_grid=8,
                            d_model=256, n_layers=4, n_heads=4, attention="sparse")
    torch.manual_seed(0)
    model = Transformer(cfg).to(device).eval()
    text = torch.randint(0, 512, (16, 32), generator=torch.Generator().manual_seed(1)).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    result = {}
    for use_cache in (False, True):
        times = []
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            generate_image_tokens(model, text, use_cache, generator=torch.Generator().manual_seed(2))
            sync()
            times.append(time.perf_counter() - t0)
        result[use_cache] = min(times)
    print(f"\n== sampling a 64-token image (8x8) for 16 captions of 32 tokens on {device.type}, "
          f"4 layers, d_model 256, sparse schedule")
    print(f"without KV cache: {result[False]:.3f} s   with KV cache: {result[True]:.3f} s   "
          f"speed-up: {result[False] / result[True]:.1f}x")


def bench_short_cpu(repeats: int) -> None:
    """The figures behind ``attention.CPU_WRITTEN_OUT_MAX_LEN``: one attention call forward +
    backward on CPU with one thread, batch 32, 4 heads of 64 (the toy prior's shape), a causal
    mask, through SDPA's fused kernel, SDPA's MATH kernel and the written-out
    ``attention_reference``, in bfloat16 and float32, at the toy's 96 keys, 128, 256 and 384."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    print("\n== short sequences on cpu (1 thread): forward + backward, batch 32, 4 heads x 64, causal")
    print(f"{'dtype':>9} {'L':>5} {'fused ms':>9} {'MATH ms':>9} {'written-out ms':>15}")
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.bfloat16, torch.float32):
        for L in (96, 128, 256, 384):
            q, k, v = (torch.randn(32, 4, L, 64, generator=g).to(dtype).requires_grad_()
                       for _ in range(3))
            mask = torch.ones(L, L, dtype=torch.bool).tril()

            def step(fn):
                def run():
                    out = fn()
                    out.float().sum().backward()
                    return out.detach()
                return run

            def sdpa(backend):
                def fn():
                    with sdpa_kernel(backend):
                        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
                return fn
            row = [measure(step(f), torch.device("cpu"), repeats)[0]
                   for f in (sdpa(SDPBackend.FLASH_ATTENTION), sdpa(SDPBackend.MATH),
                             lambda: attention_reference(q, k, v, mask))]
            print(f"{str(dtype).split('.')[-1]:>9} {L:>5} {row[0]:>9.1f} {row[1]:>9.1f} {row[2]:>15.1f}",
                  flush=True)
    torch.set_num_threads(threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile-flex", action="store_true",
                        help="also time torch.compile(flex_attention) on CPU")
    parser.add_argument("--cpu-only", action="store_true")
    parser.add_argument("--short-only", action="store_true",
                        help="only the short-sequence CPU table (fused vs MATH vs written out)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, flex_attention available: {FLEX_AVAILABLE}")
    if args.short_only:
        bench_short_cpu(args.repeats)
        return
    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and not args.cpu_only:
        devices.append(torch.device("cuda"))
    for device in devices:
        bench_paths(device, args.repeats, args.compile_flex)
        bench_kv_cache(device, args.repeats)
    bench_short_cpu(args.repeats)


if __name__ == "__main__":
    main()
