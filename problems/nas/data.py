"""Image data for architecture search and evaluation.

- ``cifar10`` / ``cifar100``: ``torchvision.datasets.CIFAR10/100`` with the DARTS
  transforms, downloaded into ``data_dir`` when allowed and possible;
- ``imagefolder``: a user's own images, ``data_dir/train/<class>/*`` and optionally
  ``data_dir/test/<class>/*`` (or ``val/``), through ``torchvision.datasets.ImageFolder``;
- ``fashion-mnist``: ``torchvision.datasets.FashionMNIST`` (70,000 real 28×28 grey
  images of clothing, 10 classes: 60,000 for training, 10,000 for testing), read from
  ``data_dir/FashionMNIST/raw/``; offline, the four original IDX files of Debian's
  ``dataset-fashion-mnist`` package are unpacked there when present, else downloaded;
- ``digits``: scikit-learn's 1,797 real handwritten digits (8×8, one channel, 10
  classes), shipped inside the package: real images that need no download. A fixed
  split (seed 0) keeps 1,438 for training and 359 for testing; images are resized to
  ``image_size`` (16 by default);
- ``synthetic``: class-structured random images for offline smoke runs — not a benchmark.

Search uses the training set only, split 50/50 into search-train and search-validation
(as in DARTS); the test set is for evaluating a derived architecture.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch.utils.data import DataLoader, Dataset, Subset

import mlo
from mlo.durable.sampling import resumable_loader

from ..threads import one_thread_per_worker

logger = logging.getLogger("problems.nas")

DatasetName = Literal["cifar10", "cifar100", "imagefolder", "fashion-mnist", "digits", "synthetic"]
DEFAULT_IMAGE_SIZE = {"digits": 16, "fashion-mnist": 28}
"""Image side per dataset when ``image_size`` is not given (32 for the others)."""

STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
}

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` package puts the four original IDX files."""


OFFLINE_HINT = (
    " Without a download: --dataset digits runs on real handwritten digits shipped with "
    "scikit-learn; --dataset synthetic is a smoke run whose accuracies mean nothing."
)


class NasDataError(mlo.DataError, RuntimeError):
    """The requested data cannot be loaded; the message says what to do."""


class Cutout:
    """Zero one random ``length``×``length`` square of a (C, H, W) tensor image."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        h, w = img.shape[-2:]
        y = int(torch.randint(h, (1,)))
        x = int(torch.randint(w, (1,)))
        y0, y1 = max(0, y - self.length // 2), min(h, y + self.length // 2)
        x0, x1 = max(0, x - self.length // 2), min(w, x + self.length // 2)
        img = img.clone()
        img[..., y0:y1, x0:x1] = 0.0
        return img


def torchvision_part(name: str):
    """``torchvision.<name>`` (``datasets`` or ``transforms``); a torchvision that cannot
    be imported, as when it was built for another torch (``operator torchvision::nms does
    not exist``), is a ``NasDataError`` in one line that names both versions."""
    import importlib
    from importlib import metadata

    try:
        return importlib.import_module(f"torchvision.{name}")
    except (ImportError, RuntimeError, OSError) as exc:
        try:
            version = metadata.version("torchvision")
        except metadata.PackageNotFoundError:
            raise NasDataError(
                f"torchvision is not installed; install the release made for torch "
                f"{torch.__version__} (pip install torchvision)"
            ) from None
        raise NasDataError(
            f"torchvision {version} does not work with torch {torch.__version__} "
            f"({type(exc).__name__}: {_first_line(exc)}): they are not a matching pair. "
            "Install both together, e.g. pip install torch==2.14.1 torchvision==0.29.1 "
            "(on a CPU-only machine add --index-url https://download.pytorch.org/whl/cpu)"
        ) from None


def transforms_for(dataset: str, train: bool, cutout: int = 0, image_size: int = 32):
    T = torchvision_part("transforms")

    mean, std = STATS.get(dataset, STATS["imagefolder"])
    steps = []
    if dataset == "imagefolder" or (dataset == "fashion-mnist" and image_size != 28):
        steps.append(T.Resize((image_size, image_size)))
    if train:
        # 4 pixels of padding at 32 (DARTS), in proportion at other sides.
        pad = 4 if dataset != "fashion-mnist" else max(1, round(image_size / 7))
        steps += [T.RandomCrop(image_size, padding=pad), T.RandomHorizontalFlip()]
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    if train and cutout > 0:
        steps.append(Cutout(cutout))
    return T.Compose(steps)


class SyntheticImages(Dataset):
    """Each class is a fixed smooth random pattern; an example is its pattern plus noise,
    randomly shifted. Learnable, but says nothing about real accuracy."""

    def __init__(
        self, size: int, num_classes: int = 10, image_size: int = 32, seed: int = 0
    ) -> None:
        gen = torch.Generator().manual_seed(seed)
        coarse = torch.randn(num_classes, 3, 4, 4, generator=gen)
        self.templates = torch.nn.functional.interpolate(
            coarse, size=(image_size, image_size), mode="bilinear", align_corners=False
        )
        self.labels = torch.randint(num_classes, (size,), generator=gen)
        self.noise_seed = seed + 1
        self.classes = [f"class_{i}" for i in range(num_classes)]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        gen = torch.Generator().manual_seed(self.noise_seed * 1_000_003 + index)
        label = int(self.labels[index])
        shift = torch.randint(-3, 4, (2,), generator=gen)
        img = torch.roll(self.templates[label], shifts=(int(shift[0]), int(shift[1])), dims=(1, 2))
        return img + 0.8 * torch.randn(img.shape, generator=gen), label


class DigitsImages(Dataset):
    """scikit-learn's handwritten digits as ``(1, size, size)`` normalised tensors.

    ``augment`` adds DARTS' crop augmentation (a random crop after padding by
    ``size // 8``; digits are not flipped) and, with ``cutout`` > 0, cutout.
    """

    TEST_FRACTION = 0.2
    SPLIT_SEED = 0

    def __init__(self, train: bool, image_size: int = 16, augment: bool = False, cutout: int = 0):
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise NasDataError(
                "--dataset digits needs scikit-learn: pip install scikit-learn (or "
                "pip install -e '.[examples]')"
            ) from None
        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        labels = torch.tensor(digits.target, dtype=torch.long)
        order = torch.randperm(
            len(labels), generator=torch.Generator().manual_seed(self.SPLIT_SEED)
        )
        n_test = round(self.TEST_FRACTION * len(labels))
        train_idx, test_idx = order[n_test:], order[:n_test]
        mean, std = images[train_idx].mean(), images[train_idx].std()
        picked = images[train_idx if train else test_idx]
        resized = torch.nn.functional.interpolate(
            picked, size=(image_size, image_size), mode="bilinear", align_corners=False
        )
        self.images = (resized - mean) / std
        self.labels = labels[train_idx if train else test_idx]
        self.mean, self.std = float(mean), float(std)
        self.classes = [str(i) for i in range(10)]
        self.pad = max(1, image_size // 8) if augment else 0
        self.cutout = Cutout(cutout) if augment and cutout > 0 else None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        img = self.images[index]
        if self.pad:
            # Padded with the normalised value of a blank pixel, then cropped back.
            blank = -self.mean / self.std
            side = img.shape[-1]
            padded = torch.nn.functional.pad(img, (self.pad,) * 4, value=blank)
            y, x = (int(v) for v in torch.randint(2 * self.pad + 1, (2,)))
            img = padded[:, y : y + side, x : x + side]
        if self.cutout is not None:
            img = self.cutout(img)
        return img, int(self.labels[index])


@dataclass
class ImageData:
    train: Dataset  # with training augmentation
    test: Dataset
    num_classes: int
    name: str
    channels: int = 3
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    """Per-channel standard deviation the inputs were divided by (pixel units → input)."""


def _cifar(name: str, root: Path, download: bool, cutout: int) -> ImageData:
    datasets = torchvision_part("datasets")

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    folder = root / cls.base_folder
    train_tf, test_tf = transforms_for(name, True, cutout), transforms_for(name, False)

    def build(dl: bool):
        return (
            cls(str(root), train=True, transform=train_tf, download=dl),
            cls(str(root), train=False, transform=test_tf, download=dl),
        )

    created = [p for p in (root, folder) if not p.exists()]
    try:
        train, test = build(False)
    except RuntimeError:
        _remove_if_empty(created)
        if folder.exists():
            raise NasDataError(
                f"{name}: {folder} exists but its files are missing or corrupt (checksum "
                f"mismatch). Delete {folder} and download again, or pass --data-dir pointing "
                "to an intact copy."
            ) from None
        if not download:
            raise NasDataError(
                f"{name} was not found in {root} and downloading is off. Pass --data-dir "
                f"pointing to a folder that contains {cls.base_folder}/, or allow the download."
                + OFFLINE_HINT
            ) from None
        try:
            train, test = build(True)
        except Exception as exc:  # network errors come in many types
            _remove_if_empty(created)
            raise NasDataError(
                f"{name} was not found in {root} and could not be downloaded "
                f"({type(exc).__name__}: {exc}). Pass --data-dir pointing to a folder that "
                f"contains {cls.base_folder}/ (the python version of the dataset from "
                f"{cls.url}), or run where the download is allowed." + OFFLINE_HINT
            ) from None
    except Exception as exc:
        # pickle errors, truncated arrays: a file is there but unreadable
        raise NasDataError(
            f"{name}: the files in {folder} cannot be read ({type(exc).__name__}: {exc}). "
            f"Delete {folder} and download again, or pass --data-dir to an intact copy."
        ) from None
    return ImageData(train, test, len(train.classes), name, std=STATS[name][1])


def _fashion_mnist(root: Path, download: bool, cutout: int, image_size: int) -> ImageData:
    """Fashion-MNIST through torchvision's loader, from ``root/FashionMNIST/raw/``, which
    is filled from Debian's package when it is installed, else downloaded if allowed."""
    datasets = torchvision_part("datasets")

    cls = datasets.FashionMNIST
    raw = root / cls.__name__ / "raw"
    unpacked = _unpack_debian_fashion_mnist(raw, [name for name, _ in cls.resources])
    train_tf = transforms_for("fashion-mnist", True, cutout, image_size)
    test_tf = transforms_for("fashion-mnist", False, 0, image_size)

    def build(dl: bool):
        return (
            cls(str(root), train=True, transform=train_tf, download=dl),
            cls(str(root), train=False, transform=test_tf, download=dl),
        )

    where = (
        f"Install Debian's dataset-fashion-mnist package (apt-get install "
        f"dataset-fashion-mnist, files in {DEBIAN_FASHION_MNIST}), or pass --data-dir to a "
        f"folder holding {cls.__name__}/raw/ with the four IDX files"
    )
    created = [p for p in (root, raw.parent, raw) if not p.exists()]
    try:
        train, test = build(False)
    except RuntimeError:
        if not download:
            _remove_if_empty(created)
            raise NasDataError(
                f"fashion-mnist was not found in {raw} and downloading is off. {where}."
            ) from None
        try:
            train, test = build(True)
        except Exception as exc:  # network errors come in many types
            _remove_if_empty(created)
            raise NasDataError(
                f"fashion-mnist was not found in {raw} and could not be downloaded "
                f"({type(exc).__name__}: {_first_line(exc)}). {where}."
            ) from None
    except Exception as exc:  # a file is there but is not a readable IDX file
        raise NasDataError(
            f"fashion-mnist: the files in {raw} cannot be read ({type(exc).__name__}: "
            f"{_first_line(exc)}). Delete {raw} and unpack or download them again. {where}."
        ) from None
    if unpacked:
        logger.info(
            "fashion-mnist: unpacked Debian's files from %s into %s", DEBIAN_FASHION_MNIST, raw
        )
    return ImageData(
        train, test, len(train.classes), "fashion-mnist", channels=1, std=STATS["fashion-mnist"][1]
    )


def _unpack_debian_fashion_mnist(raw: Path, archives: list[str]) -> bool:
    """Unpack Debian's ``*-ubyte.gz`` files into ``raw`` (as torchvision's own download
    leaves them) when ``raw`` lacks them and the package is installed; whether it did."""
    import gzip
    import os
    import shutil

    wanted = [(DEBIAN_FASHION_MNIST / name, raw / name.removesuffix(".gz")) for name in archives]
    if all(target.exists() for _, target in wanted) or not all(src.is_file() for src, _ in wanted):
        return False
    raw.mkdir(parents=True, exist_ok=True)
    for source, target in wanted:
        if target.exists():
            continue
        partial = target.with_name(target.name + ".partial")
        with gzip.open(source, "rb") as f, open(partial, "wb") as out:
            shutil.copyfileobj(f, out)
        os.replace(partial, target)  # a stopped unpack never leaves a truncated file
    return True


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _remove_if_empty(folders: list[Path]) -> None:
    """Remove the folders a failed load created, innermost first, if they are empty."""
    for folder in reversed(folders):
        with contextlib.suppress(OSError):
            folder.rmdir()


def read_imagefolder(root: Path, cutout: int, image_size: int, transforms=None) -> ImageData:
    """``root/train/<class>/*`` and ``root/test`` or ``root/val``, checked; ``transforms``
    (train, test) replaces the default CIFAR-style ones (ImageNet's, in imagenet.py)."""
    datasets = torchvision_part("datasets")

    if transforms is None:
        transforms = (
            transforms_for("imagefolder", True, cutout, image_size),
            transforms_for("imagefolder", False, 0, image_size),
        )

    train_dir = root / "train"
    test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    if not train_dir.is_dir():
        raise NasDataError(
            f"imagefolder: {train_dir} does not exist. Arrange your images as "
            "DATA_DIR/train/<class>/<image> (and optionally DATA_DIR/test/<class>/<image>) "
            "and pass --data-dir DATA_DIR."
        )
    try:
        train = datasets.ImageFolder(str(train_dir), transform=transforms[0], loader=read_image)
        if test_dir is not None:
            test = datasets.ImageFolder(str(test_dir), transform=transforms[1], loader=read_image)
        else:
            logger.warning("imagefolder: no test/ or val/ folder; there is no test set")
            test = Subset(train, [])
    except (FileNotFoundError, RuntimeError) as exc:
        raise NasDataError(f"imagefolder: no images found under {root} ({exc})") from None
    if len(train) == 0:
        raise NasDataError(f"imagefolder: {train_dir} holds no images")
    if len(train.classes) < 2:
        raise NasDataError(
            f"imagefolder: {train_dir} has {len(train.classes)} class folder(s) "
            f"({', '.join(train.classes)}); classification needs at least 2, as "
            "DATA_DIR/train/<class>/<image>"
        )
    if test_dir is not None and test.classes != train.classes:
        only_test = sorted(set(test.classes) - set(train.classes))
        only_train = sorted(set(train.classes) - set(test.classes))
        raise NasDataError(
            f"imagefolder: {test_dir} and {train_dir} have different class folders "
            f"(only in {test_dir.name}/: {', '.join(only_test) or 'none'}; only in train/: "
            f"{', '.join(only_train) or 'none'}), so their labels would not mean the same "
            "classes; give both the same class folders"
        )
    return ImageData(train, test, len(train.classes), "imagefolder", std=STATS["imagefolder"][1])


def read_image(path: str):
    """An RGB image from ``path``; a file that is not a readable image is a
    ``NasDataError`` naming it (at the first batch that contains it)."""
    from PIL import Image

    try:
        with open(path, "rb") as f, Image.open(f) as image:
            return image.convert("RGB")
    except Image.DecompressionBombError as exc:  # a small file that decodes to gigabytes
        raise NasDataError(
            f"imagefolder: {path} is too large to decode safely ({_first_line(exc)}); "
            "remove the file or scale it down"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's errors for corrupt files
        raise NasDataError(
            f"imagefolder: {path} is not a readable image ({type(exc).__name__}: {exc}); "
            "remove or replace the file"
        ) from None


def load_images(
    name: DatasetName,
    data_dir: str | Path,
    *,
    download: bool = True,
    cutout: int = 0,
    image_size: int | None = None,
    synthetic_size: int = 2048,
    num_classes: int = 10,
    seed: int = 0,
) -> ImageData:
    """Training (with augmentation) and test sets for ``name``."""
    root = Path(data_dir).expanduser()
    image_size = image_size or DEFAULT_IMAGE_SIZE.get(name, 32)
    if name == "digits":
        train = DigitsImages(True, image_size, augment=True, cutout=cutout)
        test = DigitsImages(False, image_size)
        return ImageData(train, test, 10, "digits", channels=1, std=(train.std,))
    if name in ("cifar10", "cifar100"):
        return _cifar(name, root, download, cutout)
    if name == "fashion-mnist":
        return _fashion_mnist(root, download, cutout, image_size)
    if name == "imagefolder":
        return read_imagefolder(root, cutout, image_size)
    if name == "synthetic":
        logger.warning(
            "SYNTHETIC DATA: random class-structured images, for offline smoke runs only; "
            "accuracies on it say nothing about real architectures"
        )
        return ImageData(
            SyntheticImages(synthetic_size, num_classes, image_size, seed),
            SyntheticImages(synthetic_size // 4, num_classes, image_size, seed + 7),
            num_classes,
            "synthetic",
        )
    raise NasDataError(
        f"unknown dataset {name!r}; use cifar10, cifar100, imagefolder, fashion-mnist, digits "
        "or synthetic"
    )


def search_split(dataset: Dataset, portion: float = 0.5, seed: int = 0) -> tuple[Subset, Subset]:
    """Split a training set into search-train and search-validation halves (DARTS)."""
    n = len(dataset)
    if n < 2:
        raise NasDataError(f"the training set has {n} example(s); a search needs at least 2")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    cut = int(n * portion)
    return Subset(dataset, order[:cut]), Subset(dataset, order[cut:])


def loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    workers: int = 0,
    drop_last: bool = True,
    pin_memory: bool = False,
    shard: bool = True,
) -> DataLoader:
    """A DataLoader whose order and random augmentations are functions of ``(seed,
    epoch, position)`` (``mlo.durable.sampling.resumable_loader``): the same with any number
    of workers, and restored exactly by a checkpoint at any position. Under torchrun it
    loads this rank's shard, unless ``shard=False`` (an evaluation every rank runs whole).
    """
    if len(dataset) == 0:
        raise NasDataError("cannot build a loader over an empty dataset")
    if drop_last and len(dataset) < batch_size:
        raise NasDataError(
            f"the dataset has {len(dataset)} examples, fewer than one batch of {batch_size}; "
            "lower --batch-size"
        )
    return resumable_loader(
        dataset,
        batch_size,
        seed=seed,
        shuffle=shuffle,
        workers=workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
        worker_init_fn=one_thread_per_worker if workers > 0 else None,
        **({} if shard else {"rank": 0, "world": 1}),
    )
