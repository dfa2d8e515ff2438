"""LeaSE: learning by self-explanation (Hosseini & Xie, arXiv 2012.12899) on mlo.

Four levels — explainer (W), explain (E), audience (V), relearn (A) — built by
``build``; ``docs/lease.md`` has the choices made where the paper is silent.

- ``levels``: the four problems and the formulation;
- ``explanations``: how the explainer explains (PGD, sign-PGD, saliency; a registry);
- ``audience``: the audience's fixed architectures (ResNets);
- ``build``: the levels wired into an engine's problems and dependencies;
- ``config``: LeaSE's hyperparameters and the search run's configuration;
- ``search``: the wiring over a DARTS supernet for ``problems.nas.runner``;
- ``study``: LeaSE's variants against DARTS and a random cell, over seeds.
"""

from .audience import ResNet
from .build import DEPENDENCIES, build
from .config import AudienceHyper, LeaseHyper, LeaseRun
from .explanations import ExplanationConfig, explanation_mask, register_explanation
from .levels import Audience, Explain, Explainer, Explanations, Relearn
from .search import wire_search

__all__ = [
    "DEPENDENCIES",
    "Audience",
    "AudienceHyper",
    "Explain",
    "Explainer",
    "ExplanationConfig",
    "Explanations",
    "LeaseHyper",
    "LeaseRun",
    "Relearn",
    "ResNet",
    "build",
    "explanation_mask",
    "register_explanation",
    "wire_search",
]
