"""LeaSE: learning by self-explanation (Hosseini & Xie, arXiv 2012.12899) on mlo.

Four levels — explainer (W), explain (E), audience (V), relearn (A) — built by
:func:`build`; see ``levels.py`` for the formulation and ``docs/lease.md`` for the
choices made where the paper is silent.
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
