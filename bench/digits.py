"""Own-data benchmark on ``digits``: does a DALL-E trained on 1,438 real handwritten digits
draw the digit its caption asks for? (issue: "your own data, first class").

The reader is independent of everything it judges: a support-vector classifier trained by
scikit-learn on the *real* 8x8 digits of the dataset's train split (its accuracy on the 359
test digits is printed). A generated 32x32 image is averaged back down to 8x8 (the inverse of
the dataset's upscaling, up to the bilinear blur) and read. Printed, with the CPU:

- the classifier's accuracy on the real test digits, on the same digits after the 8 -> 32 -> 8
  round trip, and on the dVAE's reconstructions of them (the most a prior can reach);
- for each digit, the share of ``--per-digit`` samples (default 20) that the classifier reads as
  the requested digit, and the mean: the target is >= 0.85 within 15 minutes of one 2-core CPU
  for the dVAE and the prior together;
- whether the samples are new handwriting or copies: each sample's pixel distance to its nearest
  training digit, against the same for the real test digits (a prior that memorised its 1,400
  pairs draws near-copies, and the reader cannot tell).

    .venv/bin/python bench/digits.py --model RUN            # judge a trained system
    .venv/bin/python bench/digits.py --train RUN [--minutes 5|15|30]   # train the recipe, then judge it

``--train`` runs the own-data recipe of the README through the training command line on
``folder:`` data (the train split's digits written out as PNG files with .txt captions, as a
user's folder would be): the dVAE, then the prior (``RECIPES``), prints the minutes each took
(wall clock, and CPU time: a 2-core machine spends two CPU minutes a minute), and judges it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from dalle_mini_impl.dalle import DALLE  # noqa: E402
from dalle_mini_impl.datasets import DigitsDataset, digit_caption  # noqa: E402
from dalle_mini_impl.utils import cpu_summary  # noqa: E402


def digit_reader(seed: int = 0):
    """An SVC trained on the real 8x8 digits of the train split; returns (reader, test accuracy).
    ``reader(images)`` takes (N, C, S, S) images in [0, 1] and returns (N,) digit predictions."""
    from sklearn.svm import SVC

    train = DigitsDataset("train", image_size=8, seed=seed)
    test = DigitsDataset("test", image_size=8, seed=seed)
    clf = SVC(gamma=0.001 * 16 ** 2, C=10.0)  # the scikit-learn example's gamma, on [0, 1] pixels
    clf.fit(train.images.flatten(1).numpy(), train.labels.numpy())

    def read(images: torch.Tensor) -> np.ndarray:
        grey = images.float().mean(dim=1, keepdim=True)                  # (N, 1, S, S)
        small = F.adaptive_avg_pool2d(grey, 8) if grey.shape[-1] != 8 else grey
        pred = clf.predict(small.flatten(1).numpy())
        # a blank or nearly blank image reads as no digit (the SVC would call it a 1); the
        # faintest real digit has mean ink 0.13 (the 8x8 train digits: mean 0.30)
        pred[small.flatten(1).mean(1).numpy() < 0.05] = -1
        return pred

    acc = float((read(test.images) == test.labels.numpy()).mean())
    return read, acc


def judge_system(model: DALLE, read, per_digit: int, seed: int, top_k: int | None):
    """((10,) share of samples read as the requested digit, per digit; the samples). Each
    digit's samples use its captions' four phrasings in turn."""
    captions = [digit_caption(d, v % 4) for d in range(10) for v in range(per_digit)]
    images = model.generate(captions, n=1, top_k=top_k, seed=seed, batch_size=100)
    pred = read(images).reshape(10, per_digit)
    return (pred == np.arange(10)[:, None]).mean(axis=1), images


def nearest_train_mse(images: torch.Tensor, train: torch.Tensor) -> torch.Tensor:
    """(N,) pixel MSE of each grey image to its nearest training image: near 0 for a copy."""
    a, b = images.float().mean(1).flatten(1), train.float().mean(1).flatten(1)
    return (torch.cdist(a, b) ** 2 / a.shape[1]).min(dim=1).values


def write_digits_folder(path: Path, seed: int = 0) -> int:
    """The train split's digits as a user's folder: 32x32 PNGs with same-named .txt captions."""
    from PIL import Image

    ds = DigitsDataset("train", image_size=32, seed=seed)
    path.mkdir(parents=True, exist_ok=True)
    for i, (img, cap) in enumerate(zip(ds.images, ds.captions)):
        arr = (img[0].numpy() * 255).round().astype(np.uint8)
        Image.fromarray(arr, mode="L").convert("RGB").save(path / f"{i:04d}.png")
        (path / f"{i:04d}.txt").write_text(cap + "\n")
    return len(ds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a trained system directory (DALLE.save)")
    ap.add_argument("--train", help="train the recipe into this folder first")
    ap.add_argument("--minutes", type=int, default=15, choices=sorted(RECIPES), help="--train: the budget")
    ap.add_argument("--per-digit", type=int, default=20)
    ap.add_argument("--top-k", type=int, default=32, help="as generate's default; 0: none")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(cpu_summary())
    read, acc = digit_reader()
    test = DigitsDataset("test", image_size=32, seed=0)
    round_trip = float((read(test.images) == test.labels.numpy()).mean())
    print(f"reader (SVC on the real 8x8 train digits): test accuracy {acc:.3f}; "
          f"after 8 -> 32 -> 8: {round_trip:.3f}")
    model_dir = args.model
    if args.train:
        model_dir = train_recipe(Path(args.train), args.minutes, args.seed, args.threads)
    if not model_dir:
        ap.error("give --model RUN or --train RUN")
    model = DALLE.load(model_dir)
    with torch.no_grad():
        recon = model.dvae.decode(model.dvae.encode(test.images.repeat(1, 3, 1, 1))).cpu()
    print(f"reader on the dVAE's reconstructions of the test digits (the ceiling): "
          f"{float((read(recon) == test.labels.numpy()).mean()):.3f}")
    t0 = time.time()
    per, samples = judge_system(model, read, args.per_digit, args.seed, args.top_k or None)
    print(f"samples: {args.per_digit} per digit, top-k {args.top_k}, {time.time() - t0:.1f} s")
    print("digit    " + " ".join(f"{d:>5d}" for d in range(10)) + "   mean")
    print("read as  " + " ".join(f"{p:5.2f}" for p in per) + f"  {per.mean():.3f}")
    # copies or new drawings? each image's distance to its nearest training digit, against the
    # same for the real test digits (new handwriting: what a model that does not copy gives)
    train = DigitsDataset("train", image_size=32, seed=0).images
    ours, real = nearest_train_mse(samples, train), nearest_train_mse(test.images, train)
    copies = float((ours < real.quantile(0.05)).float().mean())
    print(f"nearest training digit, pixel MSE (median): samples {ours.median():.4f}, real test digits "
          f"{real.median():.4f}; samples closer to a training digit than 95% of test digits are: {copies:.2f}")
    (Path(model_dir) / "digits_bench.json").write_text(json.dumps(
        {"per_digit": per.tolist(), "mean": float(per.mean()), "reader_test_acc": acc,
         "nearest_train_mse_median": float(ours.median()), "test_nearest_train_mse_median": float(real.median()),
         "near_copies": copies}))


# The own-data recipe (README, "Training on your own data"): the command lines a user types for
# a folder of about 1,500 captioned 32x32 images on a 2-core CPU, for three budgets in minutes
# of the whole machine (twice that in CPU minutes). The dVAE settles in about 1,500 updates;
# the rest of a budget goes to the prior.
RECIPES = {  # minutes: (dVAE updates, of them the hard-token decoder stage, prior steps)
    5: (800, 200, 800),
    15: (1500, 300, 2000),
    30: (1500, 300, 6000),
}


def recipe_args(minutes: int) -> tuple[list[str], list[str]]:
    """(dvae arguments, dalle arguments) of a budget's recipe."""
    dvae_steps, decoder_steps, prior_steps = RECIPES[minutes]
    dvae = ["--steps", str(dvae_steps - decoder_steps), "--decoder-steps", str(decoder_steps), "--batch-size", "32",
            "--lr", "1e-3", "--beta", "6.6", "--beta-steps", str((dvae_steps - decoder_steps) // 10),
            "--log-every", "250", "--ckpt-every", "500"]
    prior = ["--steps", str(prior_steps), "--batch-size", "32", "--lr", "1e-3", "--warmup", "100", "--ema", "0.995",
             "--log-every", "100", "--ckpt-every", "500", "--no-progress"]
    return dvae, prior


def train_recipe(out: Path, minutes: int, seed: int, threads: int) -> str:
    """Write the digits as a folder, train a budget's dVAE and prior on it; return the
    system's directory. Prints each stage's wall-clock and CPU minutes."""
    from dalle_mini_impl.training.__main__ import main as train

    folder = out / "folder"
    print(f"wrote {write_digits_folder(folder, seed)} captioned digits to {folder}")
    common = ["--dataset", f"folder:{folder}", "--seed", str(seed), "--threads", str(threads)]
    dvae_args, prior_args = recipe_args(minutes)
    t0, c0 = time.time(), time.process_time()
    train(["dvae", *common, *dvae_args, "--out", str(out / "dvae")])
    t1, c1 = time.time(), time.process_time()
    train(["dalle", *common, *prior_args, "--dvae", str(out / "dvae" / "dvae.pt"), "--out", str(out / "dalle")])
    t2, c2 = time.time(), time.process_time()
    print(f"the {minutes}-minute recipe took: dVAE {(t1 - t0) / 60:.1f} min ({(c1 - c0) / 60:.1f} CPU min), prior "
          f"{(t2 - t1) / 60:.1f} min ({(c2 - c1) / 60:.1f} CPU min), together {(t2 - t0) / 60:.1f} min "
          f"({(c2 - c0) / 60:.1f} CPU min)")
    return str(out / "dalle")


if __name__ == "__main__":
    main()
