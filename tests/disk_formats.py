"""Writers for small datasets in the real on-disk formats that torchvision's loaders read.

The machines that run these tests have no internet, so MNIST, CIFAR-10/100 and ImageFolder trees are written here,
byte for byte in the formats the real downloads use (idx files, pickled CIFAR batches, class-per-folder images).
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np


def write_idx(path: Path, array: np.ndarray) -> None:
    """The idx format of MNIST: magic (0, 0, 0x08 = uint8, ndim), big-endian int32 dims, raw bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack(">BBBB", 0, 0, 0x08, array.ndim))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_mnist(root: Path, folder: str = "MNIST", n_train: int = 120, n_test: int = 40, seed: int = 0):
    """torchvision's MNIST layout: <root>/<folder>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte."""
    rng = np.random.default_rng(seed)
    raw = Path(root) / folder / "raw"
    data = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", x)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", y)
        data[prefix] = (x, y)
    return data


def write_debian_fashion_mnist(directory: Path, n_train: int = 30, n_test: int = 10, seed: int = 0):
    """Debian's ``dataset-fashion-mnist`` layout: the four idx files gzipped, side by side in one directory."""
    rng = np.random.default_rng(seed)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    data = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        for kind, array in (("images-idx3", x), ("labels-idx1", y)):
            plain = directory / f"{prefix}-{kind}-ubyte"
            write_idx(plain, array)
            with open(plain, "rb") as src, gzip.open(f"{plain}.gz", "wb") as dst:
                dst.write(src.read())
            plain.unlink()
        data[prefix] = (x, y)
    return data


def truncate(path: Path, keep: int) -> None:
    """Cut ``path`` to its first ``keep`` bytes, as an interrupted download or copy leaves it."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[:keep])


def write_cifar(root: Path, num_classes: int = 10, per_class_train: int = 6, per_class_test: int = 2, seed: int = 0):
    """The python-pickle CIFAR layout: cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta} or
    cifar-100-python/{train,test,meta}. Images are rows of 3072 bytes (R, G, B planes); keys are str, as Python 2 pickles load."""
    rng = np.random.default_rng(seed)
    if num_classes == 10:
        base = Path(root) / "cifar-10-batches-py"
        label_key, meta_name, meta_key = "labels", "batches.meta", "label_names"
    else:
        base = Path(root) / "cifar-100-python"
        label_key, meta_name, meta_key = "fine_labels", "meta", "fine_label_names"
    base.mkdir(parents=True, exist_ok=True)

    def batch(per_class):
        labels = np.repeat(np.arange(num_classes), per_class)
        x = rng.integers(0, 256, size=(labels.size, 3072), dtype=np.uint8)
        return {"data": x, label_key: labels.tolist()}

    written = {}
    if num_classes == 10:
        train = batch(per_class_train)
        chunks = np.array_split(np.arange(len(train[label_key])), 5)
        for i, idx in enumerate(chunks, 1):
            part = {"data": train["data"][idx], label_key: [train[label_key][j] for j in idx]}
            (base / f"data_batch_{i}").write_bytes(pickle.dumps(part))
        test = batch(per_class_test)
        (base / "test_batch").write_bytes(pickle.dumps(test))
    else:
        train, test = batch(per_class_train), batch(per_class_test)
        (base / "train").write_bytes(pickle.dumps(train))
        (base / "test").write_bytes(pickle.dumps(test))
    (base / meta_name).write_bytes(pickle.dumps({meta_key: [f"class{i}" for i in range(num_classes)]}))
    written["train"], written["test"] = train, test
    return written


def write_image_folder(root: Path, num_classes: int, per_class: int, size: int, *, tiny_val: bool = False,
                       split_dirs=("train", "val"), seed: int = 0) -> None:
    """A class-per-folder tree of PNG images; ``tiny_val`` writes Tiny-ImageNet's flat val/images + annotations."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root = Path(root)
    for split in split_dirs:
        lines = []
        for c in range(num_classes):
            wnid = f"n{c:08d}"
            for i in range(per_class):
                img = Image.fromarray(rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8))
                if split == "val" and tiny_val:
                    name = f"val_{c}_{i}.png"
                    path = root / "val" / "images" / name
                    lines.append(f"{name}\t{wnid}\t0\t0\t{size}\t{size}")
                else:
                    sub = "images" if tiny_val else ""
                    path = root / split / wnid / sub / f"{wnid}_{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                img.save(path)
        if split == "val" and tiny_val:
            (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
