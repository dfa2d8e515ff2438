"""One DARTS iteration written by hand in plain PyTorch: the reference mlo is timed against.

1. an SGD step on the weights w with a training batch (optionally gradient-clipped,
   with a learning-rate scheduler);
2. an Adam step on the architecture α with a validation batch and the DARTS
   hypergradient  g_α = ∇_α L_val − ξ [∇_α L_train(w + r v) − ∇_α L_train(w − r v)] / 2r,
   v = ∇_w L_val, r = 0.01/‖v‖, ξ = the weights' learning rate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F


def darts_step_by_hand(
    forward: Callable[[torch.Tensor], torch.Tensor],
    w_params: Sequence[torch.Tensor],
    a_params: Sequence[torch.Tensor],
    w_opt: torch.optim.Optimizer,
    a_opt: torch.optim.Optimizer,
    train: Sequence,
    val: Sequence,
    *,
    grad_clip: float | None = None,
    scheduler=None,
    epsilon: float = 0.01,
) -> Callable[[], None]:
    """A closure doing one iteration per call, cycling through ``train`` and ``val``."""
    w_params, a_params = list(w_params), list(a_params)
    position = {"train": 0, "val": 0}

    def next_batch(name: str, data: Sequence):
        batch = data[position[name] % len(data)]
        position[name] += 1
        return batch

    def loss(batch) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(forward(x), y)

    def step() -> None:
        batch = next_batch("train", train)
        grads = torch.autograd.grad(loss(batch), w_params)
        for p, g in zip(w_params, grads):
            p.grad = g
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(w_params, grad_clip)
        w_opt.step()
        w_opt.zero_grad(set_to_none=True)
        if scheduler is not None:
            scheduler.step()

        val_batch = next_batch("val", val)
        grads = torch.autograd.grad(loss(val_batch), [*a_params, *w_params])
        g_alpha, v = grads[: len(a_params)], grads[len(a_params) :]
        r = epsilon / torch.linalg.vector_norm(torch.stack(torch._foreach_norm(v)))
        with torch.no_grad():
            torch._foreach_add_(w_params, torch._foreach_mul(v, r))
        g_plus = torch.autograd.grad(loss(batch), a_params)
        with torch.no_grad():
            torch._foreach_add_(w_params, torch._foreach_mul(v, -2 * r))
        g_minus = torch.autograd.grad(loss(batch), a_params)
        with torch.no_grad():
            torch._foreach_add_(w_params, torch._foreach_mul(v, r))
        xi = w_opt.param_groups[0]["lr"]  # after the scheduler step, as the engine reads it
        for p, g, gp, gm in zip(a_params, g_alpha, g_plus, g_minus):
            p.grad = g - xi * (gp - gm) / (2 * r)
        a_opt.step()
        a_opt.zero_grad(set_to_none=True)

    return step
