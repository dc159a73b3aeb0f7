"""Lesson 04's sweep: short toy-dVAE runs over objectives, seeds and precisions.

Five configurations (beta 0; beta 6.6, the paper's objective; beta 6.6 + the usage term;
the same with tau = 1/16 from the first update; the same with the logit-Laplace likelihood),
each for several seeds and in both float32 and bf16 autocast, 200 updates of 32 images
(``training.dvae.short_run``). Every run is measured on the 1,000 held-out shapes of lesson 04
(``elb.codebook_report`` + the hard-token MSE). The lesson reads the results: its claims are
checked on every seed and precision, and its one live run against their spread.

    .venv/bin/python bench/elb_sweep.py --out data/elb_sweep [--seeds 0,1,2] [--precisions fp32,bf16]

Writes OUT/results.json (every run's figures and perplexity curve, the command, the machine)
and OUT/recons.pt (uint8 reconstructions of the first 8 held-out images, seed 0, per
configuration and precision). bf16 runs are skipped (and said so) on a CPU without native
bf16: there they would take many times longer and say nothing new.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from dalle_mini_impl import elb  # noqa: E402
from dalle_mini_impl.datasets import load_images  # noqa: E402
from dalle_mini_impl.training.dvae import short_run  # noqa: E402
from dalle_mini_impl.utils import atomic_write_bytes, cpu_bf16_native, cpu_summary  # noqa: E402

CONFIGS = {
    "beta 0": dict(usage_weight=0.0, beta=0.0),
    "beta 6.6": dict(usage_weight=0.0, beta=6.6),
    "beta 6.6 + usage": dict(usage_weight=0.1, beta=6.6),
    "tau 1/16 at once": dict(usage_weight=0.1, beta=6.6, tau_const=1 / 16),
    "logit-Laplace": dict(usage_weight=0.1, beta=6.6, likelihood="logit_laplace"),
}


def held_out() -> tuple[torch.Tensor, torch.Tensor]:
    """(training images, held-out images): lesson 04's data."""
    return (load_images("shapes", 4096, "train", 32, seed=0),
            load_images("shapes", 1000, "holdout", 32, seed=1))


@torch.no_grad()
def measure(model, held: torch.Tensor) -> dict:
    """``elb.codebook_report`` of the held-out logits plus the hard-token MSE."""
    logits = model.logits(held)
    out = elb.codebook_report(logits)
    out["hard_mse"] = torch.nn.functional.mse_loss(model.decode(logits.argmax(1)), held).item()
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="data/elb_sweep")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    precisions = [s.strip() for s in args.precisions.split(",")]
    if "bf16" in precisions and not cpu_bf16_native():
        print("this CPU has no native bf16: the bf16 runs are skipped")
        precisions = [p for p in precisions if p != "bf16"]
    print(cpu_summary(), flush=True)
    train_x, held = held_out()
    runs, recons = [], {}
    t0 = time.perf_counter()
    for prec in precisions:
        for name, kw in CONFIGS.items():
            for seed in seeds:
                model, curve = short_run(train_x, held[:256], steps=args.steps, seed=seed, precision=prec, **kw)
                row = dict(config=name, seed=seed, precision=prec, steps=args.steps,
                           seconds=round(curve["seconds"], 1), curve=curve["perplexity"],
                           curve_steps=curve["step"], **measure(model, held))
                runs.append(row)
                if seed == seeds[0]:
                    with torch.no_grad():
                        recons[f"{name} | {prec}"] = (model.decode(model.encode(held[:8])) * 255).round().to(torch.uint8)
                print(f"{prec} {name:18s} seed {seed}: perplexity {row['perplexity']:6.1f}, dead {row['dead']:3d}, "
                      f"hard MSE {row['hard_mse']:.4f}, KL {row['kl']:.3f} ({row['seconds']:.0f} s)", flush=True)
    out = Path(args.out)
    result = {"command": "python bench/elb_sweep.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": cpu_summary(), "seconds": round(time.perf_counter() - t0), "configs":
              {k: {kk: vv for kk, vv in v.items()} for k, v in CONFIGS.items()}, "runs": runs}
    atomic_write_bytes(out / "results.json", (json.dumps(result, indent=1) + "\n").encode())
    import io
    buf = io.BytesIO()
    torch.save(recons, buf)
    atomic_write_bytes(out / "recons.pt", buf.getvalue())
    print(f"wrote {out / 'results.json'} and {out / 'recons.pt'} ({result['seconds']} s)")
    return result


if __name__ == "__main__":
    main()
