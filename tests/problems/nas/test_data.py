"""The data pipeline reads the real CIFAR format through torchvision's loaders."""

from __future__ import annotations

import pytest
import torch

from problems.nas.data import Cutout, NasDataError, load_images, loader, search_split


def test_cifar10_fixture_loads_through_torchvision(cifar10_dir):
    data = load_images("cifar10", cifar10_dir, download=False)
    assert type(data.train).__name__ == "CIFAR10"
    assert len(data.train) == 80 and len(data.test) == 16 and data.num_classes == 10
    image, label = data.train[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert 0 <= label < 10


def test_cifar100_fixture_loads_through_torchvision(cifar100_dir):
    data = load_images("cifar100", cifar100_dir, download=False)
    assert type(data.train).__name__ == "CIFAR100"
    assert data.num_classes == 100 and len(data.train) == 64


def test_search_split_is_a_disjoint_half(cifar10_dir):
    data = load_images("cifar10", cifar10_dir, download=False)
    a, b = search_split(data.train, 0.5, seed=0)
    assert len(a) == len(b) == 40
    assert not set(a.indices) & set(b.indices)
    assert search_split(data.train, 0.5, seed=0)[0].indices == a.indices


def test_loader_batches(cifar10_dir):
    data = load_images("cifar10", cifar10_dir, download=False)
    x, y = next(iter(loader(data.train, 8, shuffle=True, seed=0)))
    assert x.shape == (8, 3, 32, 32) and y.shape == (8,)


def test_missing_data_without_download_names_data_dir(tmp_path):
    with pytest.raises(NasDataError, match="--data-dir"):
        load_images("cifar10", tmp_path / "nothing", download=False)


def test_corrupt_cifar_file_is_reported(cifar10_dir):
    (cifar10_dir / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(NasDataError, match=r"cannot be read.*data-dir"):
        load_images("cifar10", cifar10_dir, download=False)


def test_corrupt_cifar_file_fails_the_real_checksum(tmp_path):
    from tests.cifar_fixture import write_cifar10

    root = write_cifar10(tmp_path / "data")  # checksums are not patched here
    with pytest.raises(NasDataError, match="missing or corrupt"):
        load_images("cifar10", root, download=False)


def test_imagefolder(tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (40, 30), (i * 50, 0, 0)).save(folder / f"{i}.png")
    data = load_images("imagefolder", tmp_path, image_size=32)
    assert data.num_classes == 2 and len(data.train) == 6 and len(data.test) == 6
    assert data.train[0][0].shape == (3, 32, 32)


def test_imagefolder_without_images_is_refused(tmp_path):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    with pytest.raises(NasDataError, match="no images"):
        load_images("imagefolder", tmp_path)
    with pytest.raises(NasDataError, match="train does not exist"):
        load_images("imagefolder", tmp_path / "elsewhere")


def test_synthetic_data_is_class_structured_and_says_so(caplog):
    data = load_images("synthetic", "unused", synthetic_size=64, num_classes=4)
    assert "SYNTHETIC DATA" in caplog.text
    x, y = data.train[0]
    assert x.shape == (3, 32, 32) and 0 <= y < 4
    assert torch.equal(data.train[5][0], data.train[5][0])  # deterministic


def test_cutout_zeroes_a_square():
    img = torch.ones(3, 32, 32)
    out = Cutout(16)(img)
    zeros = int((out[0] == 0).sum())
    assert 0 < zeros <= 256 and torch.equal(img, torch.ones(3, 32, 32))


def test_batch_smaller_than_dataset_is_required(cifar10_dir):
    data = load_images("cifar10", cifar10_dir, download=False)
    with pytest.raises(NasDataError, match="lower --batch-size"):
        loader(data.test, 64, shuffle=False, seed=0)


def test_digits_are_real_one_channel_images_with_a_fixed_split():
    from problems.nas.data import load_images

    first = load_images("digits", "unused")
    again = load_images("digits", "unused", image_size=16)
    assert first.channels == 1 and first.num_classes == 10
    assert (len(first.train), len(first.test)) == (1438, 359)
    assert first.test[0][0].shape == (1, 16, 16)
    assert torch.equal(first.test.images, again.test.images)  # the split is fixed
    assert torch.equal(first.test.labels, again.test.labels)
    assert len(set(first.test.labels.tolist())) == 10
    assert load_images("digits", "unused", image_size=24).train[0][0].shape == (1, 24, 24)


def test_cifar_refuses_another_image_size():
    import pytest
    from pydantic import ValidationError

    from problems.nas.config import EvalRun, SearchRun

    with pytest.raises(ValidationError, match="cifar10 images are 32"):
        SearchRun(dataset="cifar10", image_size=9)
    assert EvalRun(dataset="digits", image_size=12).image_size == 12


@pytest.fixture
def no_debian_fashion_mnist(monkeypatch, tmp_path):
    """The machine's own Debian files (if installed) stay out of these tests."""
    import problems.nas.data as data

    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian-package")
    return data


def test_fashion_mnist_idx_files_load_through_torchvision(tmp_path, no_debian_fashion_mnist):
    from tests.idx_fixture import write_fashion_mnist

    write_fashion_mnist(tmp_path / "data" / "FashionMNIST" / "raw", train=64, test=16)
    data = load_images("fashion-mnist", tmp_path / "data", download=False, cutout=4)
    assert type(data.train).__name__ == "FashionMNIST"
    assert (len(data.train), len(data.test), data.num_classes, data.channels) == (64, 16, 10, 1)
    image, label = data.train[0]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32 and 0 <= label < 10
    # the test images are the file's, normalised with Fashion-MNIST's statistics
    raw = data.test.data[3].float() / 255
    assert torch.allclose(data.test[3][0][0], (raw - 0.2860) / 0.3530, atol=1e-6)
    assert int(data.test[3][1]) == int(data.test.targets[3])
    small = load_images("fashion-mnist", tmp_path / "data", download=False, image_size=14)
    assert small.train[0][0].shape == (1, 14, 14)


def test_fashion_mnist_is_unpacked_from_the_debian_package(tmp_path, no_debian_fashion_mnist):
    from tests.idx_fixture import write_fashion_mnist

    debian = write_fashion_mnist(tmp_path / "debian", train=32, test=8, gzipped=True)
    no_debian_fashion_mnist.DEBIAN_FASHION_MNIST = debian
    data = load_images("fashion-mnist", tmp_path / "data", download=False)
    assert len(data.train) == 32 and len(data.test) == 8
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    names = ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "train-images-idx3-ubyte"]
    assert sorted(p.name for p in raw.iterdir()) == [*names, "train-labels-idx1-ubyte"]


def test_fashion_mnist_offline_without_files_names_the_package_and_data_dir(
    tmp_path, no_debian_fashion_mnist, monkeypatch
):
    import torchvision.datasets

    def offline(self):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "download", offline)
    for download in (False, True):
        with pytest.raises(NasDataError) as caught:
            load_images("fashion-mnist", tmp_path / "none", download=download)
        message = str(caught.value)
        assert "\n" not in message
        assert "apt-get install dataset-fashion-mnist" in message and "--data-dir" in message
        assert not (tmp_path / "none").exists()  # nothing left behind


def test_fashion_mnist_search_split_keeps_the_test_set_apart(tmp_path, no_debian_fashion_mnist):
    from tests.idx_fixture import write_fashion_mnist

    write_fashion_mnist(tmp_path / "data" / "FashionMNIST" / "raw", train=40, test=10)
    data = load_images("fashion-mnist", tmp_path / "data", download=False)
    a, b = search_split(data.train, 0.5, seed=0)
    assert len(a) == len(b) == 20 and not set(a.indices) & set(b.indices)
    assert a.dataset is data.train and data.test is not data.train


def test_a_decompression_bomb_is_a_data_error_naming_the_file(tmp_path):
    """A small PNG that decodes to 225 megapixels (PIL refuses above twice its limit)."""
    from PIL import Image

    from problems.nas.data import read_image

    bomb = tmp_path / "bomb.png"
    Image.new("1", (15000, 15000)).save(bomb)
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(NasDataError, match=r"bomb\.png is too large to decode safely") as info:
        read_image(str(bomb))
    assert "\n" not in str(info.value)
