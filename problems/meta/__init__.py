"""Meta-learning on mlo: MAML (unroll) and iMAML (implicit, proximal) on sinusoid regression.

Levels (edge ``meta → adapt``), for a batch of tasks t with support and query sets:

    adapt:  Δ*(θ) = argmin_Δ  Σ_t MSE(f(x_t^s; θ + Δ_t), y_t^s) [+ λ/2 Σ_t ‖Δ_t‖²  for iMAML]
    meta:   min_θ  mean_t MSE(f(x_t^q; θ + Δ_t*), y_t^q)

The adapted parameters are φ_t = θ + Δ_t with Δ reset to 0 before each inner loop, so
differentiating through the inner steps (``unroll``) is exactly MAML's second-order
gradient, and the implicit function theorem on the proximal objective (``cg``) is iMAML's.

``levels.py`` holds the problems and ``build``, which wires them into an engine's
levels; ``sinusoid.py`` the task distribution.
"""

from .levels import Adapt, MetaInit, SineMLP, TaskOffsets, adapt_and_score, build, functional_mlp
from .sinusoid import SinusoidTasks, sample_tasks

__all__ = [
    "Adapt",
    "MetaInit",
    "SineMLP",
    "SinusoidTasks",
    "TaskOffsets",
    "adapt_and_score",
    "build",
    "functional_mlp",
    "sample_tasks",
]
