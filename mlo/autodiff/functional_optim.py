"""Differentiable, functional versions of PyTorch's SGD, Adam and AdamW steps.

``step(params, grads, states, hypers)`` returns new parameter and state tensors without
touching its inputs, so that autograd can differentiate through a sequence of optimizer
steps (the ``unroll`` solver). The arithmetic follows ``torch.optim`` exactly, so that a
replay from a saved state reproduces the real trajectory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..errors import SetupError

SUPPORTED = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)


@dataclass(frozen=True)
class StepRule:
    """One parameter's optimizer kind and hyperparameters at one step."""

    kind: str  # "sgd" | "adam" | "adamw" | "frozen" (not in the optimizer: never moves)
    hyper: tuple[tuple[str, Any], ...]

    def get(self, key: str) -> Any:
        return dict(self.hyper)[key]


FROZEN = StepRule("frozen", ())
"""The rule of a parameter outside the optimizer: ``step`` returns it unchanged."""


def capture_rules(optimizer: torch.optim.Optimizer, params: Sequence[Tensor]) -> list[StepRule]:
    """The step rule for each of ``params`` as the optimizer would apply it now."""
    if not isinstance(optimizer, SUPPORTED):
        raise SetupError(
            f"the unroll solver differentiates through SGD, Adam and AdamW steps; "
            f"{type(optimizer).__name__} is not supported. Use one of those optimizers for "
            "this level, or an implicit solver ('cg', 'neumann', 'darts')."
        )
    kind = {torch.optim.SGD: "sgd", torch.optim.Adam: "adam", torch.optim.AdamW: "adamw"}[
        type(optimizer)
    ]
    by_param: dict[int, StepRule] = {}
    for group in optimizer.param_groups:
        if group.get("maximize", False):
            raise SetupError("the unroll solver does not support maximize=True")
        if kind != "sgd" and group.get("amsgrad", False):
            raise SetupError("the unroll solver does not support amsgrad=True")
        if kind == "adam" and group.get("decoupled_weight_decay", False):
            kind_here = "adamw"
        else:
            kind_here = kind
        keys = (
            ("lr", "momentum", "dampening", "weight_decay", "nesterov")
            if kind == "sgd"
            else ("lr", "betas", "eps", "weight_decay")
        )
        hyper = tuple((k, _plain(group[k])) for k in keys)
        rule = StepRule(kind_here, hyper)
        for p in group["params"]:
            by_param[id(p)] = rule
    # A trainable parameter the optimizer does not hold is never stepped: it stays put.
    return [by_param.get(id(p), FROZEN) for p in params]


def _plain(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().clone()
    return value


def capture_state(
    optimizer: torch.optim.Optimizer, params: Sequence[Tensor]
) -> list[dict[str, Tensor]]:
    """Detached copies of the optimizer state of each parameter (empty before step 1)."""
    out = []
    for p in params:
        state = optimizer.state.get(p, {})
        out.append({k: v.detach().clone() for k, v in state.items() if isinstance(v, Tensor)})
    return out


def step(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    states: Sequence[dict[str, Tensor]],
    rules: Sequence[StepRule],
) -> tuple[list[Tensor], list[dict[str, Tensor]]]:
    """One differentiable optimizer step for every parameter."""
    new_params, new_states = [], []
    for p, g, state, rule in zip(params, grads, states, rules):
        if rule.kind == "frozen":
            p2, s2 = p, state
        elif rule.kind == "sgd":
            p2, s2 = _sgd(p, g, state, rule)
        else:
            p2, s2 = _adam(p, g, state, rule, decoupled=rule.kind == "adamw")
        new_params.append(p2)
        new_states.append(s2)
    return new_params, new_states


def _sgd(p: Tensor, g: Tensor, state: dict[str, Tensor], rule: StepRule):
    lr, momentum, dampening, wd, nesterov = (
        rule.get(k) for k in ("lr", "momentum", "dampening", "weight_decay", "nesterov")
    )
    d = g + wd * p if wd != 0 else g
    new_state = dict(state)
    if momentum != 0:
        buf = state.get("momentum_buffer")
        buf = d if buf is None else momentum * buf + (1 - dampening) * d
        new_state["momentum_buffer"] = buf
        d = d + momentum * buf if nesterov else buf
    return p - lr * d, new_state


def _safe_sqrt(x: Tensor) -> Tensor:
    # d/dx sqrt(x) is infinite at 0, where Adam's second moment starts: take 0 there.
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, torch.ones_like(x)).sqrt(), 0.0)


def _adam(p: Tensor, g: Tensor, state: dict[str, Tensor], rule: StepRule, decoupled: bool):
    lr, (beta1, beta2), eps, wd = (rule.get(k) for k in ("lr", "betas", "eps", "weight_decay"))
    step_count = state.get("step")
    step_count = (
        torch.ones((), dtype=p.dtype, device=p.device) if step_count is None else step_count + 1
    )
    if wd != 0:
        if decoupled:
            p = p * (1 - lr * wd)
        else:
            g = g + wd * p
    m = state.get("exp_avg", torch.zeros_like(p))
    v = state.get("exp_avg_sq", torch.zeros_like(p))
    m = m + (1 - beta1) * (g - m)
    v = beta2 * v + (1 - beta2) * g * g
    bias1 = 1 - beta1**step_count
    bias2 = 1 - beta2**step_count
    denom = _safe_sqrt(v) / bias2.sqrt() + eps
    new_p = p - (lr / bias1) * m / denom
    return new_p, {"step": step_count, "exp_avg": m, "exp_avg_sq": v}
