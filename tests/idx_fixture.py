"""Small datasets in the real IDX format of (Fashion-)MNIST, for torchvision's loader."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def idx_images(images: np.ndarray) -> bytes:
    """uint8 images (n, rows, cols) as an IDX3 file: magic 0x803, three big-endian sizes."""
    n, rows, cols = images.shape
    return struct.pack(">IIII", 0x803, n, rows, cols) + images.astype(np.uint8).tobytes()


def idx_labels(labels: np.ndarray) -> bytes:
    """uint8 labels (n,) as an IDX1 file: magic 0x801, one big-endian size."""
    return struct.pack(">II", 0x801, len(labels)) + labels.astype(np.uint8).tobytes()


def write_fashion_mnist(
    folder: Path, train: int = 64, test: int = 16, seed: int = 0, gzipped: bool = False
) -> Path:
    """The four files in ``folder`` (``.gz`` as Debian ships them when ``gzipped``), with
    class-dependent brightness so that a few steps can tell classes apart."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", train), ("test", test)):
        labels = rng.integers(0, 10, size=n)
        base = labels[:, None, None] * 25
        images = (base + rng.integers(0, 30, size=(n, 28, 28))).clip(0, 255)
        for name, data in zip(FILES[split], (idx_images(images), idx_labels(labels))):
            if gzipped:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
    return folder
