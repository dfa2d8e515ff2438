"""How the explainer explains its predictions: pluggable explanation methods.

An explanation of the explainer ``f(·; A, W)`` on an example ``(x, y)`` is a mask ``m``
of the input's shape; the explained input the audience sees is ``x̃ = x ⊙ m``.

- ``pgd``: ``m = δ*``, the adversarial perturbation ``argmax_{‖δ‖∞≤ε} ℓ(f(x + δ), y)``
  found by projected gradient ascent (ε = 8/255, step 2/255, 7 steps, random start).
  - ``differentiable=True`` (the default): each step moves along the gradient divided by
    its mean absolute value per example (the same average step as a sign step), so ``δ*``
    is a differentiable function of ``A`` and ``W`` and the audience's loss reaches them.
  - ``differentiable=False``: the paper's sign steps, ``δ ← clip(δ + α·sign(∇δ ℓ))``.
    ``sign`` has derivative zero almost everywhere, so ``∂δ*/∂W = ∂δ*/∂A = 0``: the
    audience then contributes nothing to the architecture's hypergradient.
- ``saliency``: ``m = |∇_x ℓ(f(x), y)|``, normalised to a maximum of 1 per example
  (differentiable through the double backward unless ``differentiable=False``).

More methods plug in with ``register_explanation`` and are then chosen by name,
``ExplanationConfig(method="mine")`` (``docs/tutorials/lease.md``).

Inputs are normalised images; ε and the step are given in pixel units and divided by each
channel's standard deviation, so the ball is the usual 8/255 one in pixel space. With
``units="normalized"`` (the authors' public code) they are used on the normalised inputs
as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from pydantic import ConfigDict, Field, field_validator
from torch import Tensor

from mlo.options import NumbersNotBooleans
from problems.nas.search import cross_entropy

Forward = Callable[[Tensor], Tensor]


class ExplanationConfig(NumbersNotBooleans):
    """How the explain level computes an explanation of the explainer's predictions: the
    method (a PGD attack's perturbation, or input-gradient saliency), whether gradients
    flow through it back to the explainer, and the attack's radius, step and units."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str = Field(
        "pgd", description="a registered explanation method: pgd, saliency, or your own"
    )
    differentiable: bool = Field(
        True, description="let gradients flow from the audience back to A and W"
    )
    epsilon: float = Field(8 / 255, gt=0, description="PGD ball radius, pixel units")
    step_size: float = Field(2 / 255, gt=0, description="PGD step, pixel units")
    steps: int = Field(7, ge=1, description="PGD steps")
    random_start: bool = True
    units: Literal["pixel", "normalized"] = Field(
        "pixel",
        description="pixel: ε and the step are in pixel units (divided by the channels' std); "
        "normalized: used on the normalised inputs as they are (the authors' code)",
    )

    @field_validator("method")
    @classmethod
    def _registered(cls, value: str) -> str:
        if value not in _METHODS:
            raise ValueError(
                f"unknown explanation method {value!r}; registered: "
                f"{', '.join(sorted(_METHODS))} (add one with "
                "problems.lease.explanations.register_explanation)"
            )
        return value

    def input_scale(self, pixel_std: Tensor) -> Tensor:
        """Per-channel factor from ε's units to the inputs' units."""
        if self.units == "normalized":
            return torch.ones_like(pixel_std)
        return 1.0 / pixel_std


def pgd_mask(
    forward: Forward,
    x: Tensor,
    y: Tensor,
    start: Tensor,
    config: ExplanationConfig,
    pixel_std: Tensor,
) -> Tensor:
    """``δ*`` by ``config.steps`` projected ascent steps from ``start`` (inside the ball).

    The result is differentiable in the model's parameters when ``config.differentiable``
    and gradients are enabled at the call; under ``torch.no_grad()`` only its value is
    computed (the same value, without second-order graphs).
    """
    graph = config.differentiable and torch.is_grad_enabled()
    scale = config.input_scale(pixel_std).to(x).view(1, -1, 1, 1)
    eps, alpha = config.epsilon * scale, config.step_size * scale
    with torch.enable_grad():
        delta = start.detach().requires_grad_(True)
        for _ in range(config.steps):
            loss = cross_entropy(forward(x + delta), y)
            (grad,) = torch.autograd.grad(loss, delta, create_graph=graph)
            if config.differentiable:
                direction = grad / (grad.abs().mean(dim=(1, 2, 3), keepdim=True) + 1e-12)
            else:
                direction = grad.sign()
            delta = torch.maximum(torch.minimum(delta + alpha * direction, eps), -eps)
            if not graph:
                delta = delta.detach().requires_grad_(True)
    return delta if graph else delta.detach()


def saliency_mask(forward: Forward, x: Tensor, y: Tensor, config: ExplanationConfig) -> Tensor:
    graph = config.differentiable and torch.is_grad_enabled()
    with torch.enable_grad():
        inputs = x.detach().requires_grad_(True)
        loss = cross_entropy(forward(inputs), y)
        (grad,) = torch.autograd.grad(loss, inputs, create_graph=graph)
    magnitude = grad.abs()
    peak = magnitude.amax(dim=(1, 2, 3), keepdim=True) + 1e-12
    mask = magnitude / peak
    return mask if graph else mask.detach()


def random_start(
    shape: torch.Size,
    config: ExplanationConfig,
    pixel_std: Tensor,
    generator: torch.Generator,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor:
    """Uniform in the ε-ball (zeros without random start)."""
    if not config.random_start or config.method != "pgd":
        return torch.zeros(shape, device=device, dtype=dtype)
    scale = config.input_scale(pixel_std)
    eps = (config.epsilon * scale).to(device=device, dtype=dtype).view(1, -1, 1, 1)
    noise = torch.rand(shape, generator=generator, dtype=dtype).to(device)
    return (2 * noise - 1) * eps


def explanation_mask(
    forward: Forward,
    x: Tensor,
    y: Tensor,
    start: Tensor,
    config: ExplanationConfig,
    pixel_std: Tensor,
) -> Tensor:
    """The explanation mask of ``forward``'s predictions on ``(x, y)`` by the method
    registered as ``config.method``: ``pgd`` from the random ``start``, ``saliency``, or
    one of yours; differentiable with respect to the model's parameters when
    ``config.differentiable``."""
    return _METHODS[config.method](forward, x, y, start, config, pixel_std)


ExplanationMethod = Callable[[Forward, Tensor, Tensor, Tensor, ExplanationConfig, Tensor], Tensor]
_METHODS: dict[str, ExplanationMethod] = {}


def register_explanation(name: str) -> Callable[[ExplanationMethod], ExplanationMethod]:
    r"""Decorator: make ``method(forward, x, y, start, config, pixel_std) -> mask`` the
    explanation method ``name``.

    ``forward`` maps inputs to the explainer's logits; the mask has ``x``'s shape and the
    audience sees \(x \odot \mathrm{mask}\). Keep the mask a differentiable function of the
    explainer when ``config.differentiable`` and gradients are enabled (``create_graph`` in any
    inner ``autograd.grad``), so that the audience's loss reaches ``A`` and ``W``; under
    ``torch.no_grad()`` compute only its value. ``start`` is the random start of ``pgd``
    (zeros for other methods); ``pixel_std`` the inputs' per-channel standard deviation.
    """

    def decorate(method: ExplanationMethod) -> ExplanationMethod:
        if name in _METHODS and _METHODS[name] is not method:
            raise ValueError(f"an explanation method named {name!r} is already registered")
        _METHODS[name] = method
        return method

    return decorate


register_explanation("pgd")(pgd_mask)
register_explanation("saliency")(
    lambda forward, x, y, start, config, pixel_std: saliency_mask(forward, x, y, config)
)
