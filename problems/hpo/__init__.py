"""Hyperparameter optimization: a per-feature L2 penalty tuned on validation loss.

Levels: ``classifier`` (lower) minimises the training loss plus
``Σ_j exp(λ_j) ‖W[:, j]‖²``; ``penalty`` (upper) minimises the classifier's validation
loss over ``λ``. Edge: ``penalty → classifier``.

``levels.py`` holds the problems and ``build``, which wires them into an engine's
levels.
"""

from ..digits import DigitsSplits, load_digits_splits
from .levels import Classifier, PenaltyTuner, PerFeatureL2, build

__all__ = [
    "Classifier",
    "DigitsSplits",
    "PenaltyTuner",
    "PerFeatureL2",
    "build",
    "load_digits_splits",
]
