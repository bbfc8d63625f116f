"""The one input scaling rule: uint8 images become floats in [0, 1]; other inputs become floats unchanged."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["host_tensor", "to_unit_float"]


def host_tensor(x, device=None) -> torch.Tensor:
    """``x`` as a tensor on ``device`` sharing its memory where it can (``torch.as_tensor``'s meaning). A contiguous,
    writable numpy array bound for the CPU, the env's every batch and label array, goes through ``torch.from_numpy``,
    the simplest conversion: a step's conversions run on a cold cache, where fewer code paths cost less."""
    kind = device.type if isinstance(device, torch.device) else None if device is None else torch.device(device).type
    if kind in (None, "cpu") and type(x) is np.ndarray and x.flags.c_contiguous and x.flags.writeable \
            and x.dtype.kind in "uif":
        return torch.from_numpy(x)
    return torch.as_tensor(x, device=device)


def to_unit_float(x, device=None) -> torch.Tensor:
    """``x`` as a float tensor (on ``device``): uint8 pixels divided by 255, anything else cast."""
    x = host_tensor(x, device)
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
