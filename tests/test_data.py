"""Dataset sources through the real loaders and on-disk formats."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from clenv.data import DatasetNotFoundError, DatasetUnreadableError, clear_cache, load_dataset
from clenv.data.sources import DEBIAN_FASHION_MNIST
from tests.disk_formats import truncate, write_cifar, write_debian_fashion_mnist, write_image_folder, write_mnist

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


# ---------------------------------------------------------------------------------------------------- explicit data
# roots fail loudly; Debian's copy is only a fall-back for the default roots

@pytest.fixture
def fake_debian(tmp_path, monkeypatch):
    """A small Debian-format Fashion-MNIST (and a private HOME for its unpacked cache): what the fall-back would
    silently load if an explicit root were not honoured."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CLENV_DEBIAN_FASHION_MNIST", str(tmp_path / "debian"))
    monkeypatch.setenv("CLENV_DATA", str(tmp_path / "default-root"))
    return write_debian_fashion_mnist(tmp_path / "debian", n_train=30, n_test=10)


def test_default_root_still_falls_back_to_debian(fake_debian):
    d = load_dataset("fashion_mnist", download=False)
    assert "Debian" in d.source and len(d.train) == 30
    np.testing.assert_array_equal(d.train.images[:, 0].numpy(), fake_debian["train"][0])


@pytest.mark.parametrize("make_root", ["empty", "missing"])
def test_explicit_root_without_data_is_an_error_not_debians_copy(fake_debian, tmp_path, make_root):
    root = tmp_path / "mine"
    if make_root == "empty":
        root.mkdir()
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("fashion_mnist", root=root, download=False)
    msg = str(err.value)
    assert str(root) in msg and "Fix: put torchvision's FashionMNIST/raw/ idx files under" in msg
    assert str(tmp_path / "debian") not in msg  # Debian's copy was not even looked at


def test_explicit_root_that_is_a_file_names_the_file(fake_debian, tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(b"not a directory")
    for name in ("fashion_mnist", "mnist"):
        with pytest.raises(DatasetNotFoundError, match=rf"(?s){path}: a file, not a directory.*must be a directory"):
            load_dataset(name, root=path)


@pytest.mark.parametrize("name, folder", [("fashion_mnist", "FashionMNIST"), ("mnist", "MNIST")])
@pytest.mark.parametrize("file, keep", [("train-images-idx3-ubyte", 500), ("t10k-labels-idx1-ubyte", 12),
                                        ("train-labels-idx1-ubyte", 3)])
def test_truncated_idx_file_is_an_error_naming_it(fake_debian, tmp_path, name, folder, file, keep):
    root = tmp_path / "mine"
    write_mnist(root, folder=folder, n_train=20, n_test=10)
    truncate(root / folder / "raw" / file, keep)
    for download in (False, None):
        with pytest.raises(DatasetUnreadableError, match=rf"(?s){root / folder / 'raw' / file} is "
                                                          rf"(truncated|not an idx file).*Fix: delete"):
            load_dataset(name, root=root, download=download)


def test_explicit_root_downloads_there_and_never_falls_back(fake_debian, tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    calls = []

    def offline(self):
        calls.append(self.root)
        raise OSError("<urlopen error offline>")

    monkeypatch.setattr(tvd.FashionMNIST, "download", offline)
    root = tmp_path / "mine"
    with pytest.raises(DatasetNotFoundError, match="download attempted.*offline"):
        load_dataset("fashion_mnist", root=root)
    assert calls == [str(root)]
    # With the files in the explicit root, they are what is loaded.
    written = write_mnist(root, folder="FashionMNIST", n_train=20, n_test=10)
    clear_cache()
    d = load_dataset("fashion_mnist", root=root)
    assert str(root) in d.source and len(d.train) == 20
    np.testing.assert_array_equal(d.train.images[:, 0].numpy(), written["train"][0])


def test_truncated_debian_gz_is_an_error_and_leaves_no_temporary_file(fake_debian, tmp_path):
    gz = tmp_path / "debian" / "train-images-idx3-ubyte.gz"
    good = gz.read_bytes()
    truncate(gz, len(good) // 2)
    with pytest.raises(DatasetUnreadableError, match=rf"(?s){gz} is truncated or damaged.*--reinstall"):
        load_dataset("fashion_mnist", download=False)
    raw = tmp_path / "home" / ".cache" / "clenv" / "debian-fashion-mnist" / "FashionMNIST" / "raw"
    assert not any(".tmp" in p.name for p in raw.iterdir())
    assert not (raw / "train-images-idx3-ubyte").exists()
    gz.write_bytes(good)  # a reinstalled package: the next load unpacks it
    d = load_dataset("fashion_mnist", download=False)
    np.testing.assert_array_equal(d.train.images[:, 0].numpy(), fake_debian["train"][0])
