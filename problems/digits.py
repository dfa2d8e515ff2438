"""scikit-learn's handwritten digits (1,797 8×8 images, 10 classes), split three ways."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

import mlo


@dataclass
class DigitsSplits:
    train: tuple[Tensor, Tensor]
    val: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]

    @property
    def features(self) -> int:
        return self.train[0].shape[1]


def load_digits_splits(
    n_train: int = 200, n_val: int = 300, seed: int = 0, dtype: torch.dtype = torch.float32
) -> DigitsSplits:
    """Shuffle the digits with ``seed`` and split them into train / validation / test.

    Features are standardised with the training split's statistics. The data ship with
    scikit-learn (install the ``examples`` extra: ``pip install -e '.[examples]'``).
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SystemExit(
            "this example needs scikit-learn for its digits dataset: pip install -e '.[examples]'"
        ) from exc
    digits = load_digits()
    x = torch.as_tensor(digits.data, dtype=dtype)
    y = torch.as_tensor(digits.target, dtype=torch.long)
    if n_train + n_val >= len(x):
        raise ValueError(f"n_train + n_val must leave test examples (dataset has {len(x)})")
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    mean = x[:n_train].mean(0)
    std = x[:n_train].std(0).clamp_min(1e-3)
    x = (x - mean) / std
    cut = n_train + n_val
    return DigitsSplits(
        (x[:n_train], y[:n_train]), (x[n_train:cut], y[n_train:cut]), (x[cut:], y[cut:])
    )


def accuracy(forward, split: tuple[Tensor, Tensor]) -> float:
    """Top-1 accuracy of ``forward`` (a model or a function) on ``(x, y)``, observed
    without side effects (``mlo.observing``)."""
    modules = [forward] if isinstance(forward, torch.nn.Module) else []
    with mlo.observing(modules):
        return int(mlo.observe.correct(forward(split[0]), split[1])) / len(split[1])
