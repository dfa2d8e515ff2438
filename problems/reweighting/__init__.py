"""Data reweighting with a learned weighting function (Meta-Weight-Net, Shu et al. 2019).

Levels (edge ``weighting → classifier``):

    classifier:  W*(Θ) = argmin_W  Σ_i V(ℓ_i; Θ) ℓ_i / Σ_i V(ℓ_i; Θ),  ℓ_i = CE(f(x_i; W), ỹ_i)
    weighting:   min_Θ  CE(f(x; W*(Θ)), y)                                     clean meta-set

``V(·; Θ)`` maps an example's loss to a weight in (0, 1).

``levels.py`` holds the problems and ``build``, which wires them into an engine's
levels.
"""

from .levels import MetaWeighting, NoisyClassifier, WeightNet, build, symmetric_noise

__all__ = ["MetaWeighting", "NoisyClassifier", "WeightNet", "build", "symmetric_noise"]
