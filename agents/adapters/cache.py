"""Where the adapter families' pretrained bases are cached, and how a cached base is written and read.

``$CLENV_MODELS`` or ``~/.cache/clenv/models``. A base's file name carries a hash of its whole configuration, so a
different configuration never loads another's weights: ``<name>.safetensors`` holds the weights, ``<name>.json`` the
configuration and the training record. Both are written atomically (a temporary file, then a rename).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch.nn as nn

__all__ = ["models_root", "cached_path", "save_cached", "load_cached"]


def models_root() -> Path:
    """``CLENV_MODELS`` if set, else ``~/.cache/clenv/models``."""
    env = os.environ.get("CLENV_MODELS")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "clenv" / "models"


def cached_path(stem: str, config: dict, cache_dir: str | os.PathLike | None = None) -> Path:
    """``<root>/<stem>-<hash of config>.safetensors``."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(cache_dir).expanduser() if cache_dir is not None else models_root()
    return root / f"{stem}-{digest}.safetensors"


def save_cached(model: nn.Module, record: dict, path: Path) -> None:
    """Write ``model``'s state dict to ``path`` and ``record`` to ``path`` with a ``.json`` suffix, atomically."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    for target, write in ((path, lambda p: save_file(tensors, str(p))),
                          (path.with_suffix(".json"), lambda p: p.write_text(json.dumps(record, indent=2)))):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{target.name}.")
        os.close(fd)
        try:
            write(Path(tmp))
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def load_cached(model: nn.Module, path: Path) -> nn.Module:
    """Load the weights at ``path`` into ``model`` (strictly) and put it in eval mode."""
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(path)))
    model.eval()
    return model
