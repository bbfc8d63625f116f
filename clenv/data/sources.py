"""Dataset sources: each dataset becomes one uint8 image tensor (N, C, H, W) and int64 labels, per split.

Every loader goes through the real on-disk format (torchvision's dataset classes, ImageFolder trees, the idx files
of Debian's ``dataset-fashion-mnist``, scikit-learn's bundled digits). A dataset is loaded once per process and
cached; streams index into it, so a batch is an index, never a DataLoader iteration.

Where data is looked for: the ``root`` argument, else the ``CLENV_DATA`` environment variable, else torchvision's
conventional ``~/.cache/clenv/data`` (and, for Fashion-MNIST, ``/usr/share/datasets/fashion-mnist``). An explicit
``root`` is the only place looked (and downloaded into, with ``download`` not False): when it is empty, is a file or
holds damaged files, that is an error naming it, never a silent fall-back to another copy. A damaged idx file
(truncated, or not idx at all) is an error wherever it is found.
"""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

__all__ = [
    "Dataset",
    "DatasetNotFoundError",
    "DatasetUnreadableError",
    "DATASETS",
    "load_dataset",
    "default_data_root",
    "clear_cache",
]

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


class DatasetNotFoundError(FileNotFoundError):
    """A dataset could not be found on disk; the message names every place looked and how to fix it."""


class DatasetUnreadableError(DatasetNotFoundError):
    """A dataset's file is there but cannot be read (truncated, damaged, not the format); the message names the file
    and the fix. A subclass of :class:`DatasetNotFoundError`, so code that handles a missing dataset handles it."""


@dataclass(frozen=True)
class Split:
    """One split of a dataset: uint8 images (N, C, H, W) and int64 labels (N,), both on the CPU."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError("labels must have one entry per image")

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class Dataset:
    """A loaded dataset: its name, train and test splits, the number of classes and where it came from."""

    name: str
    train: Split
    test: Split
    num_classes: int
    source: str

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]


def default_data_root() -> Path:
    """``CLENV_DATA`` if set, else ``~/.cache/clenv/data``."""
    env = os.environ.get("CLENV_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "clenv" / "data"


def _roots(root: str | os.PathLike | None) -> list[Path]:
    return [Path(root).expanduser()] if root is not None else [default_data_root()]


def _missing(name: str, looked: list[str], fix: str) -> DatasetNotFoundError:
    places = "\n".join(f"  - {p}" for p in looked)
    return DatasetNotFoundError(
        f"dataset {name!r} not found. Looked in:\n{places}\nFix: {fix}\n"
        f"(The data root is the data_root= argument, else the CLENV_DATA environment variable, else "
        f"{Path.home() / '.cache' / 'clenv' / 'data'}.)"
    )


def _split_from_torchvision(ds) -> Split:
    data = ds.data
    if isinstance(data, np.ndarray):  # CIFAR: (N, H, W, C) uint8
        images = torch.from_numpy(np.ascontiguousarray(data)).permute(0, 3, 1, 2).contiguous()
    else:  # MNIST family: (N, H, W) uint8 tensor
        images = data.unsqueeze(1).contiguous()
    labels = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
    return Split(images.to(torch.uint8), labels)


# Bytes per element of each idx type code (the MNIST family's file format).
_IDX_ITEMSIZE = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}


def _idx_problem(path: Path) -> str | None:
    """None when ``path`` is a complete idx file, else what is wrong with it (torchvision would fail on it with an
    error that does not name the file, or with an ``assert`` that ``python -O`` removes)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(4)
        if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in _IDX_ITEMSIZE or not 1 <= head[3] <= 3:
            return f"{path} is not an idx file (its {min(size, 4)}-byte header is not 0, 0, type, 1..3 dimensions)"
        raw_dims = f.read(4 * head[3])
    if len(raw_dims) < 4 * head[3]:
        return f"{path} is truncated: {size} bytes, shorter than its header"
    dims = struct.unpack(f">{head[3]}I", raw_dims)
    expected = 4 + 4 * head[3] + int(np.prod(dims, dtype=np.int64)) * _IDX_ITEMSIZE[head[2]]
    if size != expected:
        return (f"{path} is {'truncated' if size < expected else 'damaged'}: {size} bytes, where its header "
                f"(shape {tuple(dims)}) says {expected}")
    return None


def _check_idx_files(cls, name: str, root: Path) -> None:
    """Raise :class:`DatasetUnreadableError` naming the first damaged idx file of torchvision MNIST-family dataset
    ``cls`` at ``root`` (files that are absent are torchvision's "not found", reported by the caller)."""
    import torchvision.datasets as tvd

    if not (isinstance(cls, type) and issubclass(cls, tvd.MNIST)):
        return
    raw = root / cls.__name__ / "raw"
    for url, _ in cls.resources:
        path = raw / os.path.splitext(os.path.basename(url))[0]
        if path.is_file():
            problem = _idx_problem(path)
            if problem:
                raise DatasetUnreadableError(
                    f"dataset {name!r}: {problem}.\nFix: delete {path} and run again (with download=None, the "
                    f"default, torchvision fetches it again), or copy a complete file there.")


def _try_torchvision(cls, name: str, num_classes: int, root: Path, download: bool,
                     looked: list[str]) -> Dataset | None:
    """Both splits of torchvision dataset ``cls`` at ``root``, or None (the reason appended to ``looked``)."""
    looked.append(f"{root}" + (" (download attempted)" if download else ""))
    if root.exists() and not root.is_dir():
        looked[-1] = f"{root}: a file, not a directory"
        return None
    _check_idx_files(cls, name, root)
    try:
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
    except (RuntimeError, OSError) as err:  # "Dataset not found or corrupted"; a failed download (URLError)
        looked[-1] += f": {str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__}"
        return None
    return Dataset(name, _split_from_torchvision(train), _split_from_torchvision(test), num_classes,
                   f"torchvision.datasets.{cls.__name__}({root})")


def _explicit_fix(root, what: str) -> str:
    """The fix for an explicit data root that did not hold the dataset."""
    r = Path(root).expanduser()
    if r.exists() and not r.is_dir():
        return f"data_root must be a directory: pass the folder that holds {what}, not the file {r}"
    return (f"put {what} under {r} (with download=None, the default, torchvision fetches it there when online), "
            f"or leave data_root unset to use CLENV_DATA and the other default places")


def _torchvision(cls_name: str, num_classes: int, fix: str) -> Callable[..., Dataset]:
    def load(root=None, download: bool | None = None) -> Dataset:
        import torchvision.datasets as tvd

        cls = getattr(tvd, cls_name)
        looked: list[str] = []
        for r in _roots(root):
            found = _try_torchvision(cls, cls_name.lower(), num_classes, r, bool(download), looked)
            if found is not None:
                return found
        first = _roots(root)[0]
        if download is None and not (first.exists() and not first.is_dir()):  # not on disk: fetch it (internet)
            found = _try_torchvision(cls, cls_name.lower(), num_classes, first, True, looked)
            if found is not None:
                return found
        raise _missing(cls_name, looked, fix if root is None else _explicit_fix(root, f"{cls_name}'s files"))

    return load


_FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                  "t10k-labels-idx1-ubyte")


def _load_fashion_mnist(root=None, download: bool | None = None) -> Dataset:
    """torchvision's FashionMNIST under the data root, else Debian's ``dataset-fashion-mnist`` idx files, else (with
    ``download`` not False) torchvision's download."""
    import torchvision.datasets as tvd

    looked: list[str] = []
    for r in _roots(root):
        found = _try_torchvision(tvd.FashionMNIST, "fashion_mnist", 10, r, bool(download), looked)
        if found is not None:
            return found
    if root is not None:
        # An explicit root is the data the caller asked for: another copy (Debian's) would hide that it failed.
        r = _roots(root)[0]
        if download is None and not (r.exists() and not r.is_dir()):
            found = _try_torchvision(tvd.FashionMNIST, "fashion_mnist", 10, r, True, looked)
            if found is not None:
                return found
        raise _missing("FashionMNIST", looked, _explicit_fix(root, "torchvision's FashionMNIST/raw/ idx files"))
    debian = Path(os.environ.get("CLENV_DEBIAN_FASHION_MNIST", DEBIAN_FASHION_MNIST))
    looked.append(str(debian))
    if all((debian / f"{f}.gz").exists() for f in _FASHION_FILES):
        cache = _unpack_debian_fashion_mnist(debian)
        return Dataset("fashion_mnist", _split_from_torchvision(tvd.FashionMNIST(str(cache), train=True)),
                       _split_from_torchvision(tvd.FashionMNIST(str(cache), train=False)),
                       10, f"Debian dataset-fashion-mnist ({debian})")
    if download is None:
        found = _try_torchvision(tvd.FashionMNIST, "fashion_mnist", 10, _roots(root)[0], True, looked)
        if found is not None:
            return found
    raise _missing("FashionMNIST", looked, "on a machine with internet the download runs by itself (download=None, "
                   "the default); offline, `apt-get install -y dataset-fashion-mnist`, or put torchvision's "
                   "FashionMNIST/raw files under CLENV_DATA")


def _unpack_debian_fashion_mnist(debian: Path) -> Path:
    """Unpack Debian's .gz idx files once into a cache that torchvision reads (``<cache>/FashionMNIST/raw``).

    Each file is written to a temporary name and renamed when complete, so a crash never leaves a partial file
    under the final name; on failure the temporary file is removed and the error names the .gz file."""
    cache = Path.home() / ".cache" / "clenv" / "debian-fashion-mnist"
    raw = cache / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    fix = ("Fix: `apt-get install --reinstall -y dataset-fashion-mnist`, or point CLENV_DEBIAN_FASHION_MNIST at a "
           "directory with complete copies of the four .gz files.")
    for f in _FASHION_FILES:
        gz, out = debian / f"{f}.gz", raw / f
        if not out.exists():
            tmp = raw / f"{f}.tmp{os.getpid()}"
            try:
                with gzip.open(gz, "rb") as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                problem = _idx_problem(tmp)
                if problem:
                    raise DatasetUnreadableError(f"{gz} unpacks to a damaged idx file: "
                                                 f"{problem.replace(str(tmp), 'the unpacked file')}.\n{fix}")
                os.replace(tmp, out)
            except (EOFError, zlib.error, gzip.BadGzipFile) as err:  # a truncated or corrupt .gz
                raise DatasetUnreadableError(f"{gz} is truncated or damaged ({type(err).__name__}: {err}).\n"
                                             f"{fix}") from None
            finally:
                tmp.unlink(missing_ok=True)
        else:
            problem = _idx_problem(out)
            if problem:
                raise DatasetUnreadableError(f"dataset 'fashion_mnist': the unpacked cache file {problem}.\n"
                                             f"Fix: delete {out}; it is unpacked again from {gz}.")
    return cache


def _load_digits(root=None, download: bool | None = None) -> Dataset:
    """scikit-learn's 1,797 real 8x8 digits, scaled from 0..16 to 0..255; a fixed 80/20 train/test split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    order = np.random.default_rng(0).permutation(len(images))
    cut = int(round(0.8 * len(images)))
    tr, te = order[:cut], order[cut:]
    x, y = torch.from_numpy(images), torch.from_numpy(d.target.astype(np.int64))
    return Dataset("digits", Split(x[tr], y[tr]), Split(x[te], y[te]), 10, "sklearn.datasets.load_digits")


def make_synthetic(num_train: int = 2000, num_test: int = 500, shape=(1, 8, 8), num_classes: int = 10,
                   seed: int = 0) -> Dataset:
    """Seeded synthetic images: one random prototype per class plus per-sample noise, as uint8."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand((num_classes, *shape), generator=g) * 255

    def split(n):
        y = torch.randint(num_classes, (n,), generator=g)
        x = (protos[y] + 40 * torch.randn((n, *shape), generator=g)).clamp(0, 255).round().to(torch.uint8)
        return Split(x, y)

    return Dataset("synthetic", split(num_train), split(num_test), num_classes, f"synthetic(seed={seed})")


def _load_synthetic(root=None, download: bool | None = None) -> Dataset:
    return make_synthetic()


# Sizes images are resized to when an ImageFolder tree is decoded into one tensor.
IMAGE_FOLDER_SIZES = {"tiny_imagenet": 64, "mini_imagenet": 84, "imagenet": 32}


def _image_folder(name: str, dirname: str, fix: str) -> Callable[..., Dataset]:
    def load(root=None, download: bool | None = None, image_size: int | None = None) -> Dataset:
        size = image_size or IMAGE_FOLDER_SIZES[name]
        looked = []
        for r in _roots(root):
            for base in (r / dirname, r):
                looked.append(str(base / "train"))
                if (base / "train").is_dir():
                    return _decode_image_folder(name, base, size)
        raise _missing(dirname, looked, fix)

    return load


def _decode_image_folder(name: str, base: Path, size: int) -> Dataset:
    """Decode an ImageFolder tree (train/<class>/..., and val/ or test/ if present) into uint8 tensors.

    Decoding a large tree takes minutes, so the tensors are kept in ``~/.cache/clenv/decoded/`` keyed by the files
    (paths and modification times) and the size; a changed tree is decoded again."""
    import hashlib

    from torchvision.datasets import ImageFolder

    train_folder = ImageFolder(str(base / "train"))
    listing = "\n".join(f"{p}\t{c}\t{os.stat(p).st_mtime_ns}" for p, c in train_folder.samples)
    key = hashlib.sha1(f"{base.resolve()}\n{size}\n{listing}".encode()).hexdigest()[:16]
    cache = Path.home() / ".cache" / "clenv" / "decoded" / f"{name}-{size}-{key}.pt"
    if cache.exists():
        try:
            saved = torch.load(cache, weights_only=True)
            return Dataset(name, Split(saved["train_x"], saved["train_y"]), Split(saved["test_x"], saved["test_y"]),
                           int(saved["num_classes"]), f"ImageFolder({base}) via {cache}")
        except Exception:  # a damaged cache file is decoded again and replaced
            pass
    dataset = _decode_image_folder_uncached(name, base, size, train_folder)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp{os.getpid()}")
    torch.save({"train_x": dataset.train.images, "train_y": dataset.train.labels, "test_x": dataset.test.images,
                "test_y": dataset.test.labels, "num_classes": dataset.num_classes}, tmp)
    os.replace(tmp, cache)
    return dataset


def _decode_image_folder_uncached(name: str, base: Path, size: int, train_folder) -> Dataset:
    from torchvision.datasets import ImageFolder

    classes = train_folder.classes
    train = _decode_samples(train_folder.samples, size, f"{name} train")
    test_dir = next((base / d for d in ("val", "test") if (base / d).is_dir()), None)
    test = None
    if test_dir is not None:
        ann = test_dir / "val_annotations.txt"
        if ann.exists():  # Tiny-ImageNet's flat val/images/ layout with an annotation file
            index = {c: i for i, c in enumerate(classes)}
            samples = []
            for line in ann.read_text().splitlines():
                parts = line.split("\t")
                if len(parts) >= 2 and parts[1] in index:
                    samples.append((str(test_dir / "images" / parts[0]), index[parts[1]]))
            test = _decode_samples(samples, size, f"{name} val")
        else:
            folder = ImageFolder(str(test_dir))
            if folder.classes != classes:
                raise ValueError(f"{test_dir} has classes that differ from {base / 'train'}")
            test = _decode_samples(folder.samples, size, f"{name} {test_dir.name}")
    if test is None:  # no held-out folder: a fixed 80/20 split of train
        order = torch.from_numpy(np.random.default_rng(0).permutation(len(train)))
        cut = int(round(0.8 * len(train)))
        test = Split(train.images[order[cut:]], train.labels[order[cut:]])
        train = Split(train.images[order[:cut]], train.labels[order[:cut]])
    return Dataset(name, train, test, len(classes), f"ImageFolder({base})")


def _decode_one(item, size: int):
    from PIL import Image

    path, label = item
    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1).copy(), label


def _decode_samples(samples, size: int, desc: str) -> Split:
    """Decode with PIL (torchvision's ImageFolder loader), resized to size x size, on a thread pool (PIL releases
    the GIL while decoding), into one uint8 tensor."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    images = torch.empty((len(samples), 3, size, size), dtype=torch.uint8)
    labels = torch.empty(len(samples), dtype=torch.int64)
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        decoded = pool.map(lambda item: _decode_one(item, size), samples, chunksize=64)
        for i, (img, label) in enumerate(tqdm(decoded, total=len(samples), desc=f"decoding {desc}",
                                              disable=len(samples) < 5000)):
            images[i] = torch.from_numpy(img)
            labels[i] = label
    return Split(images, labels)


_APT = "apt-get install -y dataset-fashion-mnist"
DATASETS: dict[str, Callable[..., Dataset]] = {
    "mnist": _torchvision("MNIST", 10, "on a machine with internet the download runs by itself (download=None, the "
                          "default); offline, put torchvision's MNIST/raw files under CLENV_DATA"),
    "fashion_mnist": _load_fashion_mnist,
    "cifar10": _torchvision("CIFAR10", 10, "on a machine with internet the download runs by itself (download=None, "
                            "the default); offline, put cifar-10-batches-py/ under CLENV_DATA"),
    "cifar100": _torchvision("CIFAR100", 100, "on a machine with internet the download runs by itself "
                             "(download=None, the default); offline, put cifar-100-python/ under CLENV_DATA"),
    "tiny_imagenet": _image_folder("tiny_imagenet", "tiny-imagenet-200", "unpack tiny-imagenet-200.zip under "
                                   "CLENV_DATA (train/<wnid>/images/*.JPEG and val/)"),
    "mini_imagenet": _image_folder("mini_imagenet", "mini-imagenet", "put an ImageFolder tree mini-imagenet/train/"
                                   "<class>/*.jpg (and optionally val/ or test/) under CLENV_DATA"),
    "imagenet": _image_folder("imagenet", "imagenet", "put an ImageFolder tree imagenet/train/<wnid>/*.JPEG "
                              "(and val/) under CLENV_DATA"),
    "digits": _load_digits,
    "synthetic": _load_synthetic,
}

_cache: dict[tuple, Dataset] = {}
_lock = threading.Lock()


def load_dataset(name: str, root: str | os.PathLike | None = None, download: bool | None = None,
                 **kwargs) -> Dataset:
    """Load ``name`` (a key of :data:`DATASETS`) once per process and return the cached :class:`Dataset`.

    ``download``: None (default) fetches a torchvision dataset that is not found on disk into the first data root;
    True also lets torchvision refresh files it finds; False never touches the network."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
    key = (name, str(Path(root).expanduser()) if root is not None else str(default_data_root()),
           tuple(sorted(kwargs.items())))
    with _lock:
        if key not in _cache:
            _cache[key] = DATASETS[name](root=root, download=download, **kwargs)
        return _cache[key]


def clear_cache() -> None:
    """Forget every loaded dataset (tests that write data files use this)."""
    with _lock:
        _cache.clear()
