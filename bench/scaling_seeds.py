"""Lesson 10's scaling sweep over seeds: prior widths and data sizes at equal compute.

Four configurations -- d_model 32, 64 and 128 (4 layers) on 5,000 training pairs, and d_model
32 on 1,000 -- each trained for the same compute (6 N D with N = 12 L d^2: 400, 100 and 25
updates of 32 pairs, about 3e11 FLOPs) by the package's training command, once per seed
(``--seed``: weight initialisation and batch order). Every run is then graded exactly as
lesson 10 grades: one sample (seed 0) for each of 128 captions of training colour-shape
combinations, read by the shapes judge (caption accuracy), and the course FID of those
samples against 2,000 real images. The lesson loads the results, plots the mean and the
spread over seeds, asserts its claims on every seed, and re-grades one shipped run live
against the stored spread.

    .venv/bin/python bench/scaling_seeds.py --seeds 0,1,2 --out data/scaling_seeds [--work runs/scaling_seeds]

Writes OUT/results.json (per run: configuration, seed, steps, FLOPs, final training loss, image
loss curve, caption accuracy, FID; the commands; the machine). The trained priors stay in
WORK (not shipped); a run whose WORK folder already holds its metrics is not retrained
(``--train-only`` trains without grading, e.g. one seed per process).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

WIDTHS = {32: 400, 64: 100, 128: 25}         # d_model -> steps at equal compute (batch 32): 3.0e11 FLOPs
# (d_model, training pairs): three widths on 5,000 pairs, and the smallest width on 1,000 too
RUNS = ((128, 5_000), (64, 5_000), (32, 5_000), (32, 1_000))


def command(d_model: int, n_train: int, seed: int, out: Path) -> list[str]:
    """The training command of one sweep run (the shipped runs' command plus ``--seed``)."""
    return [sys.executable, "-m", "dalle_mini_impl.training", "dalle", "--dataset", "shapes", "--objects", "1",
            "--n-train", str(n_train), "--d-model", str(d_model), "--n-layers", "4", "--n-heads", "4",
            "--text-len", "16", "--batch-size", "32", "--steps", str(WIDTHS[d_model]), "--threads", "1",
            "--ckpt-every", "100000", "--log-every", "5", "--val-pairs", "0", "--save-fp16", "--no-progress",
            "--seed", str(seed), "--out", str(out)]


def run_dir(d_model: int, n_train: int, seed: int, work: Path) -> Path:
    return work / f"d{d_model}_n{n_train}_s{seed}"


def train(seeds, work: Path) -> None:
    for seed in seeds:
        for d_model, n_train in RUNS:
            out = run_dir(d_model, n_train, seed, work)
            if (out / "metrics.json").exists():
                continue
            t0 = time.perf_counter()
            subprocess.run(command(d_model, n_train, seed, out), check=True, cwd=ROOT)
            print(f"trained {out.name} in {time.perf_counter() - t0:.0f} s", flush=True)


@torch.no_grad()
def evaluate(seeds, work: Path) -> list[dict]:
    """Grade every run as lesson 10 does (same captions, sample seed, real set and judge)."""
    from dalle_mini_impl import metrics as M
    from dalle_mini_impl.dalle import DALLE
    from dalle_mini_impl.datasets import ShapesDataset
    from dalle_mini_impl.dvae import DiscreteVAE
    from dalle_mini_impl.judge import caption_accuracy, load_judge
    from dalle_mini_impl.utils import data_dir

    judge = load_judge()
    dvae = DiscreteVAE.load(data_dir() / "dvae_shapes_toy" / "dvae.pt")
    eval_caps = ShapesDataset(128, seed=31, split="train", n_objects=1).captions
    eval_real = M.feature_stats(M.judge_features(
        judge, ShapesDataset(2000, seed=32, split="train", n_objects=1).float_images()))
    rows = []
    for seed in seeds:
        for d_model, n_train in RUNS:
            path = run_dir(d_model, n_train, seed, work)
            model = DALLE.load(path, dvae=dvae)
            cfg, m = model.config.prior, model.meta["metrics"]
            non_emb = 12 * cfg.n_layers * cfg.d_model ** 2
            tokens_per_step = 32 * (cfg.text_len + cfg.image_len)
            imgs = model.generate(eval_caps, n=1, seed=0, batch_size=128)
            log = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]
            row = dict(d_model=cfg.d_model, n_train=m["train_pairs"], seed=seed, params=non_emb,
                       steps=m["step"], flops=6 * non_emb * m["step"] * tokens_per_step,
                       final_loss=m["loss"], caption_accuracy=caption_accuracy(judge, imgs, eval_caps),
                       fid=M.fid_from_features(eval_real, M.judge_features(judge, imgs)),
                       curve_steps=[r["step"] for r in log], image_loss=[r["image_loss"] for r in log])
            rows.append(row)
            print(f"seed {seed} d_model {row['d_model']:4d} pairs {row['n_train']:6d}: loss {row['final_loss']:.3f}, "
                  f"caption acc {row['caption_accuracy']:.3f}, FID {row['fid']:.1f}", flush=True)
    return rows


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out", default="data/scaling_seeds")
    p.add_argument("--work", default="runs/scaling_seeds")
    p.add_argument("--train-only", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    work = (ROOT / args.work) if not Path(args.work).is_absolute() else Path(args.work)
    t0 = time.perf_counter()
    train(seeds, work)
    if args.train_only:
        return {}
    from dalle_mini_impl.utils import atomic_write_bytes, cpu_summary
    runs = evaluate(seeds, work)
    result = {"command": "python bench/scaling_seeds.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "train_command": " ".join(command(64, 5_000, 1, Path("OUT"))[1:]).replace(sys.executable, "python"),
              "machine": cpu_summary(), "seconds": round(time.perf_counter() - t0), "runs": runs}
    out = ROOT / args.out if not Path(args.out).is_absolute() else Path(args.out)
    atomic_write_bytes(out / "results.json", (json.dumps(result, indent=1) + "\n").encode())
    print(f"wrote {out / 'results.json'} ({result['seconds']} s)")
    return result


if __name__ == "__main__":
    main()
