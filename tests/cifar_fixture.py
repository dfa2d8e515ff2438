"""Small datasets in the real CIFAR python format (pickled batches), for the real loaders."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np


def _images(n: int, classes: int, rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
    labels = rng.integers(0, classes, size=n)
    # class-dependent colour so a few steps of training can tell classes apart
    base = (labels[:, None] * 255 // max(classes - 1, 1)).astype(np.int64)
    data = (base + rng.integers(-40, 40, size=(n, 3072))).clip(0, 255).astype(np.uint8)
    return data, labels.tolist()


def write_cifar10(root: Path, per_batch: int = 16, test: int = 16, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        data, labels = _images(per_batch, 10, rng)
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump(
                {
                    "batch_label": f"training batch {i} of 5",
                    "data": data,
                    "labels": labels,
                    "filenames": [f"{j}.png" for j in labels],
                },
                f,
            )
    data, labels = _images(test, 10, rng)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"batch_label": "testing batch 1 of 1", "data": data, "labels": labels}, f)
    names = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": per_batch}, f)
    return root


def write_cifar100(root: Path, train: int = 64, test: int = 16, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", train), ("test", test)):
        data, labels = _images(n, 100, rng)
        with open(folder / name, "wb") as f:
            pickle.dump(
                {"data": data, "fine_labels": labels, "coarse_labels": [x // 5 for x in labels]}, f
            )
    with open(folder / "meta", "wb") as f:
        pickle.dump(
            {
                "fine_label_names": [f"class{i}" for i in range(100)],
                "coarse_label_names": [f"super{i}" for i in range(20)],
            },
            f,
        )
    return root
