"""Dataset generation speed: shapes images per second at 32x32 and 64x64 (target: at least
5,000 images/s at 32x32 on a 2-core CPU), and the cost of reading the in-memory cache.

    python bench/datasets.py
"""
import time

import torch

from dalle_mini_impl.datasets import DigitsDataset, ShapesDataset


def best_of(fn, repeats=3):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    print(f"torch threads: {torch.get_num_threads()}")
    ShapesDataset(1000, seed=0)  # warm up NumPy
    for size, n in ((32, 20_000), (64, 5_000)):
        for objs in (1, (1, 2)):
            t = best_of(lambda: ShapesDataset(n, image_size=size, seed=1, n_objects=objs))
            print(f"shapes {size}x{size} n_objects={objs}: {n / t:,.0f} images/s "
                  f"({n} images in {t:.2f} s)")
    ds = ShapesDataset(20_000, seed=1)
    t = best_of(lambda: [ds[i] for i in range(len(ds))])
    print(f"shapes cached epoch (item by item): {len(ds) / t:,.0f} items/s")
    t = best_of(lambda: ds.float_images())
    print(f"shapes cached epoch (one tensor): {len(ds) / t:,.0f} images/s")
    t = best_of(lambda: DigitsDataset("all", image_size=32))
    print(f"digits 1,797 upscaled to 32x32: {t:.2f} s")


if __name__ == "__main__":
    main()
