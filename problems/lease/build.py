"""One constructor that wires LeaSE's four levels for ``mlo.Engine``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

import mlo
from problems.nas.search import SearchHyper
from problems.nas.search_space import ArchitectureWeights, Supernet

from .audience import ResNet
from .config import LeaseHyper
from .levels import Audience, Explain, Explainer, Explanations, Relearn

DEPENDENCIES = {
    "relearn": ["explainer", "explain"],
    "explainer": ["explain"],
    "explain": ["audience"],
}


def build(
    supernet: Supernet,
    arch: ArchitectureWeights,
    explainer_data: Iterable[Any],
    audience_data: Iterable[Any],
    relearn_data: Iterable[Any],
    *,
    num_classes: int,
    batch_size: int,
    total_updates: int,
    image_shape: tuple[int, int, int] = (3, 32, 32),
    pixel_std: torch.Tensor | None = None,
    hyper: LeaseHyper | None = None,
    search: SearchHyper | None = None,
    audience: torch.nn.Module | None = None,
    seed: int = 0,
) -> tuple[list[mlo.Problem], dict[str, list[str]]]:
    """The problems and dependencies of a LeaSE search.

    ``explainer_data`` and ``audience_data`` are two loaders over search-train (the audience
    and the explain level share the latter's batches), ``relearn_data`` one over
    search-validation. ``audience`` defaults to ``hyper.audience.arch`` on the supernet's
    device. Replace any level, solver or loss by editing the returned problems.

    With ``hyper.author_setting`` (the ``lease-author`` preset, ``LeaseHyper.author``)
    only two levels train: ``relearn`` above ``explainer``, which trains on adversarial
    inputs; the audience network is attached to ``relearn`` untrained, in eval mode.
    """
    hyper = hyper or LeaseHyper()
    search = search or SearchHyper()
    device = next(supernet.parameters()).device
    audience_net = (
        audience
        if audience is not None
        else ResNet(hyper.audience.arch, num_classes, image_shape[0]).to(device)
    )
    explanations = Explanations(batch_size, image_shape).to(device)

    w_opt, w_sched = search.weight_optimizer(supernet.parameters(), total_updates)
    a = hyper.audience
    v_opt, v_sched = a.optimizer(audience_net.parameters(), total_updates)
    arch_opt = search.arch_optimizer(arch.parameters())

    explainer = Explainer(
        "explainer",
        supernet,
        w_opt,
        data=explainer_data,
        scheduler=w_sched,
        config=mlo.ProblemConfig(
            solver=hyper.explainer_solver,
            unroll_steps=hyper.explainer_unroll_steps,
            grad_clip=search.grad_clip,
        ),
    )
    # Sign-PGD explanations are constant in A and W: their Jacobian is exactly zero, and
    # first_order says so without recomputing the attack.
    explain_solver = hyper.explain_solver if hyper.explanation.differentiable else "first_order"
    explain = Explain(
        "explain",
        explanations,
        None,
        data=audience_data,
        config=mlo.ProblemConfig(solver=explain_solver),
    )
    explain.explanation = hyper.explanation
    explain.pixel_std = pixel_std if pixel_std is not None else torch.ones(image_shape[0])
    explain.seed = seed
    audience_level = Audience(
        "audience",
        audience_net,
        v_opt,
        scheduler=v_sched,
        config=mlo.ProblemConfig(
            solver=hyper.audience_solver,
            unroll_steps=hyper.audience_unroll_steps,
            grad_clip=a.grad_clip,
            batch_from="explain",
        ),
    )
    audience_level.gamma = hyper.gamma
    relearn = Relearn("relearn", arch, arch_opt, data=relearn_data)
    relearn.lam = hyper.lam
    if hyper.author_setting:
        explainer.adversarial = hyper.explanation
        explainer.pixel_std = explain.pixel_std
        relearn.fixed_audience = audience_net.eval().requires_grad_(False)
        return [relearn, explainer], {"relearn": ["explainer"]}
    return [relearn, explainer, explain, audience_level], {
        k: list(v) for k, v in DEPENDENCIES.items()
    }
