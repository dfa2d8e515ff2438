"""LeaSE hyperparameters (DARTS search defaults, DESIGN.md §4)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field

from mlo.options import NumbersNotBooleans
from problems.nas.config import SearchRun
from problems.nas.search import SearchHyper, sgd_with_cosine

from ..cli import OutFolder
from .audience import AudienceArch
from .explanations import ExplanationConfig


class AudienceHyper(NumbersNotBooleans):
    """The audience network and its optimiser (SGD with a cosine schedule, as W's)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    arch: AudienceArch = "resnet18"
    lr: float = Field(0.025, gt=0)
    lr_min: float = Field(0.001, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(3e-4, ge=0)
    grad_clip: float = Field(5.0, gt=0)

    def optimizer(self, params, total_updates: int):
        """SGD on the audience's weights and its cosine schedule."""
        return sgd_with_cosine(
            params, self.lr, self.lr_min, self.momentum, self.weight_decay, total_updates
        )


class LeaseHyper(NumbersNotBooleans):
    """λ, γ, the explanation method, and the solver and unroll steps of each level."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lam: float = Field(1.0, ge=0, description="λ: weight of the explainer's loss in relearn")
    gamma: float = Field(1.0, ge=0, description="γ: weight of the explanations in the audience")
    explanation: ExplanationConfig = ExplanationConfig()
    explainer_solver: str = Field(
        "darts", description="solver of the explainer level (W); also DARTS' in the baseline"
    )
    audience_solver: str = Field("darts", description="solver of the audience level (V)")
    explain_solver: str = Field(
        "explicit",
        description="solver of the explain level (E); with non-differentiable explanations "
        "the Jacobian is zero and first_order is used",
    )
    explainer_unroll_steps: int = Field(1, ge=1)
    audience_unroll_steps: int = Field(1, ge=1)
    audience: AudienceHyper = AudienceHyper()
    author_setting: bool = Field(
        False,
        description="the setting of the authors' public code: W trains on one-step sign-PGD "
        "inputs (ε in normalised units), the audience is never trained, A gets only the "
        "explainer's (DARTS) hypergradient; see LeaseHyper.author()",
    )

    def author(self) -> LeaseHyper:
        r"""The ``lease-author`` preset: this configuration in the authors' setting.

        Explanations are one sign-PGD step of size ε = 8/255 in normalised units, clamped
        to the ε-ball, without a random start; the explainer trains on \(x + \delta\); the
        audience is built but never trained, so its loss in relearn is constant in ``A``
        (no explain or audience level is trained).
        """
        explanation = self.explanation.model_copy(
            update={
                "method": "pgd",
                "differentiable": False,
                "steps": 1,
                "step_size": self.explanation.epsilon,
                "random_start": False,
                "units": "normalized",
            }
        )
        return self.model_copy(update={"explanation": explanation, "author_setting": True})


class LeaseRun(SearchRun):
    """``examples/lease_cifar.py search``: a LeaSE search (or ``baseline='darts'``)."""

    out: OutFolder = Path("runs/lease")
    baseline: Literal["none", "darts"] = Field(
        "none", description="'darts': the same search without the explain and audience levels"
    )
    lease: LeaseHyper = LeaseHyper()
    hyper: SearchHyper = SearchHyper()

    small: bool = Field(
        False,
        description="small budget for a first look on a CPU: 5 cells, 8 channels, batch 16, "
        "the small audience, 3 PGD steps, 10 architecture updates (explicitly given values win)",
    )

    def weight_updates_per_step(self) -> int:
        return self.lease.explainer_unroll_steps

    def effective(self) -> LeaseRun:
        """The configuration with the presets (``lease.author_setting``, ``small``) applied;
        explicitly given values win over the ``small`` preset."""
        config = self
        if config.lease.author_setting:
            config = config.model_copy(update={"lease": config.lease.author()})
        if not config.small:
            return config
        lease = config.lease
        if "arch" not in lease.audience.model_fields_set:
            audience = lease.audience.model_copy(update={"arch": "resnet_small"})
            lease = lease.model_copy(update={"audience": audience})
        if "steps" not in lease.explanation.model_fields_set and not lease.author_setting:
            explanation = lease.explanation.model_copy(update={"steps": 3})
            lease = lease.model_copy(update={"explanation": explanation})
        return super(LeaseRun, config.model_copy(update={"lease": lease})).effective()
