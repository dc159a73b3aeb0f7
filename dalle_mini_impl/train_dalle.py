"""Stage 2 training: the transformer prior of DALL-E over (caption, image-token) pairs.

Paper: Ramesh et al. 2021, section 2.2 (the loss) and appendix B.2 (optimisation: AdamW with
beta_1 = 0.9, beta_2 = 0.96, eps = 1e-8, weight decay 4.5e-2, gradient norm clipped to 4,
learning rate warmed up linearly to its peak over the first 5,000 steps; the paper then halves
it on plateaus, here a cosine decay to a tenth does the same job without watching the loss).

    python -m dalle_mini_impl.train dalle --dataset shapes --objects 1 --steps 3000 --out runs/dalle

What a run does, in order:

1. loads the dataset (``shapes``, ``digits`` or ``folder:PATH``) and the frozen dVAE
   (``--dvae``, default the shipped toy one), and **pre-tokenises** every image once with the
   dVAE (cached in ``OUT/tokens.pt``, reused while the dataset and dVAE are unchanged);
2. trains the prior on (text ids, image ids) with the 1/8-7/8 loss, bf16 autocast where the
   device supports it (lesson 07's ``pick_precision``; fp16 + loss scaling on older GPUs),
   gradient clipping and an optional EMA of the weights (``--ema 0.999``);
3. every ``--log-every`` steps appends a line to ``OUT/metrics.jsonl``; every
   ``--sample-every`` steps writes a grid ``OUT/samples/step_NNNNNN.png``; every
   ``--ckpt-every`` steps writes ``OUT/resume.pt`` atomically (weights, optimizer, EMA, RNG,
   step). ``--resume`` continues from it exactly: the data order is a function of
   (seed, step), so a resumed run sees the batches the uninterrupted run would have;
4. Ctrl-C (or SIGTERM, as a cluster sends before preemption) saves ``resume.pt`` first;
5. at the end saves the whole system with :meth:`DALLE.save` into ``OUT`` (config,
   tokenizer, dVAE, prior) -- what ``python -m dalle_mini_impl generate --model OUT`` loads.

GPU fast paths (``accel.py``; each falls back on CPU): bf16 autocast where supported, else
fp16 with lesson 07's loss scaler; fused AdamW on CUDA; ``--compile`` (torch.compile, off by
default); on CUDA the token table stays in host memory and a ``DataLoader`` with workers
gathers each batch into pinned memory (``--workers``); ``--micro-batch`` accumulates the
gradient of a batch over pieces so the activations fit (the GPU presets default to 64 pairs;
``sizing.py`` estimates the memory).

Several GPUs or nodes: ``torchrun --nproc_per_node 4 -m dalle_mini_impl.train dalle ...``.
Each process takes ``--batch-size / world_size`` pairs of every global batch
(``DistributedSampler``), DistributedDataParallel averages the gradients (NCCL on CUDA, gloo on
CPU), and rank 0 logs and saves. ``--fsdp`` shards the weights, gradients and AdamW state
over the processes instead (FSDP2 ``fully_shard``, per resblock; bf16 or fp32; checkpoints are
gathered into the same single-file format). ``--preset paper`` prints the
12-billion-parameter shape, its parameter count and memory estimate, and exits.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch

from .dalle import (DALLE, DALLEConfig, count_prior_parameters, dalle_loss, memory_estimate,
                    paper_prior_config, prior_config_for)
from .train import RunLog, load_pairs
from .utils import (atomic_write_bytes, get_device, get_preset, load_checkpoint, save_checkpoint,
                    seed_everything)

# Sizes per preset (the dVAE must match image_size and its grid). The CPU toy trains in
# minutes; gpu16 fits a 16 GB Colab card, gpu80 an 80 GB one. ``micro_batch``: the batch is
# run in pieces of this many pairs per process (gradient accumulation) so that activations
# fit: sizing.preset_report estimates 7.5 GiB (gpu16) and 37 GiB (gpu80) at these sizes with
# materialised attention probabilities, against 14.1 / 131 GiB for the whole batch at once.
DALLE_PRESETS = {
    "cpu": dict(d_model=256, n_layers=4, n_heads=4, lr=1e-3, warmup=100, micro_batch=None),
    "gpu16": dict(d_model=512, n_layers=12, n_heads=8, lr=5e-4, warmup=1000, micro_batch=64),
    "gpu80": dict(d_model=1024, n_layers=24, n_heads=16, lr=3e-4, warmup=2000, micro_batch=64),
}

SHAPES_SAMPLE_CAPTIONS = [
    "a small red circle on the left", "a large blue square at the top",
    "a large green triangle in the centre", "a small yellow diamond on the right",
    "a large purple circle at the bottom", "a small cyan square in the centre",
    # held-out colour-shape pairs (never seen in training)
    "a large red triangle on the left", "a small blue circle at the top",
]


# --------------------------------------------------------------------------- data
def _file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def pretokenise(model: DALLE, images: torch.Tensor, captions: list[str], cache: Path | None,
                key: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Text ids (M, T) and dVAE image ids (M, N) of a dataset, computed once and cached in
    ``cache`` under ``key`` (dataset, size, seed, dVAE digest): later runs and resumes read
    the file instead of running the dVAE encoder again."""
    if cache is not None and cache.is_file():
        state = torch.load(cache, map_location="cpu", weights_only=False)
        if state.get("key") == key:
            return state["text"], state["image"]
    import warnings
    with warnings.catch_warnings():  # training captions longer than text_len are cut (and counted)
        warnings.simplefilter("ignore")
        text = model.tokenizer.encode(captions)  # (M, T)
    image = model.encode_images(images).cpu()  # (M, N)
    if cache is not None:
        import io
        buf = io.BytesIO()
        torch.save({"key": key, "text": text, "image": image}, buf)
        atomic_write_bytes(cache, buf.getvalue())
    return text, image


def batch_indices(n_items: int, local_batch: int, step: int, seed: int, world: int = 1,
                  rank: int = 0, _memo: dict = {}) -> torch.Tensor:
    """Indices of this rank's part of the global batch at ``step``: a function of (seed, step)
    only, so a resumed run draws the same batches. Epoch e is DistributedSampler's
    permutation for set_epoch(e); ranks take interleaved slices of it, so the union over
    ranks of one step is the batch a single process would take with the global batch size."""
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(range(n_items), num_replicas=world, rank=rank, shuffle=True,
                                 seed=seed, drop_last=True)
    per_epoch = len(sampler) // local_batch
    if per_epoch < 1:
        raise ValueError(f"the dataset has {n_items} pairs, fewer than one batch of "
                         f"{local_batch * world}: use a smaller --batch-size")
    epoch, i = divmod(step, per_epoch)
    k = (n_items, world, rank, seed, epoch)
    if k not in _memo:
        _memo.clear()
        sampler.set_epoch(epoch)
        _memo[k] = torch.tensor(list(sampler))
    return _memo[k][i * local_batch:(i + 1) * local_batch]


def lr_at(step: int, peak: float, warmup: int, total: int, final_ratio: float = 0.1) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` steps (B.2), then cosine to peak * final_ratio."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def make_optimizer(prior: torch.nn.Module, lr: float, weight_decay: float,
                   device: torch.device | str | None = "cpu") -> torch.optim.AdamW:
    """AdamW with the paper's betas and eps (B.2); no decay on biases, gains and embeddings;
    fused on CUDA (``accel.make_adamw``)."""
    from .accel import make_adamw

    decay, no_decay = [], []
    for name, p in prior.named_parameters():
        is_matrix = p.dim() >= 2 and "emb" not in name
        (decay if is_matrix else no_decay).append(p)
    return make_adamw([{"params": decay, "weight_decay": weight_decay},
                       {"params": no_decay, "weight_decay": 0.0}],
                      device, lr=lr, betas=(0.9, 0.96), eps=1e-8)


def micro_batches(local_batch: int, micro: int | None) -> list[slice]:
    """Slices of a local batch run one after another (gradient accumulation)."""
    if micro is None or micro >= local_batch:
        return [slice(0, local_batch)]
    if micro < 1:
        raise ValueError(f"--micro-batch must be >= 1, got {micro}")
    return [slice(i, min(i + micro, local_batch)) for i in range(0, local_batch, micro)]


# --------------------------------------------------------------------------- distributed
def _dist_setup(device_arg):
    """(world, rank, device). Under torchrun (WORLD_SIZE > 1) joins the process group:
    NCCL on CUDA, gloo on CPU."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if world == 1:
        return 1, 0, get_device(device_arg)
    device = get_device(device_arg)
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return world, rank, device


def _check_fsdp(args, world: int, prec_name: str) -> None:
    """--fsdp runs only under torchrun, in bf16 or float32 (fp16's loss scaler is not sharded),
    without the options that need the whole model on one process."""
    if world < 2:
        raise SystemExit("--fsdp shards the model over several processes: start it with torchrun, "
                         "e.g. `torchrun --nproc_per_node 8 -m dalle_mini_impl.train dalle --fsdp ...` "
                         "(one process has nothing to shard; drop --fsdp)")
    if prec_name == "fp16":
        raise SystemExit("--fsdp is not supported in fp16 (its loss scaler is not sharded): use a bf16 "
                         "GPU (A100, H100, L4), --precision fp32, or drop --fsdp")
    if args.ema:
        raise SystemExit("--ema is not supported with --fsdp (the EMA copy would not be sharded)")
    if args.sample_every:
        raise SystemExit("--sample-every is not supported with --fsdp; sample from the saved model")


def _shard(prior: torch.nn.Module) -> None:
    """FSDP2: each resblock, then the rest, sharded over the processes (parameters become
    DTensors; each process keeps 1/world of every weight, gradient and AdamW state)."""
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError as exc:  # torch < 2.6
        raise SystemExit(f"--fsdp needs torch.distributed.fsdp.fully_shard (torch >= 2.6): {exc}")
    for block in prior.blocks:
        fully_shard(block)
    fully_shard(prior)


def _full_state(prior, opt):
    """The whole (unsharded) model and optimizer state dicts on rank 0 (a collective: every
    rank calls it); other ranks get empty dicts."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    return get_state_dict(prior, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


class _StateOf:
    """Gives ``save_checkpoint`` a ready state dict where it expects a module or optimizer."""

    def __init__(self, state):
        self._state = state

    def state_dict(self):
        return self._state


def _barrier(world):
    if world > 1:
        import torch.distributed as dist
        dist.barrier()


# --------------------------------------------------------------------------- the command
def print_paper_shape() -> dict:
    """The paper's 12B prior: parameter count (counted on the meta device) and memory."""
    cfg = paper_prior_config()
    n = count_prior_parameters(cfg)
    info = {"preset": "paper", "d_model": cfg.d_model, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads,
            "text_len": cfg.text_len, "image_tokens": cfg.image_len, "text_vocab": cfg.text_vocab,
            "image_vocab": cfg.image_vocab, "parameters": n, "parameters_billions": round(n / 1e9, 2),
            "gib_fp32_adam": round(memory_estimate(n, 16), 1),
            "gib_fp16_weights_only": round(memory_estimate(n, 2), 1)}
    print(f"DALL-E's prior (paper 2.2, B.1): {cfg.n_layers} layers, d_model {cfg.d_model}, "
          f"{cfg.n_heads} heads, {cfg.text_len} text + {cfg.image_len} image tokens")
    print(f"parameters: {n:,} ({n / 1e9:.2f} B)")
    print(f"memory for training with float32 master weights + AdamW (16 bytes/parameter): "
          f"{info['gib_fp32_adam']:,} GiB before activations; the fp16 weights alone: "
          f"{info['gib_fp16_weights_only']} GiB. The paper shards this over 1024 V100s (16 GB); "
          "not trained here.")
    return info


def train_dalle(args: argparse.Namespace) -> dict:
    """Train (or resume) a DALL-E prior; see the module docstring."""
    if args.preset == "paper":
        return print_paper_shape()
    from tqdm.auto import tqdm

    from .dvae import DiscreteVAE
    from .precision import pick_precision
    from .tokenizer import course_tokenizer, CaptionTokenizer
    from .datasets.shapes import DEFAULT_HOLDOUT

    if args.threads:
        torch.set_num_threads(args.threads)
    world, rank, device = _dist_setup(args.device)
    base = get_preset(args.preset, device)
    sizes = DALLE_PRESETS[base.name]
    batch = args.batch_size or base.batch_size
    if batch % world:
        raise ValueError(f"--batch-size {batch} must be divisible by the number of processes ({world})")
    local_batch = batch // world
    lr = args.lr or sizes["lr"]
    warmup = args.warmup if args.warmup is not None else min(sizes["warmup"], max(1, args.steps // 10))
    text_len = args.text_len or base.text_len
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(args.seed)

    # the frozen dVAE and the tokenizer
    dvae_path = Path(args.dvae) if args.dvae else None
    if dvae_path is None:
        from .dvae import TOY_CHECKPOINT
        from .utils import data_dir
        dvae_path = data_dir() / TOY_CHECKPOINT
    if not dvae_path.is_file():
        raise FileNotFoundError(f"no dVAE checkpoint at {dvae_path}: train one with "
                                "`python -m dalle_mini_impl.train dvae --out DIR` and pass --dvae DIR/dvae.pt")
    dvae = DiscreteVAE.load(dvae_path, map_location=device)
    image_size = dvae.config.image_size
    images, captions = load_pairs(args.dataset, args.n_train, image_size, args.seed, args.objects)
    if images.shape[1] != dvae.config.channels:
        raise ValueError(f"the dataset has {images.shape[1]}-channel images; the dVAE expects {dvae.config.channels}")
    name = args.dataset.split(":")[0].strip().lower()
    if name in ("shapes", "digits"):
        tokenizer = course_tokenizer(text_len)
    else:  # your captions: learn BPE on them together with the course's language
        from .tokenizer import course_captions
        tokenizer = CaptionTokenizer.train_from_captions(course_captions() + captions, args.bpe_vocab, text_len)
    prior_cfg = prior_config_for(tokenizer, dvae, d_model=args.d_model or sizes["d_model"],
                                 n_layers=args.n_layers or sizes["n_layers"],
                                 n_heads=args.n_heads or sizes["n_heads"], attention=args.attention,
                                 dropout=args.dropout)
    model = DALLE(tokenizer, dvae, DALLEConfig(prior=prior_cfg, text_weight=args.text_weight)).to(device)

    # pre-tokenise once (rank 0 writes the cache; the others read it)
    key = {"dataset": args.dataset, "n": len(images), "seed": args.seed, "objects": str(args.objects),
           "image_size": image_size, "text_len": text_len, "dvae": _file_digest(dvae_path),
           "tokenizer_vocab": tokenizer.vocab_size}
    cache = out / "tokens.pt"
    if rank == 0:
        text_ids, image_ids = pretokenise(model, images, captions, cache, key)
    _barrier(world)
    if rank != 0:
        text_ids, image_ids = pretokenise(model, images, captions, cache, key)
    del images
    if device.type != "cuda":  # CPU: the whole token table on the device, plain indexing
        text_ids, image_ids = text_ids.to(device), image_ids.to(device)

    prec = pick_precision(device, args.precision)
    if rank == 0:
        print(f"precision: {prec}", flush=True)
    micro = args.micro_batch if args.micro_batch is not None else sizes.get("micro_batch")
    pieces = micro_batches(local_batch, micro)
    if args.fsdp:
        _check_fsdp(args, world, prec.name)
        _shard(model.prior)
    opt = make_optimizer(model.prior, lr, args.weight_decay, device)
    ema = {k: v.detach().clone() for k, v in model.prior.state_dict().items()} if args.ema else None
    start = 0
    resume_path = out / "resume.pt"
    if args.resume:
        if args.fsdp:  # every rank reads the full state and keeps its shard
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict
            state = load_checkpoint(resume_path, restore_rng=True, map_location="cpu")
            set_state_dict(model.prior, opt, model_state_dict=state["model"],
                           optim_state_dict=state["optimizer"],
                           options=StateDictOptions(full_state_dict=True))
        else:
            state = load_checkpoint(resume_path, model=model.prior, optimizer=opt, restore_rng=True,
                                    map_location=device)
        start = state["step"]
        if ema is not None and state["extra"].get("ema") is not None:
            ema = {k: v.to(device) for k, v in state["extra"]["ema"].items()}
        if prec.scaler is not None and state["extra"].get("scaler"):
            prec.scaler.load_state_dict(state["extra"]["scaler"])
        if rank == 0:
            print(f"resumed from {resume_path} at step {start}", flush=True)

    net = model.prior
    if world > 1 and not args.fsdp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        net = DDP(model.prior, device_ids=[device.index] if device.type == "cuda" else None)
    from .accel import compile_blocks, token_batches
    compile_blocks(model.prior.blocks, args.compile, device)  # in place: DDP/FSDP see the same module

    def save_resume(step):
        if args.fsdp:
            msd, osd = _full_state(model.prior, opt)
            if rank == 0:
                save_checkpoint(resume_path, model=_StateOf(msd), optimizer=_StateOf(osd),
                                config=model.config.to_dict(), step=step,
                                extra={"ema": None, "args": {k: v for k, v in vars(args).items() if k != "func"},
                                       "scaler": None})
            _barrier(world)
            return
        if rank == 0:
            save_checkpoint(resume_path, model=model.prior, optimizer=opt, config=model.config.to_dict(),
                            step=step, extra={"ema": ema, "args": {k: v for k, v in vars(args).items() if k != "func"},
                                              "scaler": prec.scaler.state_dict() if prec.scaler else None})
        _barrier(world)

    log_path = out / "metrics.jsonl"
    if rank == 0 and not args.resume and log_path.exists():
        log_path.unlink()
    sample_caps = SHAPES_SAMPLE_CAPTIONS if name == "shapes" else list(dict.fromkeys(captions))[:8]

    def write_samples(step):
        from .viz import save_image_grid
        imgs = _with_weights(model, ema, lambda: model.generate(sample_caps, 1, top_k=args.top_k, seed=0,
                                                                precision=prec))
        save_image_grid(imgs, out / "samples" / f"step_{step:06d}.png", nrow=len(sample_caps))

    # SIGTERM (preemption) behaves like Ctrl-C: save, then stop
    def _on_term(signum, frame):
        raise KeyboardInterrupt
    old_term = signal.signal(signal.SIGTERM, _on_term) if rank == 0 or world == 1 else None

    tokens_per_pair = prior_cfg.text_len + prior_cfg.image_len
    bar = tqdm(total=args.steps, initial=start, disable=rank != 0 or not args.progress,
               desc="dalle", dynamic_ncols=True)
    stop = min(args.steps, start + args.stop_after) if args.stop_after else args.steps
    step, t0, seen, last = start, time.perf_counter(), 0, {}
    model.prior.train()
    # CUDA: worker processes gather each batch into pinned memory; CPU: plain indexing
    batches = token_batches((text_ids, image_ids),
                            lambda s: batch_indices(len(text_ids), local_batch, s, args.seed, world, rank),
                            range(start, stop), device, workers=args.workers)
    try:
        while step < stop:
            text_all, img_all = next(batches)  # (b, T), (b, N)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, lr, warmup, args.steps)
            losses = {k: 0.0 for k in ("loss", "text", "image")}
            for i, piece in enumerate(pieces):
                text, img = text_all[piece], img_all[piece]
                share = (piece.stop - piece.start) / local_batch
                last_piece = i == len(pieces) - 1
                _sync_gradients(net, args.fsdp, world, last_piece)
                with prec.autocast():
                    text_logits, image_logits = net(text, img)
                part = dalle_loss(text_logits, image_logits, text, img, args.text_weight)
                prec.backward(part["loss"] * share)
                for k in losses:
                    losses[k] = losses[k] + part[k].detach() * share
            prec.unscale(opt)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.prior.parameters(), args.clip)
            if hasattr(grad_norm, "full_tensor"):  # a DTensor under --fsdp
                grad_norm = grad_norm.full_tensor()
            prec.step(opt, grad_norm)
            if ema is not None:
                with torch.no_grad():
                    for k, v in model.prior.state_dict().items():
                        if v.is_floating_point():
                            ema[k].lerp_(v, 1 - args.ema)
                        else:
                            ema[k].copy_(v)
            step += 1
            seen += batch
            elapsed = time.perf_counter() - t0
            last = {"step": step, "loss": losses["loss"].item(), "text_loss": losses["text"].item(),
                    "image_loss": losses["image"].item(), "lr": opt.param_groups[0]["lr"],
                    "grad_norm": float(grad_norm), "pairs_per_s": seen / elapsed,
                    "tokens_per_s": seen * tokens_per_pair / elapsed, "elapsed_s": elapsed}
            bar.update(1)
            bar.set_postfix(loss=f"{last['loss']:.3f}", tok_s=f"{last['tokens_per_s']:.0f}")
            if rank == 0 and (step % args.log_every == 0 or step == args.steps):
                RunLog(log_path, quiet=True).write(last)
            if rank == 0 and args.sample_every and step % args.sample_every == 0:
                write_samples(step)
            if step % args.ckpt_every == 0 and step < args.steps:
                save_resume(step)
    except KeyboardInterrupt:
        bar.close()
        save_resume(step)
        if rank == 0:
            print(f"\ninterrupted at step {step}: saved {resume_path}; continue with --resume", flush=True)
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        raise SystemExit(130)
    bar.close()
    if old_term is not None:
        signal.signal(signal.SIGTERM, old_term)
    save_resume(step)
    result = dict(last, device=device.type, world_size=world, precision=prec.name,
                  parameters=sum(p.numel() for p in model.prior.parameters()),
                  train_pairs=len(text_ids), stopped_early=step < args.steps)
    if step >= args.steps and args.fsdp:  # gather the whole prior into a plain copy on rank 0
        msd, _ = _full_state(model.prior, opt)
        if rank == 0:
            model = DALLE(tokenizer, dvae.cpu(), model.config)
            model.prior.load_state_dict(msd)
    if step >= args.steps and rank == 0:
        command = "python -m dalle_mini_impl.train " + " ".join(sys.argv[1:]) \
            if sys.argv and sys.argv[0].endswith(("train.py", "train_dalle.py")) else None
        _with_weights(model, ema, lambda: model.save(
            out, weights_dtype=torch.float16 if args.save_fp16 else None,
            extra={"step": step, "metrics": result, "command": command,
                   "held_out_pairs": [list(p) for p in DEFAULT_HOLDOUT] if name == "shapes" else []}))
        (out / "metrics.json").write_text(json.dumps(dict(result, command=command), indent=2) + "\n")
        if args.sample_every:
            write_samples(step)
    _barrier(world)
    if world > 1:
        import torch.distributed as dist
        dist.destroy_process_group()
    return result


def _sync_gradients(net, fsdp: bool, world: int, sync: bool) -> None:
    """Gradient accumulation: all-reduce (DDP) or reduce-scatter (FSDP) only on the last
    micro-batch of a step."""
    if world < 2:
        return
    if fsdp:
        net.set_requires_gradient_sync(sync)
    else:
        net.require_backward_grad_sync = sync


def _with_weights(model: DALLE, ema: dict | None, fn):
    """Run ``fn`` with the EMA weights loaded into the prior (if any), then restore."""
    if ema is None:
        return fn()
    current = {k: v.detach().clone() for k, v in model.prior.state_dict().items()}
    model.prior.load_state_dict(ema)
    try:
        return fn()
    finally:
        model.prior.load_state_dict(current)


def add_dalle_args(p: argparse.ArgumentParser) -> None:
    """The ``dalle`` subcommand's own options (the shared ones come from train.add_common_args)."""
    p.add_argument("--dvae", default=None, help="dVAE checkpoint (default: data/dvae_shapes_toy/dvae.pt)")
    p.add_argument("--objects", type=lambda s: tuple(int(x) for x in s.split(",")) if "," in s else int(s),
                   default=1, help="shapes: objects per image, 1, 2 or 1,2")
    p.add_argument("--n-train", type=int, default=None, help="pairs to train on (shapes: drawn; default 20000)")
    p.add_argument("--text-len", type=int, default=None, help="text positions (default: the preset's)")
    p.add_argument("--bpe-vocab", type=int, default=512, help="BPE vocabulary for folder: datasets")
    p.add_argument("--d-model", type=int, default=None)
    p.add_argument("--n-layers", type=int, default=None)
    p.add_argument("--n-heads", type=int, default=None)
    p.add_argument("--attention", default="sparse", choices=["sparse", "full"])
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--text-weight", type=float, default=1 / 8, help="loss weight of the text tokens (paper: 1/8)")
    p.add_argument("--warmup", type=int, default=None, help="linear warm-up steps (default: min(preset, steps/10))")
    p.add_argument("--weight-decay", type=float, default=4.5e-2)
    p.add_argument("--clip", type=float, default=4.0, help="gradient norm clip (paper: 4)")
    p.add_argument("--ema", type=float, default=0.0, help="EMA decay of the weights, e.g. 0.999 (0: off)")
    p.add_argument("--sample-every", type=int, default=0, help="write a sample grid every N steps (0: only at the end)")
    p.add_argument("--top-k", type=int, default=32, help="top-k of the sample grids")
    if "--stop-after" not in p._option_string_actions:  # train.add_common_args may define it
        p.add_argument("--stop-after", type=int, default=None,
                       help="stop (saving resume.pt) after this many steps of this run; continue with --resume")
    p.add_argument("--save-fp16", action="store_true", help="store the final prior weights in float16 (half size)")
    p.add_argument("--micro-batch", type=int, default=None,
                   help="pairs per forward pass on each process; the batch is accumulated from pieces "
                        "of this size (default: the preset's: all of it on cpu, 64 on gpu16 and gpu80)")
    p.add_argument("--compile", action="store_true", help="torch.compile the transformer (off by default; "
                   "minutes of compiling first, then faster steps on CUDA; on CPU it needs a C++ compiler)")
    p.add_argument("--fsdp", action="store_true", help="shard weights, gradients and AdamW state over the "
                   "torchrun processes (FSDP2 fully_shard; bf16 or fp32) instead of replicating them (DDP)")
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader worker processes for the pre-tokenised data (default: 4 on CUDA, none on CPU)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="tqdm progress bar")
    p.set_defaults(func=train_dalle)


def add_dalle_parser(sub) -> None:
    """Register ``dalle`` on train.py's subparsers."""
    from .train import add_common_args

    p = sub.add_parser("dalle", help="stage 2: the transformer prior over text + image tokens (lesson 08)")
    add_common_args(p)
    p.set_defaults(ckpt_every=500)
    # --preset also accepts "paper" here: print the 12B shape and exit
    for action in p._actions:
        if action.dest == "preset":
            action.help = "cpu, gpu16, gpu80 (default: by device) or paper (prints the 12B shape)"
        if action.dest == "steps":
            action.required = False
            action.default = 1000
        if action.dest == "out":
            action.required = False
            action.default = "runs/dalle"
    add_dalle_args(p)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dalle_mini_impl.train")
    sub = parser.add_subparsers(dest="command", required=True)
    add_dalle_parser(sub)
    args = parser.parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
