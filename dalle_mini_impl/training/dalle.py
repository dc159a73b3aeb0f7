"""Stage 2 training: the transformer prior of DALL-E over (caption, image-token) pairs.

Paper: Ramesh et al. 2021, section 2.2 (the loss) and appendix B.2 (optimisation: AdamW with
beta_1 = 0.9, beta_2 = 0.96, eps = 1e-8, weight decay 4.5e-2, gradient norm clipped to 4,
learning rate warmed up linearly to its peak over the first 5,000 steps; the paper then halves
it on plateaus, here a cosine decay to a tenth does the same job without watching the loss).

    python -m dalle_mini_impl.training dalle --dataset shapes --objects 1 --steps 3000 --out runs/dalle

What a run does, in order (one function each):

1. ``setup``: the processes (``distributed.setup``), the preset's sizes, the output folder;
2. ``build``: loads the dataset (``shapes``, ``digits``, ``folder:PATH`` or ``coco:JSON``) and
   the frozen dVAE (``--dvae``, default the shipped toy one), makes the tokenizer and the prior;
3. ``pretokenise``: every image through the dVAE once (cached in ``OUT/tokens.pt``, reused
   while the dataset and dVAE are unchanged);
4. ``run_loop``: the 1/8-7/8 loss under the package's precision policy (lesson 07's
   ``pick_precision``: bf16 where the device computes it natively, fp16 + loss scaling on
   older GPUs, else float32; a non-finite step changes no weight), gradient clipping,
   micro-batches, an optional EMA of the weights. Every ``--log-every`` steps a line goes to
   ``OUT/metrics.jsonl``; every ``--sample-every`` steps a grid to ``OUT/samples/``; every
   ``--ckpt-every`` steps ``OUT/resume.pt`` is written atomically. ``--resume`` continues
   exactly: the data order is a function of (seed, step). Ctrl-C or SIGTERM saves first;
5. ``finish``: saves the whole system with :meth:`DALLE.save` into ``OUT`` -- what
   ``python -m dalle_mini_impl generate --model OUT`` loads.

GPU fast paths (``accel.py``; each falls back on CPU), several processes (``distributed.py``:
DDP, or FSDP2 with ``--fsdp``), and ``--preset paper`` (prints the 12-billion-parameter shape
and its memory from ``sizing.py``, trains nothing) are described in those modules.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..dalle import DALLE, DALLEConfig, dalle_loss, prior_config_for, validation_losses
from ..datasets import DEFAULT_HOLDOUT, course_captions, load_pairs
from ..dvae import TOY_CHECKPOINT, DiscreteVAE
from ..precision import Precision, ResblockPrecision, pick_precision
from ..presets import Preset, get_preset
from ..tokenizer import CaptionTokenizer, course_tokenizer
from ..utils import (atomic_write_bytes, check_finite, data_dir, load_checkpoint, restore_checkpoint, safe_load,
                     save_checkpoint, seed_everything)
from ..viz import save_labelled_grid
from . import distributed as D
from .accel import compile_blocks, make_adamw, token_batches
from .common import (GracefulStop, NonFiniteGuard, RunLog, StateOf, add_common_args, check_resume, command_line,
                     data_digest, decay, drop_captions, file_digest, fresh_log, guard_shipped, held_out_split,
                     nonnegative_float, nonnegative_int, objects_arg, positive_float, positive_int, set_threads,
                     settings_from_args, truncate_log, update_ema, with_weights)
from .sizing import paper_report

SHAPES_SAMPLE_CAPTIONS = [
    "a small red circle on the left", "a large blue square at the top",
    "a large green triangle in the centre", "a small yellow diamond on the right",
    "a large purple circle at the bottom", "a small cyan square in the centre",
    # held-out colour-shape pairs (never seen in training)
    "a large red triangle on the left", "a small blue circle at the top",
]


@dataclass
class DalleSettings:
    """Everything ``train dalle`` reads; the command line builds one (``None``: the preset's)."""

    out: str = "runs/dalle"
    steps: int = 1000
    dataset: str = "shapes"
    dvae: str | None = None            # default: data/dvae_shapes_toy/dvae.pt
    objects: int | tuple = 1
    n_train: int | None = None
    preset: str | None = None          # cpu, gpu16, gpu80 or paper
    text_len: int | None = None
    bpe_vocab: int | None = None       # folder: datasets
    d_model: int | None = None
    n_layers: int | None = None
    n_heads: int | None = None
    attention: str = "sparse"
    dropout: float = 0.0
    text_weight: float = 1 / 8
    caption_dropout: float = 0.0       # share of training captions replaced by the empty caption
    shift: int | None = None           # augmentation: translations by up to this many pixels (None: 0 on
                                       # shapes, 1 on digits and your data)
    batch_size: int | None = None
    micro_batch: int | None = None
    lr: float | None = None
    warmup: int | None = None
    weight_decay: float = 4.5e-2
    clip: float = 4.0
    ema: float = 0.0
    seed: int = 0
    device: str | None = None
    precision: str | None = None
    threads: int | None = None
    compile: bool = False
    fsdp: bool = False
    workers: int | None = None
    log_every: int = 50
    ckpt_every: int = 500
    sample_every: int = 0
    top_k: int = 32
    save_fp16: bool = False
    resume: bool = False
    stop_after: int | None = None
    progress: bool = True
    overwrite_shipped: bool = False
    max_nonfinite: int = 10            # stop after this many skipped (inf/NaN) updates in a row
    grad_scaling: str = "global"       # fp16: one loss scale, or per-resblock (appendix D)
    val_pairs: int | None = None       # held out for validation (None: min(512, 5%); 0: none)

    # may differ between a run and its --resume (the data and the dVAE are compared by content)
    MAY_CHANGE = frozenset({"log_every", "sample_every", "ckpt_every", "threads", "progress", "workers",
                            "compile", "device", "top_k", "save_fp16", "max_nonfinite", "precision",
                            "dataset", "dvae"})

    from_args = classmethod(settings_from_args)


@dataclass
class Run:
    """What ``setup`` and ``build`` make and the loop uses."""

    s: DalleSettings
    world: int
    rank: int
    device: torch.device
    preset: Preset
    out: Path
    batch: int = 0
    local_batch: int = 0
    model: DALLE | None = None
    captions: list | None = None
    dvae_path: Path | None = None
    data_key: dict | None = None
    examples: tuple[list[str], torch.Tensor] | None = None  # (captions, real images) the sample grids show

    @property
    def dataset_name(self) -> str:
        return self.s.dataset.split(":")[0].strip().lower()

    @property
    def shift(self) -> int:
        """``--shift``, else 1 pixel on real images (on 1,400 digits it kept the validation loss
        falling where the unaugmented prior memorised its pairs after 300 steps) and 0 on
        shapes (drawn fresh, 20,000 of them: nothing to memorise)."""
        return self.s.shift if self.s.shift is not None else int(self.dataset_name != "shapes")


# --------------------------------------------------------------------------- the schedule
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


# --------------------------------------------------------------------------- 1. setup
def setup(s: DalleSettings) -> Run:
    set_threads(s.threads)
    world, rank, device = D.setup(s.device)
    preset = get_preset(s.preset, device)
    batch = s.batch_size or preset.batch_size
    if batch % world:
        raise ValueError(f"--batch-size {batch} must be divisible by the number of processes ({world})")
    guard_shipped(s.out, s.overwrite_shipped)
    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    if s.fsdp:  # before any work
        D.check_fsdp(world, pick_precision(device, s.precision).name, s.ema, s.sample_every)
        if s.grad_scaling != "global":
            raise ValueError("--grad-scaling per-resblock is not supported with --fsdp; use DDP (drop --fsdp)")
    seed_everything(s.seed)
    return Run(s, world, rank, device, preset, out, batch, batch // world)


# --------------------------------------------------------------------------- 2. build
def build(run: Run) -> torch.Tensor:
    """The frozen dVAE, the tokenizer and the prior (``run.model``); returns the images."""
    s = run.s
    dvae_path = Path(s.dvae) if s.dvae else data_dir() / TOY_CHECKPOINT
    if not dvae_path.is_file():
        raise FileNotFoundError(f"no dVAE checkpoint at {dvae_path}: train one with "
                                "`python -m dalle_mini_impl.training dvae --out DIR` and pass --dvae DIR/dvae.pt")
    dvae = DiscreteVAE.load(dvae_path, map_location=run.device)
    images, captions = load_pairs(s.dataset, s.n_train, dvae.config.image_size, s.seed, s.objects)
    fits = ((len(images) - val_size(len(images), s.val_pairs)) // run.world) * run.world
    if fits < run.batch:  # a small dataset: a batch is the whole of it
        if fits < 1:
            raise ValueError(f"the dataset has {len(images)} pairs, fewer than the {run.world} processes")
        if run.rank == 0:
            print(f"note: the dataset has {len(images)} pairs, fewer than a batch of {run.batch}: "
                  f"training with --batch-size {fits} (every pair in every update)", flush=True)
        run.batch, run.local_batch = fits, fits // run.world
    if images.shape[1] != dvae.config.channels:
        raise ValueError(f"the dataset has {images.shape[1]}-channel images; the dVAE expects {dvae.config.channels}")
    text_len = s.text_len or run.preset.text_len
    if run.dataset_name in ("shapes", "digits"):
        tokenizer = course_tokenizer(text_len)
    else:  # your captions: learn BPE on them together with the course's language
        tokenizer = CaptionTokenizer.train_from_captions(course_captions() + captions,
                                                         s.bpe_vocab or run.preset.bpe_vocab, text_len)
    if s.text_len is None:  # no more positions than the captions need: every step is shorter
        tokenizer = CaptionTokenizer(tokenizer.hf, replace(tokenizer.config,
                                                           text_len=fitted_text_len(tokenizer, captions, text_len)))
    p = run.preset
    prior_cfg = prior_config_for(tokenizer, dvae, d_model=s.d_model or p.d_model, n_layers=s.n_layers or p.n_layers,
                                 n_heads=s.n_heads or p.n_heads, attention=s.attention, dropout=s.dropout)
    run.model = DALLE(tokenizer, dvae, DALLEConfig(prior=prior_cfg, text_weight=s.text_weight)).to(run.device)
    run.captions, run.dvae_path = captions, dvae_path
    return images


def fitted_text_len(tokenizer: CaptionTokenizer, captions: list[str], most: int) -> int:
    """The default ``--text-len``: the longest caption's BPE tokens plus room for one more word,
    rounded up to a multiple of 8, and at most ``most`` (the preset's): a run on short captions
    (digits: 5 tokens -> 8 positions instead of 32) spends its steps on the image tokens."""
    longest = max((len(tokenizer.tokens(c)) for c in dict.fromkeys(captions)), default=0)
    return min(most, 8 * math.ceil((longest + 2) / 8))


def val_size(n: int, asked: int | None) -> int:
    """Pairs held out for validation: ``asked``, else 5% up to 512 (none below 40 pairs)."""
    if asked is not None:
        if asked >= n - 1:
            raise ValueError(f"--val-pairs {asked} leaves no training pairs of the {n}")
        return asked
    return 0 if n < 40 else min(512, n // 20)


def validation_indices(n: int, asked: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, validation indices) of ``n`` pairs: a seeded random split, the same on
    every resume of the run (``val_size`` pairs held out)."""
    return held_out_split(n, val_size(n, asked), seed)


def split_validation(text_ids: torch.Tensor, image_ids: torch.Tensor, asked: int | None, seed: int):
    """(train text, train image, (val text, val image) or None), split by ``validation_indices``."""
    train, val = (i.to(text_ids.device) for i in validation_indices(len(text_ids), asked, seed))
    if len(val) == 0:
        return text_ids, image_ids, None
    val_images = image_ids[val]
    if val_images.dim() == 3:  # every translation (--shift): validate on the images as they are
        val_images = val_images[:, val_images.shape[1] // 2].long()
    return text_ids[train], image_ids[train], (text_ids[val], val_images)


# --------------------------------------------------------------------------- 3. pre-tokenise
def pretokenise(model: DALLE, images: torch.Tensor, captions: list[str], cache: Path | None,
                key: dict, say: bool = False, shift: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Text ids (M, T) and dVAE image ids (M, N) of a dataset, computed once and cached in
    ``cache`` under ``key`` (the data's content hash, the dVAE file's hash, the tokenizer):
    later runs and resumes read the file instead of running the dVAE encoder again, and a
    repainted image or an edited caption rebuilds it. The cache holds tensors and plain values
    only and is read with ``weights_only=True``. ``say``: print a line before the encoding.

    ``shift`` > 0: the image ids of every translation of each image by up to ``shift`` pixels
    (``shifted``), (M, K, N) with K = (2 shift + 1)^2 and the unshifted image at K // 2."""
    if cache is not None and cache.is_file():
        state = safe_load(cache)
        if state.get("key") == key:
            return state["text"], state["image"]
    if say:
        print(f"pre-tokenising {len(images):,} images with the dVAE (once; cached in {cache}) ...", flush=True)
    with warnings.catch_warnings():  # training captions longer than text_len are cut (and counted)
        warnings.simplefilter("ignore")
        text = model.tokenizer.encode(captions)  # (M, T)
    if shift and model.dvae.config.n_codes > 2 ** 15:
        raise ValueError(f"--shift stores the ids as int16; this dVAE has {model.dvae.config.n_codes} codes: "
                         "pass --shift 0")
    if shift:  # int16: K copies at a quarter of the memory
        image = torch.stack([model.encode_images(shifted(images, dy, dx)).cpu().to(torch.int16)
                             for dy, dx in shifts(shift)], dim=1)  # (M, K, N)
    else:
        image = model.encode_images(images).cpu()  # (M, N)
    if cache is not None:
        buf = io.BytesIO()
        torch.save({"key": key, "text": text, "image": image}, buf)
        atomic_write_bytes(cache, buf.getvalue())
    return text, image


def shifts(n: int) -> list[tuple[int, int]]:
    """The (dy, dx) translations of ``--shift n``, row-major; (0, 0) is in the middle."""
    return [(dy, dx) for dy in range(-n, n + 1) for dx in range(-n, n + 1)]


def shifted(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """(B, C, S, S) images translated by (dy, dx) pixels, the uncovered border filled by
    repeating the edge pixels (a background stays a background; nothing wraps around)."""
    if dy == dx == 0:
        return images
    n = max(abs(dy), abs(dx))
    size = images.shape[-1]
    padded = torch.nn.functional.pad(images, (n, n, n, n), mode="replicate")
    return padded[..., n - dy:n - dy + size, n - dx:n - dx + size]


def pick_shifts(image_ids: torch.Tensor, seed: int, step: int, rank: int = 0) -> torch.Tensor:
    """(b, N) ids from a batch of every translation (b, K, N): one translation per pair, drawn
    from (seed, step, rank) so that a resumed run draws the same ones."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + step) * 64 + rank + 32)
    k = torch.randint(0, image_ids.shape[1], (len(image_ids),), generator=g).to(image_ids.device)
    return image_ids[torch.arange(len(image_ids), device=image_ids.device), k].long()


def tokens_of(run: Run, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank 0 writes the token cache; the other ranks then read it."""
    model = run.model
    key = {"data": data_digest(images, run.captions), "n": len(images), "image_size": model.image_size,
           "text_len": model.text_len, "dvae": file_digest(run.dvae_path),
           "tokenizer": hashlib.sha256(model.tokenizer.hf.to_str().encode()).hexdigest()[:16],
           "shift": run.shift}
    run.data_key = key
    cache = run.out / "tokens.pt"
    if run.rank == 0:
        text_ids, image_ids = pretokenise(model, images, run.captions, cache, key, say=True, shift=run.shift)
    D.barrier(run.world)
    if run.rank != 0:
        text_ids, image_ids = pretokenise(model, images, run.captions, cache, key, shift=run.shift)
    if run.device.type != "cuda":  # CPU: the whole token table on the device, plain indexing
        text_ids, image_ids = text_ids.to(run.device), image_ids.to(run.device)
    return text_ids, image_ids


# --------------------------------------------------------------------------- 4. the loop
class Trainer:
    """The optimizer, precision, EMA and checkpoints of one run, and its steps."""

    def __init__(self, run: Run):
        s, self.run = run.s, run
        prior = run.model.prior
        self.prec: Precision | ResblockPrecision = pick_precision(run.device, s.precision)
        if s.grad_scaling == "per-resblock":
            if self.prec.name != "fp16":
                raise ValueError(f"--grad-scaling per-resblock is appendix D's float16 mechanism; this run trains "
                                 f"in {self.prec.name}: add --precision fp16")
            self.prec = ResblockPrecision(run.device, [[b.attn_branch, b.mlp_branch] for b in prior.blocks])
        if run.rank == 0:
            print(f"precision: {self.prec}", flush=True)
        self.pieces = micro_batches(run.local_batch, s.micro_batch if s.micro_batch is not None
                                    else run.preset.micro_batch)
        if s.fsdp:
            D.check_fsdp(run.world, self.prec.name, s.ema, s.sample_every)
            D.shard(prior)
        self.guard = NonFiniteGuard(s.max_nonfinite)
        self.lr = s.lr or run.preset.lr
        self.warmup = s.warmup if s.warmup is not None else min(run.preset.warmup, max(1, s.steps // 10))
        self.opt = make_optimizer(prior, self.lr, s.weight_decay, run.device)
        self.ema = {k: v.detach().clone() for k, v in prior.state_dict().items()} if s.ema else None
        self.resume_path = run.out / "resume.pt"
        self.start = self._resume() if s.resume else 0
        self.net = D.wrap_ddp(prior, run.device) if run.world > 1 and not s.fsdp else prior
        compile_blocks(prior.blocks, s.compile, run.device)  # in place: DDP/FSDP see the same module

    def _resume(self) -> int:
        run, prior = self.run, self.run.model.prior
        state = load_checkpoint(self.resume_path, map_location="cpu")
        extra = state["extra"]
        if "settings" in extra:
            notes = check_resume(extra["settings"], asdict(run.s), DalleSettings.MAY_CHANGE)
        else:
            notes = ["resume.pt was written by an older version of the package: its options are not compared"]
        if extra.get("data_key", run.data_key) != run.data_key:
            raise ValueError("--resume: the training data, the dVAE or the tokenizer differ from those of the run "
                             "in resume.pt (their content is hashed); train on the same files, or start a new run "
                             "in another --out")
        if extra.get("precision") not in (None, self.prec.name):
            raise ValueError(f"--resume: the run trained in {extra['precision']}, this call would train in "
                             f"{self.prec.name}; pass --precision {extra['precision']}")
        if run.s.fsdp:  # every rank reads the whole state and keeps its shard
            D.load_full_state(prior, self.opt, state["model"], state["optimizer"])
            restore_checkpoint(state, restore_rng=True)
        else:
            restore_checkpoint(state, model=prior, optimizer=self.opt, restore_rng=True, where=self.resume_path)
        self.guard.total = extra.get("skipped_total", 0)
        if run.rank == 0:
            for note in notes:
                print(f"resume: {note}", flush=True)
            truncate_log(run.out / "metrics.jsonl", state["step"])
        if self.ema is not None and extra.get("ema") is not None:
            self.ema = {k: v.to(run.device) for k, v in extra["ema"].items()}
        if self.prec.scaler is not None and extra.get("scaler"):
            self.prec.scaler.load_state_dict(extra["scaler"])
        if isinstance(self.prec, ResblockPrecision):
            self.prec.load_state_dict(extra["grad_scales"])
        if run.rank == 0:
            print(f"resumed from {self.resume_path} at step {state['step']}", flush=True)
        return state["step"]

    def save_resume(self, step: int) -> None:
        run, prior = self.run, self.run.model.prior
        if self.ema is not None:
            check_finite(self.ema, f"saving {self.resume_path} (EMA weights)")
        extra = {"ema": self.ema, "settings": asdict(run.s), "data_key": run.data_key,
                 "precision": self.prec.name, "skipped_total": self.guard.total,
                 "scaler": self.prec.scaler.state_dict() if self.prec.scaler else None,
                 "grad_scales": self.prec.state_dict() if isinstance(self.prec, ResblockPrecision) else None}
        if run.s.fsdp:
            msd, osd = D.full_state(prior, self.opt)
            model, opt = StateOf(msd), StateOf(osd)
        else:
            model, opt = prior, self.opt
        if run.rank == 0:
            save_checkpoint(self.resume_path, model=model, optimizer=opt, config=run.model.config.to_dict(),
                            step=step, extra=extra)
        D.barrier(run.world)

    def step(self, step: int, text_all: torch.Tensor, img_all: torch.Tensor) -> dict:
        """One optimizer update over the micro-batches of this rank's batch."""
        run, s = self.run, self.run.s
        prior = run.model.prior
        for group in self.opt.param_groups:
            group["lr"] = lr_at(step, self.lr, self.warmup, s.steps)
        losses = {k: 0.0 for k in ("loss", "text", "image")}
        for i, piece in enumerate(self.pieces):
            text, img = text_all[piece], img_all[piece]  # (b, T), (b, N)
            share = (piece.stop - piece.start) / run.local_batch
            D.sync_gradients(self.net, s.fsdp, run.world, i == len(self.pieces) - 1)
            with self.prec.autocast():
                text_logits, image_logits = self.net(text, img)
            part = dalle_loss(text_logits, image_logits, text, img, s.text_weight)
            self.prec.backward(part["loss"] * share)
            for k in losses:
                losses[k] = losses[k] + part[k].detach() * share
        self.prec.unscale(self.opt)
        grad_norm = torch.nn.utils.clip_grad_norm_(prior.parameters(), s.clip)
        if hasattr(grad_norm, "full_tensor"):  # a DTensor under --fsdp
            grad_norm = grad_norm.full_tensor()
        applied = self.prec.step(self.opt, grad_norm)
        self.guard.update(applied, step + 1)
        if self.ema is not None and applied:
            update_ema(self.ema, prior, s.ema)
        record = {"loss": losses["loss"].item(), "text_loss": losses["text"].item(),
                  "image_loss": losses["image"].item(), "lr": self.opt.param_groups[0]["lr"],
                  "grad_norm": float(grad_norm), "skipped": self.guard.total}
        if isinstance(self.prec, ResblockPrecision):  # appendix D: each resblock's scale and skips
            record.update(log2_scales=[round(x, 3) for x in self.prec.grad_scaler.log2_scales],
                          skipped_per_block=list(self.prec.grad_scaler.skipped_per_block))
        return record


def sample_examples(run: Run, images: torch.Tensor, val_idx: torch.Tensor) -> None:
    """The (caption, real image) pairs the sample grids show: up to 8 validation pairs (else
    training pairs) whose captions the model reads whole; on shapes, fixed captions of training
    and held-out colour-shape pairs instead (their real images are any of many scenes)."""
    if run.dataset_name == "shapes":
        return
    model, seen, pick = run.model, set(), []
    for i in (val_idx.tolist() or range(len(images))):
        c = run.captions[i]
        if c not in seen and len(model.tokenizer.tokens(c)) <= model.text_len:
            seen.add(c)
            pick.append(i)
        if len(pick) == 8:
            break
    if pick:
        run.examples = ([run.captions[i] for i in pick], images[pick].cpu())


def write_samples(run: Run, trainer: Trainer, step: int, model: DALLE | None = None) -> None:
    """OUT/samples/step_N.png: one column per caption -- its real image above (own data), the
    sample below, the caption written under them (``model``: default the run's)."""
    model = model or run.model
    if run.dataset_name == "shapes":
        captions, real = SHAPES_SAMPLE_CAPTIONS, None
    elif run.examples is not None:
        captions, real = run.examples
    else:  # every caption is longer than the model reads
        return
    prec = trainer.prec.compute if isinstance(trainer.prec, ResblockPrecision) else trainer.prec
    images = with_weights(model.prior, trainer.ema, lambda: model.generate(captions, 1, top_k=run.s.top_k, seed=0,
                                                                     precision=prec))
    save_labelled_grid([images] if real is None else [real, images], captions,
                       run.out / "samples" / f"step_{step:06d}.png", upscale=3)


def run_loop(run: Run, trainer: Trainer, text_ids: torch.Tensor, image_ids: torch.Tensor,
             val: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[int, dict]:
    """Steps from ``trainer.start`` to the end (or ``--stop-after``); returns (step, last log).
    Each logged step also records the validation losses and the caption's worth
    (``dalle.validation_losses``: ``conditioning_gain``, nats per image token) on ``val``."""
    s = run.s
    log = RunLog(fresh_log(run.out, s.resume) if run.rank == 0 else run.out / "metrics.jsonl",
                 quiet=s.progress)  # without the progress bar, one console line per logged step
    tokens_per_pair = run.model.text_len + run.model.grid ** 2

    start = trainer.start
    stop = min(s.steps, start + s.stop_after) if s.stop_after else s.steps
    bar = tqdm(total=s.steps, initial=start, disable=run.rank != 0 or not s.progress, desc="dalle",
               dynamic_ncols=True)
    step, t0, seen, last = start, time.perf_counter(), 0, {}
    run.model.prior.train()
    # CUDA: worker processes gather each batch into pinned memory; CPU: plain indexing
    batches = token_batches((text_ids, image_ids),
                            lambda i: D.batch_indices(len(text_ids), run.local_batch, i, s.seed, run.world, run.rank),
                            range(start, stop), run.device, workers=s.workers)
    in_step = False
    try:
        with GracefulStop() as interrupt:
            while step < stop:
                if interrupt.agreed(run.world):  # Ctrl-C or SIGTERM: at a step boundary, save and stop
                    raise KeyboardInterrupt
                text_all, img_all = next(batches)  # (b, T), (b, N) or (b, K, N) with --shift
                if img_all.dim() == 3:
                    img_all = pick_shifts(img_all, s.seed, step, run.rank)
                if s.caption_dropout:
                    text_all = drop_captions(text_all, s.caption_dropout, run.model.tokenizer.pad_ids(),
                                             s.seed, step, run.rank)
                in_step = True
                record = trainer.step(step, text_all, img_all)
                step += 1
                in_step = False
                seen += run.batch
                elapsed = time.perf_counter() - t0
                last = {"step": step, **record, "pairs_per_s": seen / elapsed,
                        "tokens_per_s": seen * tokens_per_pair / elapsed, "elapsed_s": elapsed}
                bar.update(1)
                bar.set_postfix(loss=f"{last['loss']:.3f}", tok_s=f"{last['tokens_per_s']:.0f}")
                if step % s.log_every == 0 or step == s.steps:
                    if val is not None:  # every rank (FSDP needs them all); rank 0 logs
                        with trainer.prec.autocast():
                            v = validation_losses(run.model.prior, *val, s.text_weight, seed=s.seed)
                        last.update(val_loss=v["loss"], val_image_loss=v["image"],
                                    conditioning_gain=v["conditioning_gain"])
                    if run.rank == 0:
                        log.write(last)
                if run.rank == 0 and s.sample_every and step % s.sample_every == 0:
                    write_samples(run, trainer, step)
                if step % s.ckpt_every == 0 and step < s.steps:
                    trainer.save_resume(step)
    except KeyboardInterrupt:
        bar.close()
        if in_step:  # a second Ctrl-C inside a step: the weights may hold part of it; keep the last checkpoint
            if run.rank == 0:
                print(f"\nstopped inside step {step + 1}; {trainer.resume_path} holds the last checkpoint; "
                      "continue with --resume", flush=True)
        else:
            trainer.save_resume(step)
            if run.rank == 0:
                print(f"\ninterrupted at step {step}: saved {trainer.resume_path}; continue with --resume",
                      flush=True)
        raise SystemExit(130)
    bar.close()
    return step, last


# --------------------------------------------------------------------------- 5. finish
def finish(run: Run, trainer: Trainer, step: int, last: dict, n_pairs: int) -> dict:
    """Save resume.pt; at the last step also the whole system (EMA weights if any) and
    metrics.json."""
    s, model = run.s, run.model
    trainer.save_resume(step)
    result = dict(last, device=run.device.type, world_size=run.world, precision=trainer.prec.name,
                  parameters=sum(p.numel() for p in model.prior.parameters()),
                  train_pairs=n_pairs, stopped_early=step < s.steps)
    if step >= s.steps and s.fsdp:  # gather the whole prior into a plain copy on rank 0
        msd, _ = D.full_state(model.prior, trainer.opt)
        if run.rank == 0:
            model = DALLE(model.tokenizer, model.dvae.cpu(), model.config)
            model.prior.load_state_dict(msd)
    if step >= s.steps and run.rank == 0:
        command = command_line()
        held = [list(p) for p in DEFAULT_HOLDOUT] if run.dataset_name == "shapes" else []
        with_weights(model.prior, trainer.ema, lambda: model.save(
            run.out, weights_dtype=torch.float16 if s.save_fp16 else None,
            extra={"step": step, "metrics": result, "command": command, "held_out_pairs": held}))
        (run.out / "metrics.json").write_text(json.dumps(dict(result, command=command), indent=2) + "\n")
        write_samples(run, trainer, step, model)  # the final grid, whatever --sample-every says
        print(f"step {step}: loss {result.get('loss', float('nan')):.3f}; saved the system in {run.out} "
              f"(samples: {run.out / 'samples'}). Generate from it with: python -m dalle_mini_impl generate "
              f"\"a small red circle on the left\" --model {run.out}", flush=True)
    elif run.rank == 0:
        print(f"stopped at step {step} of {s.steps}: saved {trainer.resume_path}; continue with --resume",
              flush=True)
    D.barrier(run.world)
    D.teardown(run.world)
    return result


# --------------------------------------------------------------------------- the command
def print_paper_shape() -> dict:
    """The paper's 12B prior: parameter count (counted on the meta device) and memory."""
    info = paper_report()
    n = info["parameters"]
    print(f"DALL-E's prior (paper 2.2, B.1): {info['n_layers']} layers, d_model {info['d_model']}, "
          f"{info['n_heads']} heads, {info['text_len']} text + {info['image_tokens']} image tokens")
    print(f"parameters: {n:,} ({n / 1e9:.2f} B)")
    print(f"memory for training with float32 master weights + AdamW (16 bytes/parameter): "
          f"{info['gib_fp32_adam']:,} GiB before activations; the fp16 weights alone: "
          f"{info['gib_fp16_weights_only']} GiB. The paper shards this over 1024 V100s (16 GB); "
          "not trained here.")
    return info


def train_dalle(s: DalleSettings) -> dict:
    """Train (or resume) a DALL-E prior; see the module docstring."""
    if s.preset == "paper":
        return print_paper_shape()
    run = setup(s)
    images = build(run)
    text_ids, image_ids = tokens_of(run, images)
    sample_examples(run, images, validation_indices(len(images), s.val_pairs, s.seed)[1])
    del images
    text_ids, image_ids, val = split_validation(text_ids, image_ids, s.val_pairs, s.seed)
    trainer = Trainer(run)
    step, last = run_loop(run, trainer, text_ids, image_ids, val)
    return finish(run, trainer, step, last, len(text_ids))


def add_parser(sub) -> None:
    p = sub.add_parser("dalle", help="stage 2: the transformer prior over text + image tokens (lesson 08)")
    add_common_args(p, steps=1000, out="runs/dalle", preset_help="cpu, gpu16, gpu80 (default: by device) or "
                    "paper (prints the 12B shape)")
    p.set_defaults(ckpt_every=500)
    p.add_argument("--dvae", default=None, help="dVAE checkpoint (default: data/dvae_shapes_toy/dvae.pt)")
    p.add_argument("--objects", type=objects_arg, default=1, help="shapes: objects per image, 1, 2 or 1,2")
    p.add_argument("--n-train", type=positive_int, default=None, help="pairs to train on (shapes: drawn; default 20000)")
    p.add_argument("--text-len", type=positive_int, default=None, help="text positions (default: what the longest training caption needs, rounded "
                        "up to a multiple of 8 with room for a word more, at most the preset's)")
    p.add_argument("--bpe-vocab", type=positive_int, default=None,
                   help="BPE vocabulary for folder: and coco: datasets (default: the preset's, 512)")
    p.add_argument("--d-model", type=positive_int, default=None)
    p.add_argument("--n-layers", type=positive_int, default=None)
    p.add_argument("--n-heads", type=positive_int, default=None)
    p.add_argument("--attention", default="sparse", choices=["sparse", "full"])
    p.add_argument("--dropout", type=decay, default=0.0)
    p.add_argument("--text-weight", type=nonnegative_float, default=1 / 8, help="loss weight of the text tokens (paper: 1/8)")
    p.add_argument("--caption-dropout", type=decay, default=0.0,
                   help="share of training captions replaced by the empty caption (e.g. 0.1), so that "
                        "generate --guidance S can guide sampling (classifier-free guidance); 0: off")
    p.add_argument("--shift", type=nonnegative_int, default=None,
                   help="augmentation: each training image is translated by up to this many pixels (a "
                        "random one of the (2n+1)^2 translations each time; the edge pixels fill the border), "
                        "which keeps a caption true unless it states exact positions; 0: off (default: 1 on "
                        "digits and your own data, 0 on shapes)")
    p.add_argument("--warmup", type=positive_int, default=None, help="linear warm-up steps (default: min(preset, steps/10))")
    p.add_argument("--weight-decay", type=nonnegative_float, default=4.5e-2)
    p.add_argument("--clip", type=positive_float, default=4.0, help="gradient norm clip (paper: 4)")
    p.add_argument("--ema", type=decay, default=0.0, help="EMA decay of the weights, e.g. 0.999 (0: off)")
    p.add_argument("--sample-every", type=nonnegative_int, default=0,
                   help="write a sample grid every N steps (0: only at the end)")
    p.add_argument("--top-k", type=positive_int, default=32, help="top-k of the sample grids")
    p.add_argument("--val-pairs", type=nonnegative_int, default=None,
                   help="pairs held out for the validation loss and the conditioning gain logged with each "
                        "log line (default: 5%%, at most 512, none below 40 pairs; 0: none)")
    p.add_argument("--grad-scaling", choices=["global", "per-resblock"], default="global",
                   help="fp16 only: one loss scale (torch.amp.GradScaler), or one gradient scale per resblock "
                        "(paper appendix D, lesson 07; on a CPU float16 gradients are emulated)")
    p.add_argument("--max-nonfinite", type=nonnegative_int, default=10,
                   help="stop after this many updates in a row skipped for an inf/NaN loss or gradient (0: never)")
    p.add_argument("--save-fp16", action="store_true", help="store the final prior weights in float16 (half size)")
    p.add_argument("--micro-batch", type=positive_int, default=None,
                   help="pairs per forward pass on each process; the batch is accumulated from pieces "
                        "of this size (default: the preset's: all of it on cpu, 64 on gpu16 and gpu80)")
    p.add_argument("--compile", action="store_true", help="torch.compile the transformer (off by default; "
                   "minutes of compiling first, then faster steps on CUDA; on CPU it needs a C++ compiler)")
    p.add_argument("--fsdp", action="store_true", help="shard weights, gradients and AdamW state over the "
                   "torchrun processes (FSDP2 fully_shard; bf16 or fp32) instead of replicating them (DDP)")
    p.add_argument("--workers", type=nonnegative_int, default=None,
                   help="DataLoader worker processes for the pre-tokenised data (default: 4 on CUDA, none on CPU)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="tqdm progress bar")
    p.set_defaults(func=lambda args: train_dalle(DalleSettings.from_args(args)))
