"""The frozen base of the adapter-memory agents: a compact Vision Transformer, pretrained here on data disjoint from the
tasks it is then adapted to, and cached.

004_49f6201e6e679480.txt adapts an ImageNet-pretrained ViT with rank-8 LoRA on every block's query and value
projections. This is **not** that ViT: it is a 4-block, 64-wide pre-LayerNorm ViT (:class:`CompactViT`, 16 patch
tokens and a class token, 4 heads, GELU MLP of width 128, about 140k parameters) whose attention has explicit
``query``, ``key``, ``value`` and ``out`` ``nn.Linear`` layers, so ``target_modules=("query", "value")`` adapts what
the paper adapts. The patch size is a quarter of the image side (7 for 28 x 28, 2 for 8 x 8, 8 for 32 x 32).

**Pretraining data** (:data:`PRETRAINING_DATA`): the *other* dataset of what the machines have, resized (bilinear) to
the task images' size and channel count, so no task image or class was seen by the base:

- for Fashion-MNIST tasks, scikit-learn's 8 x 8 digits (its 1,437 training images) upsampled to 28 x 28;
- for digits tasks, Fashion-MNIST's 60,000 training images downsampled to 8 x 8;
- for CIFAR-100 and Tiny-ImageNet tasks, CIFAR-10 (real data path; downloaded by torchvision when missing).

Classification of the pretraining dataset's 10 classes: AdamW (lr 1e-3, weight decay 0.05), cosine decay to 1e-5,
batch 128, ``steps`` updates, random crops of +-2 pixels (+-1 on 8 x 8), one seed (torch's generator for the
initialisation and the batch order). Cached under :func:`agents.adapters.cache.models_root` with a hash of the whole
configuration in the file name; the same configuration gives the same weights bit for bit on one machine. Train it
ahead of time with ``python -m agents.adapters.vit --task-dataset fashion_mnist``.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from agents.adapters.cache import base_parser, cached_model, cached_path, parse_base_args, train_or_show

__all__ = ["CompactViT", "PRETRAINING_DATA", "DEFAULT_CONFIG", "vit_config", "build_vit", "train_vit", "vit_path",
           "pretrained_vit"]

#: The dataset a base for each task dataset is pretrained on (disjoint images and classes).
PRETRAINING_DATA = {"fashion_mnist": "digits", "digits": "fashion_mnist", "cifar100": "cifar10",
                    "tiny_imagenet": "cifar10"}

#: The base's architecture and pretraining schedule (``image_shape`` and ``data`` are filled per task dataset).
DEFAULT_CONFIG = dict(dim=64, depth=4, heads=4, mlp_dim=128, steps=1500, batch_size=128, lr=1e-3, final_lr=1e-5,
                      weight_decay=0.05, seed=0)


class Attention(nn.Module):
    """Multi-head self-attention with separate ``query``, ``key``, ``value`` and ``out`` projections (adaptable by
    name, unlike ``nn.MultiheadAttention``, which reads its weights directly)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.heads = heads
        self.query, self.key, self.value, self.out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        h = self.heads
        q, k, v = (proj(x).view(B, N, h, D // h).transpose(1, 2) for proj in (self.query, self.key, self.value))
        a = F.scaled_dot_product_attention(q, k, v)
        return self.out(a.transpose(1, 2).reshape(B, N, D))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_dim: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.fc1, self.fc2 = nn.Linear(dim, mlp_dim), nn.Linear(mlp_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class CompactViT(nn.Module):
    """A pre-LayerNorm ViT on (B, C, H, W) float images: non-overlapping ``patch`` x ``patch`` patches (one Linear
    embedding), a class token, learned position embeddings, ``depth`` blocks, a final LayerNorm and ``head``, a
    Linear on the class token. :meth:`features` is the class token's final representation (``dim`` wide)."""

    def __init__(self, image_shape, num_classes: int, *, dim: int = 64, depth: int = 4, heads: int = 4,
                 mlp_dim: int = 128, patch: int | None = None):
        super().__init__()
        C, H, W = (int(s) for s in image_shape)
        if H != W:
            raise ValueError(f"CompactViT takes square images, got {H} x {W}")
        self.patch = int(patch) if patch else max(1, H // 4)
        if H % self.patch:
            raise ValueError(f"the patch size {self.patch} does not divide the image side {H}")
        self.image_shape, self.dim = (C, H, W), int(dim)
        tokens = (H // self.patch) ** 2
        self.embed = nn.Linear(C * self.patch * self.patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.position = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"CompactViT expects images of shape (B, {', '.join(map(str, self.image_shape))}), "
                             f"got {tuple(x.shape)}")
        p = self.patch
        patches = F.unfold(x, p, stride=p).transpose(1, 2)  # (B, tokens, C p p)
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), self.embed(patches)], dim=1)
        tokens = tokens + self.position
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens[:, 0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def vit_config(task_dataset: str, image_shape, overrides: dict | None = None) -> dict:
    """The whole configuration of the base for tasks on ``task_dataset`` with images ``image_shape`` (C, H, W):
    :data:`DEFAULT_CONFIG` with ``overrides``, the pretraining dataset and the image shape."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(DEFAULT_CONFIG))
    if unknown:
        raise ValueError(f"unknown ViT base setting(s) {unknown}; expected some of {sorted(DEFAULT_CONFIG)}")
    if task_dataset not in PRETRAINING_DATA:
        raise ValueError(f"no pretraining dataset is set for tasks on {task_dataset!r} (known: "
                         f"{sorted(PRETRAINING_DATA)}); pass base_model='random' or your own module")
    return {**DEFAULT_CONFIG, **overrides, "data": PRETRAINING_DATA[task_dataset],
            "image_shape": [int(s) for s in image_shape]}


def build_vit(config: dict, num_classes: int = 10) -> CompactViT:
    """An untrained :class:`CompactViT` of ``config`` (drawn from torch's global generator)."""
    return CompactViT(config["image_shape"], num_classes, dim=config["dim"], depth=config["depth"],
                      heads=config["heads"], mlp_dim=config["mlp_dim"])


def vit_path(config: dict, cache_dir: str | os.PathLike | None = None) -> Path:
    C, H, _ = config["image_shape"]
    return cached_path(f"vit-{config['data']}-{C}x{H}-D{config['dim']}-L{config['depth']}-seed{config['seed']}",
                       config, cache_dir)


def _pretraining_images(config: dict, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The pretraining dataset's ``split`` as float images in [0, 1] resized to the configured shape, and labels."""
    from clenv.data.sources import load_dataset

    ds = load_dataset(config["data"])
    part = ds.train if split == "train" else ds.test
    x = part.images.float() / 255.0
    C, H, W = config["image_shape"]
    if x.shape[1] != C:
        x = x.mean(1, keepdim=True).expand(-1, C, -1, -1) if C != 1 else x.mean(1, keepdim=True)
    if tuple(x.shape[2:]) != (H, W):
        x = F.interpolate(x, size=(H, W), mode="bilinear", align_corners=False, antialias=x.shape[2] > H)
    return x.contiguous(), part.labels


def _shift(x: torch.Tensor, pad: int, g: torch.Generator) -> torch.Tensor:
    """Random crops of +-``pad`` pixels (zero padding), one offset per image."""
    B, _, H, W = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy, dx = (torch.randint(0, 2 * pad + 1, (B,), generator=g) for _ in range(2))
    rows = (dy[:, None] + torch.arange(H))[:, None, :, None].expand(-1, x.shape[1], -1, W + 2 * pad)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(W))[:, None, None, :].expand(-1, x.shape[1], H, -1)
    return out.gather(3, cols)


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    correct = sum(int((model(x[i:i + 1000]).argmax(1) == y[i:i + 1000]).sum()) for i in range(0, len(x), 1000))
    model.train()
    return correct / len(x)


def train_vit(config: dict, *, progress: bool = True) -> tuple[CompactViT, dict]:
    """Pretrain the base of ``config`` (see the module docstring); returns (model in eval mode, record)."""
    x, y = _pretraining_images(config, "train")
    xt, yt = _pretraining_images(config, "test")
    torch.manual_seed(config["seed"])
    model = build_vit(config, int(y.max()) + 1)
    g = torch.Generator().manual_seed(config["seed"])
    opt = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    steps, batch = int(config["steps"]), int(config["batch_size"])
    pad = 1 if config["image_shape"][1] <= 8 else 2
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=f"pretraining the ViT base on {config['data']}", unit="step", file=sys.stderr,
                   disable=None)  # None: only on a terminal (a log would get a line per redraw)
    t0, order, pos, losses = time.perf_counter(), torch.randperm(len(x), generator=g), 0, []
    for step in range(steps):
        if pos + batch > len(x):
            order, pos = torch.randperm(len(x), generator=g), 0
        idx = order[pos:pos + batch]
        pos += batch
        lr = config["final_lr"] + 0.5 * (config["lr"] - config["final_lr"]) * (1 + math.cos(math.pi * step / steps))
        for group in opt.param_groups:
            group["lr"] = lr
        loss = F.cross_entropy(model(_shift(x[idx], pad, g)), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    model.eval()
    record = {"config": config, "final_loss": sum(losses[-50:]) / len(losses[-50:]),
              "train_accuracy": _accuracy(model, x, y), "test_accuracy": _accuracy(model, xt, yt),
              "seconds": time.perf_counter() - t0}
    return model, record


def pretrained_vit(task_dataset: str, image_shape, overrides: dict | None = None, *,
                   cache_dir: str | os.PathLike | None = None, train_if_missing: bool = True,
                   progress: bool = True) -> CompactViT:
    """The pretrained base for tasks on ``task_dataset`` (eval mode; its ``head`` is the pretraining dataset's):
    loaded from the cache, or trained and cached first (``train_if_missing``; else ``FileNotFoundError``)."""
    cfg = vit_config(task_dataset, image_shape, overrides)
    return cached_model(vit_path(cfg, cache_dir), lambda: build_vit(cfg), lambda: train_vit(cfg, progress=progress),
                        what=f"ViT base on {cfg['data']}",
                        command=f"python -m agents.adapters.vit --task-dataset {task_dataset}",
                        train_if_missing=train_if_missing)


_SHAPES = {"fashion_mnist": (1, 28, 28), "digits": (1, 8, 8), "cifar100": (3, 32, 32), "tiny_imagenet": (3, 64, 64)}


def main(argv=None) -> int:
    parser = base_parser("python -m agents.adapters.vit", "Pretrain (or show) the adapter-memory agents' ViT base.",
                         DEFAULT_CONFIG)
    parser.add_argument("--task-dataset", choices=sorted(PRETRAINING_DATA), default="fashion_mnist",
                        help="the dataset of the tasks the base will be adapted to (it is pretrained on another)")
    args = parse_base_args(parser, argv)
    cfg = vit_config(args.task_dataset, _SHAPES[args.task_dataset], {"seed": args.seed, "steps": args.steps})
    return train_or_show(vit_path(cfg, args.cache_dir), lambda: train_vit(cfg), force=args.force)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
