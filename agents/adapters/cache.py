"""Where the adapter families' pretrained bases are cached, and how a cached base is written and read.

``$CLENV_MODELS`` or ``~/.cache/clenv/models``. A base's file name carries a hash of its whole configuration, so a
different configuration never loads another's weights: ``<name>.safetensors`` holds the weights, ``<name>.json`` the
configuration and the training record. Both are written atomically (a temporary file, then a rename).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch.nn as nn

__all__ = ["models_root", "cached_path", "save_cached", "load_cached", "cached_model", "train_or_show", "base_parser", "parse_base_args"]


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


def cached_model(path: Path, build: Callable[[], nn.Module], train: Callable[[], tuple[nn.Module, dict]], *,
                 what: str, command: str, train_if_missing: bool = True) -> nn.Module:
    """The model cached at ``path`` (``build()`` then its weights, eval mode), or, when the cache lacks it,
    ``train()`` (model, record) saved there first; with ``train_if_missing=False`` a missing cache is a
    ``FileNotFoundError`` that names ``command``, the way to train it ahead of time."""
    if path.exists():
        return load_cached(build(), path)
    if not train_if_missing:
        raise FileNotFoundError(f"no pretrained {what} at {path}; train it with `{command}`")
    print(f"clenv: pretraining the {what} once (cached at {path})", file=sys.stderr)
    model, record = train()
    save_cached(model, record, path)
    return model


def train_or_show(path: Path, train: Callable[[], tuple[nn.Module, dict]], *, force: bool = False) -> int:
    """What ``python -m agents.adapters.<base>`` does: train and cache the model unless the cache has it (or
    ``force``), then print the path and the training record (without the configuration). Returns 0."""
    if force or not path.exists():
        model, record = train()
        save_cached(model, record, path)
    else:
        record = json.loads(path.with_suffix(".json").read_text())
    print(path)
    print(json.dumps({k: v for k, v in record.items() if k != "config"}, indent=2))
    return 0


def base_parser(prog: str, description: str, config: dict) -> argparse.ArgumentParser:
    """The bases' command line: ``--seed``, ``--steps`` (defaults from ``config``), ``--cache-dir``, ``--force``; a
    base adds its own options and parses with :func:`parse_base_args`."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--seed", type=int, default=config["seed"])
    parser.add_argument("--steps", type=int, default=config["steps"])
    parser.add_argument("--cache-dir", default=None, help="default: $CLENV_MODELS or ~/.cache/clenv/models")
    parser.add_argument("--force", action="store_true", help="retrain even when the cache has it")
    return parser


def parse_base_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be a positive integer, got {args.steps}")
    return args
