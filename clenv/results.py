"""One result format per run: ``result.json`` (config, seed, package versions, per-task records, metrics, small
records) plus ``arrays-<hash>.npz`` (per-step series and every array record), both written atomically.

Layout of a run directory::

    runs/<env>/<agent>/seed<k>-<key>/
        arrays-<hash>.npz  step_reward, step_task, and "records.<name>" for every numpy array in result.records
        result.json        format, env_id, agent, seed, config, versions, created, summary, tasks, metrics, records,
                           arrays_file (the name of its arrays file)

``result.json`` is written last and names its arrays file (named by a hash of its bytes), so a directory with it is
complete, and rewriting a run folder never pairs one save's JSON with another's arrays: a reader sees the old pair
or the new one. Arrays files no ``result.json`` names are removed after the new JSON is in place. Non-finite floats
are stored as null (strict JSON); metrics and task accuracies read back as NaN, other JSON records keep None.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import io
import json
import math
import os
import platform
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from clenv.loop import RunResult, task_returns

__all__ = ["FORMAT", "save_run", "load_run", "run_dir", "package_versions", "find_runs", "atomic_write_bytes"]

FORMAT = "clenv-run/1"
_PACKAGES = ("clenv", "torch", "numpy", "gymnasium", "torchvision", "tianshou", "scikit-learn")


def package_versions() -> dict[str, str | None]:
    """Versions of Python and the packages a result depends on (None for one not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": platform.python_version(), "platform": platform.platform()}
    for name in _PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _slug(text: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", str(text)) or "none"


def run_dir(root: str | os.PathLike, env_id: str | None, agent: str, seed: int | None,
            timestamp: str | None = None) -> Path:
    """``root/<env>/<agent>/seed<k>-<timestamp>`` (not created). The timestamp defaults to now (UTC, to the
    microsecond, so two runs of one seed do not collide)."""
    ts = timestamp or _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return Path(root) / _slug(env_id) / _slug(agent) / f"seed{_slug(seed)}-{ts}"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file in the target's directory, fsync it, then ``os.replace`` it into place:
    readers see the old file or the new one, never a partial one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _jsonable(x: Any) -> Any:
    """Plain JSON: numpy scalars to Python, arrays and tuples to lists, non-finite floats to None."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, (float, np.floating)):
        f = float(x)
        return f if math.isfinite(f) else None
    if hasattr(x, "item") and callable(x.item) and getattr(x, "ndim", 1) == 0:  # 0-d torch tensors
        return _jsonable(x.item())
    if hasattr(x, "tolist"):
        return _jsonable(x.tolist())
    if x is None or isinstance(x, (int, str)):
        return x
    return str(x)


def save_run(result: RunResult, directory: str | os.PathLike) -> Path:
    """Write ``result`` to ``directory`` (created if needed) as ``arrays.npz`` + ``result.json``; returns the
    directory. Numpy arrays in ``result.records`` go to the npz, everything else to the JSON."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    arrays = {"step_reward": np.asarray(result.step_reward), "step_task": np.asarray(result.step_task)}
    json_records: dict[str, Any] = {}
    for k, v in (result.records or {}).items():
        if isinstance(v, np.ndarray) and v.dtype != object:
            arrays[f"records.{k}"] = v
        else:
            json_records[k] = v
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    data = buf.getvalue()
    arrays_file = f"arrays-{hashlib.sha256(data).hexdigest()[:16]}.npz"
    atomic_write_bytes(d / arrays_file, data)
    doc = {
        "format": FORMAT,
        "env_id": result.env_id,
        "agent": result.agent,
        "seed": result.seed,
        "config": result.config,
        "versions": package_versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "summary": {"steps": result.steps, "episodes": result.episodes, "num_task_switches": result.num_task_switches,
                    "wall_time": result.wall_time},
        "tasks": {"task_ids": result.task_ids, "task_accuracy": result.task_accuracy,
                  "task_steps": result.task_steps},
        "metrics": result.metrics,
        "records": json_records,
        "arrays": sorted(arrays),
        "arrays_file": arrays_file,
    }
    atomic_write_bytes(d / "result.json", json.dumps(_jsonable(doc), indent=1, allow_nan=False).encode())
    for old in [*d.glob("arrays-*.npz"), d / "arrays.npz"]:  # the previous save's arrays, now named by no JSON
        if old.name != arrays_file:
            with contextlib.suppress(OSError):
                old.unlink()
    return d


def load_run(directory: str | os.PathLike) -> RunResult:
    """Read a run written by :func:`save_run` back into a :class:`RunResult` (``config["versions"]`` holds the
    package versions of the run)."""
    d = Path(directory)
    path = d / "result.json"
    if not path.is_file():
        raise FileNotFoundError(f"{d} is not a run directory: no result.json")
    doc = json.loads(path.read_text())
    if doc.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown result format {doc.get('format')!r}, expected {FORMAT!r}")
    records: dict[str, Any] = dict(doc.get("records") or {})
    with np.load(d / doc.get("arrays_file", "arrays.npz")) as z:  # results written before arrays_file: arrays.npz
        arrays = {k: z[k] for k in z.files}
    for k, v in arrays.items():
        if k.startswith("records."):
            records[k[len("records."):]] = v
    tasks, summary = doc["tasks"], doc["summary"]
    config = dict(doc.get("config") or {})
    config["versions"] = doc.get("versions")
    return RunResult(env_id=doc["env_id"], agent=doc["agent"], seed=doc["seed"], task_ids=list(tasks["task_ids"]),
                     task_accuracy=[float("nan") if a is None else float(a) for a in tasks["task_accuracy"]],
                     task_steps=list(tasks["task_steps"]), num_task_switches=summary["num_task_switches"],
                     steps=summary["steps"], episodes=summary["episodes"], wall_time=summary["wall_time"],
                     step_reward=arrays["step_reward"], step_task=arrays["step_task"],
                     metrics={k: float("nan") if v is None else float(v) for k, v in doc["metrics"].items()},
                     records=records, config=config,
                     # derived, as the loop derives it: RL runs' per-task returns from their episodes
                     task_return=task_returns(records["episodes"], tasks["task_ids"]) if records.get("episodes")
                     else [])


def find_runs(paths) -> list[Path]:
    """Run directories at or below each path (a directory holding ``result.json``), sorted, without duplicates."""
    found: dict[Path, None] = {}
    for p in paths:
        p = Path(p)
        if (p / "result.json").is_file():
            found[p.resolve()] = None
        elif p.is_dir():
            for r in sorted(p.rglob("result.json")):
                found[r.parent.resolve()] = None
        else:
            raise FileNotFoundError(f"{p}: no such run directory")
    return sorted(found)
