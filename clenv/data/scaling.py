"""The one input scaling rule: uint8 images become floats in [0, 1]; other inputs become floats unchanged."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["to_unit_float"]


def to_unit_float(x, device=None) -> torch.Tensor:
    """``x`` as a float tensor (on ``device``): uint8 pixels divided by 255, anything else cast."""
    kind = device.type if isinstance(device, torch.device) else None if device is None else torch.device(device).type
    on_host = kind in (None, "cpu")
    if on_host and type(x) is np.ndarray and x.flags.c_contiguous and x.flags.writeable and x.dtype.kind in "uif":
        x = torch.from_numpy(x)  # the common host batch: the simplest conversion (no copy, as as_tensor)
    else:
        x = torch.as_tensor(x, device=device)
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
