"""The one input scaling rule: uint8 images become floats in [0, 1]; other inputs become floats unchanged."""

from __future__ import annotations

import torch

__all__ = ["to_unit_float"]


def to_unit_float(x, device=None) -> torch.Tensor:
    """``x`` as a float tensor (on ``device``): uint8 pixels divided by 255, anything else cast."""
    x = torch.as_tensor(x, device=device)
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
