"""Batched per-sample augmentation: random crop (as a translation), horizontal flip and rotation.

NeuMoSync Appendix B.3: every sample is randomly cropped, flipped and rotated, drawn differently for each task. All
three are one affine warp per sample, so a whole batch is one ``affine_grid`` + ``grid_sample`` call on the run's
device; the draws come from a torch Generator the stream seeds per task (``augment="per_task"``: one view per sample
for the whole task) or per (task, epoch) (``"per_epoch"``).
"""

from __future__ import annotations

import math
from functools import lru_cache
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["Augmentation"]


@lru_cache(maxsize=32)
def _base_grid(h: int, w: int, device: torch.device) -> torch.Tensor:
    """Homogeneous pixel-centre coordinates in [-1, 1], shape (h, w, 3) for align_corners=False."""
    ys = (torch.arange(h, dtype=torch.float32) * 2 + 1) / h - 1
    xs = (torch.arange(w, dtype=torch.float32) * 2 + 1) / w - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy, torch.ones_like(gx)], dim=-1).to(device)


@dataclass(frozen=True)
class Augmentation:
    """Per-sample random crop (padding ``crop_padding`` pixels, i.e. a shift of up to that much), horizontal flip
    with probability ``flip_prob`` and rotation uniform in +-``max_rotation`` degrees."""

    crop_padding: int = 2
    flip_prob: float = 0.5
    max_rotation: float = 15.0

    def __post_init__(self):
        if self.crop_padding < 0 or not 0.0 <= self.flip_prob <= 1.0 or self.max_rotation < 0:
            raise ValueError(f"invalid augmentation {self}")

    @classmethod
    def for_image_size(cls, size: int) -> "Augmentation":
        """The usual padding: 4 pixels at 32x32 (CIFAR), scaled with the image side (2 at 28, 1 at 8)."""
        return cls(crop_padding=max(1, round(size / 8)))

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Draw ``n`` per-sample parameters as a (n, 4) tensor: shift x, shift y (pixels), flip (0/1), angle (rad)."""
        u = torch.rand((n, 4), generator=generator)
        p = torch.empty_like(u)
        p[:, 0] = torch.floor(u[:, 0] * (2 * self.crop_padding + 1)) - self.crop_padding
        p[:, 1] = torch.floor(u[:, 1] * (2 * self.crop_padding + 1)) - self.crop_padding
        p[:, 2] = (u[:, 2] < self.flip_prob).float()
        p[:, 3] = (u[:, 3] * 2 - 1) * math.radians(self.max_rotation)
        return p

    @staticmethod
    def apply(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Warp uint8 images (B, C, H, W) with per-sample ``params`` from :meth:`draw`; returns uint8.

        Pixels moved in from outside the image are zero, as with zero-padded cropping.
        """
        b, _, h, w = images.shape
        params = params.to(images.device)
        cos, sin = torch.cos(params[:, 3]), torch.sin(params[:, 3])
        flip = 1.0 - 2.0 * params[:, 2]
        theta = torch.zeros((b, 2, 3), device=images.device)
        # Output pixel -> input pixel in normalised coordinates: rotate, then mirror x, then shift.
        theta[:, 0, 0] = cos * flip
        theta[:, 0, 1] = -sin * flip
        theta[:, 1, 0] = sin
        theta[:, 1, 1] = cos
        theta[:, 0, 2] = params[:, 0] * 2.0 / w
        theta[:, 1, 2] = params[:, 1] * 2.0 / h
        # Same grid as F.affine_grid(theta, ..., align_corners=False), from a cached base grid (much cheaper on CPU).
        # One (h*w, 3) x (3, b*2) GEMM; a broadcast batched matmul of 3x2 matrices is several times slower.
        grid = (_base_grid(h, w, images.device).view(h * w, 3) @ theta.permute(2, 0, 1).reshape(3, b * 2))
        grid = grid.view(h, w, b, 2).permute(2, 0, 1, 3)
        out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return out.round_().clamp_(0, 255).to(torch.uint8)
