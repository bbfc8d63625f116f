"""Cost per batch of a clenv stream against the ways other libraries feed data.

References, all over the same Fashion-MNIST training images, one process, one thread:
  1. a torch DataLoader iterating a TensorDataset of the same uint8 tensors (shuffled, batch B);
  2. torchvision's FashionMNIST dataset with per-sample transforms (random crop, flip, rotation, ToTensor) in a
     DataLoader: how Avalanche and Mammoth feed image streams.
Ours: ``env.step`` through gymnasium's wrappers (action validation, accuracy, next batch), without and with the
paper's per-sample augmentation (batched on the device).

The last line is ``ratio=<DataLoader time / our time>`` at batch 16, both without augmentation.

    python benchmarks/env_throughput.py [--batches 2000]
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
import torch

import clenv  # noqa: F401


def per_batch(fn, n: int, warmup: int = 50) -> float:
    for _ in range(warmup):
        fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def loader_fn(loader):
    it = iter(loader)

    def step():
        nonlocal it
        try:
            next(it)
        except StopIteration:
            it = iter(loader)
            next(it)

    return step


def env_fn(env):
    action = np.zeros(env.unwrapped.batch_size, np.int64)

    def step():
        _, _, terminated, _, _ = env.step(action)
        if terminated:
            env.reset()

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, default=2000)
    args = p.parse_args()
    torch.set_num_threads(1)
    from torch.utils.data import DataLoader, TensorDataset

    from clenv.data import load_dataset

    data = load_dataset("fashion_mnist")
    images, labels = data.train.images, data.train.labels
    rows = []
    ratios = {}
    for b in (16, 256):
        n = max(200, args.batches * 16 // b)
        dl = DataLoader(TensorDataset(images, labels), batch_size=b, shuffle=True, drop_last=True)
        t_dl = per_batch(loader_fn(dl), n)
        t_tv = float("nan")
        try:
            import torchvision.transforms as T
            from torchvision.datasets import FashionMNIST

            from clenv.data.sources import _load_fashion_mnist  # noqa: F401  (unpacks Debian's files if needed)
            import pathlib

            root = pathlib.Path.home() / ".cache" / "clenv" / "debian-fashion-mnist"
            tf = T.Compose([T.RandomCrop(28, padding=4), T.RandomHorizontalFlip(), T.RandomRotation(15), T.ToTensor()])
            tv = DataLoader(FashionMNIST(str(root), train=True, transform=tf), batch_size=b, shuffle=True, drop_last=True)
            t_tv = per_batch(loader_fn(tv), max(50, n // 8), warmup=5)
        except Exception as err:  # the torchvision reference needs the unpacked files
            print(f"(torchvision reference skipped: {err})")
        common = dict(num_tasks=1000, samples_per_task=60000 // 2, epochs_per_task=1, batch_size=b)
        ours = gym.make("RandomLabelFashionMNIST-v0", augment=False, **common)
        ours.reset(seed=0)
        t_ours = per_batch(env_fn(ours), n)
        aug = gym.make("RandomLabelFashionMNIST-v0", augment=True, **common)
        aug.reset(seed=0)
        t_aug = per_batch(env_fn(aug), n)
        ratios[b] = t_dl / t_ours
        rows.append((b, t_dl, t_tv, t_ours, t_aug))
    print(f"{'batch':>5}  {'DataLoader(TensorDataset)':>26}  {'torchvision+transforms':>23}  {'clenv':>10}  "
          f"{'clenv+augment':>13}  (microseconds per batch)")
    for b, t_dl, t_tv, t_ours, t_aug in rows:
        print(f"{b:>5}  {t_dl * 1e6:>26.1f}  {t_tv * 1e6:>23.1f}  {t_ours * 1e6:>10.1f}  {t_aug * 1e6:>13.1f}")
    for b, t_dl, t_tv, t_ours, t_aug in rows:
        print(f"batch {b}: DataLoader/clenv = {t_dl / t_ours:.2f}; torchvision+transforms/clenv+augment = "
              f"{t_tv / t_aug:.2f}")
    print(f"ratio={ratios[16]:.2f}")


if __name__ == "__main__":
    main()
