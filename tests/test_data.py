"""Dataset sources through the real loaders and on-disk formats."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from clenv.data import DatasetNotFoundError, clear_cache, load_dataset
from clenv.data.sources import DEBIAN_FASHION_MNIST
from tests.disk_formats import write_cifar, write_image_folder, write_mnist

HAVE_DEBIAN_FMNIST = (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").exists()


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


def test_digits_are_real_8x8_uint8_with_a_fixed_split():
    d = load_dataset("digits")
    assert d.train.images.shape[1:] == (1, 8, 8) and d.train.images.dtype == torch.uint8
    assert len(d.train) + len(d.test) == 1797
    assert set(d.train.labels.tolist()) == set(range(10))
    assert int(d.train.images.max()) == 255  # 16 scaled to 255
    again = load_dataset("digits")
    assert again is d  # loaded once per process
    clear_cache()
    fresh = load_dataset("digits")
    assert torch.equal(fresh.train.images, d.train.images)


@pytest.mark.skipif(not HAVE_DEBIAN_FMNIST and not os.environ.get("CI"),
                    reason="apt-get install -y dataset-fashion-mnist (CI installs it)")
def test_fashion_mnist_from_debian_package(tmp_path, monkeypatch):
    monkeypatch.setenv("CLENV_DATA", str(tmp_path / "empty"))  # nothing there: falls back to Debian's files
    d = load_dataset("fashion_mnist")
    assert d.train.images.shape == (60000, 1, 28, 28) and d.test.images.shape == (10000, 1, 28, 28)
    assert "Debian" in d.source
    assert torch.bincount(d.train.labels).tolist() == [6000] * 10


def test_mnist_reads_torchvision_idx_files(tmp_path):
    written = write_mnist(tmp_path, n_train=50, n_test=20)
    d = load_dataset("mnist", root=tmp_path)
    assert d.train.images.shape == (50, 1, 28, 28)
    np.testing.assert_array_equal(d.train.images[:, 0].numpy(), written["train"][0])
    np.testing.assert_array_equal(d.test.labels.numpy(), written["t10k"][1])


def test_root_from_clenv_data_env_var(tmp_path, monkeypatch):
    write_mnist(tmp_path, n_train=30, n_test=10)
    monkeypatch.setenv("CLENV_DATA", str(tmp_path))
    assert len(load_dataset("mnist").train) == 30


@pytest.fixture
def cifar_md5_free(monkeypatch):
    # torchvision checks the official files' MD5 sums; the small files written here cannot match them.
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda *a, **k: True)


@pytest.mark.parametrize("num_classes", [10, 100])
def test_cifar_reads_pickled_batches(tmp_path, cifar_md5_free, num_classes):
    written = write_cifar(tmp_path, num_classes=num_classes, per_class_train=3, per_class_test=1)
    d = load_dataset(f"cifar{num_classes}", root=tmp_path)
    assert d.num_classes == num_classes
    assert d.train.images.shape == (3 * num_classes, 3, 32, 32)
    # row layout is R, G, B planes of 32x32
    first = np.asarray(written["train"]["data"])[0].reshape(3, 32, 32)
    if num_classes == 100:
        np.testing.assert_array_equal(d.train.images[0].numpy(), first)
    assert sorted(set(d.test.labels.tolist())) == list(range(num_classes))


def test_tiny_imagenet_image_folder_with_val_annotations(tmp_path):
    write_image_folder(tmp_path / "tiny-imagenet-200", num_classes=3, per_class=4, size=64, tiny_val=True)
    d = load_dataset("tiny_imagenet", root=tmp_path)
    assert d.train.images.shape == (12, 3, 64, 64) and d.test.images.shape == (12, 3, 64, 64)
    assert d.num_classes == 3
    assert torch.bincount(d.test.labels).tolist() == [4, 4, 4]


def test_decoded_image_folder_is_cached_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    write_image_folder(tmp_path / "imagenet", num_classes=2, per_class=3, size=32)
    first = load_dataset("imagenet", root=tmp_path)
    clear_cache()
    second = load_dataset("imagenet", root=tmp_path)
    assert " via " not in first.source and " via " in second.source
    assert torch.equal(first.train.images, second.train.images) and torch.equal(first.test.labels, second.test.labels)
    write_image_folder(tmp_path / "imagenet", num_classes=3, per_class=3, size=32, seed=1)  # the tree changed
    clear_cache()
    third = load_dataset("imagenet", root=tmp_path)
    assert third.num_classes == 3 and " via " not in third.source


def test_image_folder_without_val_is_split_and_resized(tmp_path):
    write_image_folder(tmp_path / "mini-imagenet", num_classes=2, per_class=10, size=40, split_dirs=("train",))
    d = load_dataset("mini_imagenet", root=tmp_path)
    assert d.image_shape == (3, 84, 84)
    assert len(d.train) == 16 and len(d.test) == 4


def test_missing_dataset_names_every_place_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("CLENV_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("cifar10", download=False)
    msg = str(err.value)
    assert str(tmp_path / "nowhere") in msg and "CLENV_DATA" in msg and "download attempted" not in msg
    # by default a dataset that is not on disk is downloaded; a failed download is named in the error
    import torchvision.datasets as tvd

    calls = []

    def offline(self):
        calls.append(self.root)
        raise OSError("<urlopen error offline>")

    monkeypatch.setattr(tvd.MNIST, "download", offline)
    with pytest.raises(DatasetNotFoundError, match="download attempted.*offline"):
        load_dataset("mnist")
    assert calls == [str(tmp_path / "nowhere")]  # into the first data root, once
    with pytest.raises(DatasetNotFoundError):
        load_dataset("mnist", download=False)
    assert len(calls) == 1
    with pytest.raises(DatasetNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        monkeypatch.setenv("CLENV_DEBIAN_FASHION_MNIST", str(tmp_path / "no-debian"))
        load_dataset("fashion_mnist")
    with pytest.raises(DatasetNotFoundError, match="tiny-imagenet-200"):
        load_dataset("tiny_imagenet", root=Path(tmp_path / "x"))


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(ValueError, match="fashion_mnist"):
        load_dataset("fashion-mnist")
