"""Baseline for the lesson 08 speed comparison: DALLE-pytorch 1.6.6 (lucidrains) on CPU.

Same model size as bench/throughput.py measures for ours: d_model 256, depth 4, 4 heads of
64, 32 text tokens, 32x32 images -> 8x8 token grid (512 codes), batch 32, 2 CPU threads.
DALLE-pytorch keeps its own defaults otherwise (rotary embeddings, token shift), and its
normal training path re-encodes the raw images with its DiscreteVAE on every step:
`dalle(text, images, return_loss=True)`. Generation: `dalle.generate_images(text,
filter_thres=0.9)` for 16 captions (4 captions x 4), with and without its `use_cache`.

Run it with the separate baseline environment (how to build it: bench/README.md):

    /work/baseline_venv/bin/python bench/baseline_dalle_pytorch.py [--steps 10] [--json]

In the course environment (no dalle_pytorch) it prints a note and exits 0, so `make bench`
does not fail.

Stubs. DALLE-pytorch 1.6.6 imports, at import time, `omegaconf` and
`taming.models.vqgan` (VQModel, GumbelVQ) in dalle_pytorch/vae.py. They are used only
inside the class VQGanVAE (a pretrained VQGAN downloaded at run time), which this bench
never builds. Installing them would pull pytorch-lightning and a CUDA torch, so
`_stub_unused_imports()` puts empty modules with those names in sys.modules before the
import. Nothing else is stubbed; torchvision, transformers and youtokentome are not imported
by `import dalle_pytorch` at all (only by its loader/tokenizer modules, not used here).
The script checks that the built model contains no VQGanVAE/OpenAIDiscreteVAE, so no stub
can be on the measured path. DALLE-pytorch's model code is not modified.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import types
import warnings

import torch

STUBBED = ("omegaconf", "taming", "taming.models", "taming.models.vqgan")


def _stub_unused_imports() -> None:
    """Empty stand-ins for modules dalle_pytorch/vae.py imports but only VQGanVAE uses."""
    for name in STUBBED:
        if name not in sys.modules:
            sys.modules[name] = types.ModuleType(name)
    sys.modules["omegaconf"].OmegaConf = None
    sys.modules["taming.models.vqgan"].VQModel = None
    sys.modules["taming.models.vqgan"].GumbelVQ = None


def _import_dalle_pytorch():
    try:
        import dalle_pytorch  # noqa: F401  (real import first: stubs only if needed)
    except ModuleNotFoundError as e:
        if e.name not in STUBBED:
            return None, str(e)
        for name in list(sys.modules):  # drop the half-imported package, then retry with stubs
            if name.startswith("dalle_pytorch"):
                del sys.modules[name]
        _stub_unused_imports()
        try:
            import dalle_pytorch  # noqa: F401
        except ModuleNotFoundError as e2:
            return None, str(e2)
    import dalle_pytorch
    return dalle_pytorch, None


def build(dp, attn_types, num_text_tokens: int):
    torch.manual_seed(0)
    vae = dp.DiscreteVAE(image_size=32, num_layers=2, num_tokens=512, codebook_dim=256, hidden_dim=64)
    model = dp.DALLE(dim=256, vae=vae, num_text_tokens=num_text_tokens, text_seq_len=32, depth=4,
                     heads=4, dim_head=64, attn_types=attn_types)
    from dalle_pytorch.vae import OpenAIDiscreteVAE, VQGanVAE
    assert not any(isinstance(m, (OpenAIDiscreteVAE, VQGanVAE)) for m in model.modules()), \
        "a stubbed VAE class is in the model: the measurement would not be DALLE-pytorch's"
    assert model.image_seq_len == 64, model.image_seq_len  # 8x8 grid
    return model


def batch(num_text_tokens: int, n: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(1, num_text_tokens, (n, 32), generator=g)  # 0 is its padding id
    images = torch.rand(n, 3, 32, 32, generator=g)
    return text, images


def train_pairs_per_s(model, text, images, bf16: bool, steps: int, warmup: int = 2) -> float:
    params = [p for p in model.parameters() if p.requires_grad]  # its VAE is frozen
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.96), weight_decay=0.045)
    model.train()
    for i in range(warmup + steps):
        if i == warmup:
            t = time.perf_counter()
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            loss = model(text, images, return_loss=True)  # re-encodes images with the VAE
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 4.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return steps * text.shape[0] / (time.perf_counter() - t)


def generate_seconds(model, text16, bf16: bool, use_cache: bool, repeats: int) -> float:
    model.eval()
    best = float("inf")
    for r in range(repeats):
        torch.manual_seed(r)
        t = time.perf_counter()
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            images = model.generate_images(text16, filter_thres=0.9, use_cache=use_cache)
        best = min(best, time.perf_counter() - t)
        assert images.shape == (16, 3, 32, 32), images.shape
    return best


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--num-text-tokens", type=int, default=435,
                   help="text vocabulary (ours: course_tokenizer(text_len=32).vocab_size = 435); "
                        "DALLE-pytorch adds 32 per-position padding ids itself")
    p.add_argument("--json", action="store_true", help="print the results as one JSON line at the end")
    p.add_argument("--quick", action="store_true", help="only full attention, fp32 + bf16 train, cached generation")
    args = p.parse_args(argv)

    dp, err = _import_dalle_pytorch()
    if dp is None:
        print(f"dalle_pytorch is not installed here ({err}); skipping the DALLE-pytorch baseline. "
              "Build its environment as bench/README.md says and run this file with it.")
        return {}
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    print(f"DALLE-pytorch {dp.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.1f}; stubbed (unused) imports: "
          f"{', '.join(n for n in STUBBED if isinstance(sys.modules.get(n), types.ModuleType) and not getattr(sys.modules[n], '__file__', None)) or 'none'}",
          flush=True)
    text, images = batch(args.num_text_tokens)
    res = {}
    attn_sets = {"full": ("full",), "sparse": ("axial_row", "axial_col", "conv_like")}
    if args.quick:
        attn_sets = {"full": ("full",)}
    for name, attn_types in attn_sets.items():
        model = build(dp, attn_types, args.num_text_tokens)
        for bf16 in (False, True):
            key = f"train_pairs_per_s_{name}_{'bf16' if bf16 else 'fp32'}"
            try:
                res[key] = train_pairs_per_s(model, text, images, bf16, args.steps)
                print(f"training, {name:6s} attention {attn_types}, {'bf16' if bf16 else 'fp32'}: "
                      f"{res[key]:7.1f} image-caption pairs/s (batch 32, {args.steps} steps)", flush=True)
            except Exception as e:  # report, do not hide: a failing mode is a finding
                print(f"training, {name} attention, {'bf16' if bf16 else 'fp32'}: FAILED ({type(e).__name__}: {e})")

    # 16 images: 4 captions x 4 samples, full attention (the only kind its KV cache supports)
    model = build(dp, ("full",), args.num_text_tokens)
    text16 = text[:4].repeat_interleave(4, dim=0)
    model.generate_images(text16[:1], filter_thres=0.9, use_cache=True)  # warm-up
    modes = [("fp32_cache", False, True, 2), ("bf16_cache", True, True, 2)]
    if not args.quick:
        modes.append(("fp32_nocache", False, False, 1))  # its default: use_cache=False
    for label, bf16, cache, reps in modes:
        key = f"generate_16_s_{label}"
        res[key] = generate_seconds(model, text16, bf16, cache, reps)
        print(f"generate 16 images ({label.replace('_', ', ')}, filter_thres 0.9, VAE decode): "
              f"{res[key]:.2f} s", flush=True)
    if args.json:
        print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
