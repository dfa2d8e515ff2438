from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import mlo

from .sinusoid import SinusoidTasks


class SineMLP(nn.Module):
    """θ: the 1 → 40 → 40 → 1 ReLU network of the MAML paper, as plain parameters."""

    def __init__(self, hidden: int = 40) -> None:
        super().__init__()
        layers = [nn.Linear(1, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, 1)]
        self.weights = nn.ParameterList()
        for layer in layers:
            self.weights.append(nn.Parameter(layer.weight.detach().t().clone()))
            self.weights.append(nn.Parameter(layer.bias.detach().clone()))


class TaskOffsets(nn.Module):
    """Δ: one offset per task and parameter of θ, zero at the start of each inner loop."""

    def __init__(self, init: SineMLP, tasks: int) -> None:
        super().__init__()
        self.offsets = nn.ParameterList(
            nn.Parameter(torch.zeros(tasks, *p.shape)) for p in init.weights
        )

    def reset_parameters(self) -> None:
        with torch.no_grad():
            for p in self.offsets:
                p.zero_()


def functional_mlp(x: Tensor, params: Sequence[Tensor]) -> Tensor:
    """The MLP for a batch of tasks: ``x`` (tasks, points, 1), each parameter with a
    leading task dimension."""
    h = x
    for i in range(0, len(params), 2):
        h = torch.baddbmm(params[i + 1].unsqueeze(1), h, params[i])
        if i + 2 < len(params):
            h = F.relu(h)
    return h


def task_mse(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error per task, shape (tasks,)."""
    return ((pred - target) ** 2).mean(dim=(1, 2))


class Adapt(mlo.Problem):
    """Lower level: per-task adaptation on the support sets (Σ over tasks, so each task's
    offset follows its own loss), with an optional proximal term (iMAML)."""

    proximal: float = 0.0

    def adapted(self) -> list[Tensor]:
        theta = self.meta.module.weights
        return [t.unsqueeze(0) + d for t, d in zip(theta, self.module.offsets)]

    def training_step(self, batch):
        xs, ys, _, _ = batch
        loss = task_mse(functional_mlp(xs, self.adapted()), ys).sum()
        if self.proximal:
            loss = loss + 0.5 * self.proximal * sum((d**2).sum() for d in self.module.offsets)
        return loss


class MetaInit(mlo.Problem):
    """Upper level: the adapted networks' mean query error."""

    def training_step(self, batch):
        _, _, xq, yq = batch
        return task_mse(functional_mlp(xq, self.adapt.adapted()), yq).mean()


def build(
    *,
    method: str,
    meta_batch: int,
    shots: int,
    inner_steps: int,
    inner_lr: float,
    meta_lr: float,
    seed: int,
    proximal: float = 1.0,
    queries: int = 10,
    cg_iterations: int = 5,
    cg_ridge: float = 0.0,
) -> tuple[list[mlo.Problem], dict[str, list[str]]]:
    """``method``: ``maml`` (unroll through the inner steps) or ``imaml`` (proximal inner
    objective, conjugate-gradient implicit hypergradient)."""
    if method not in ("maml", "imaml"):
        raise ValueError(f"method must be 'maml' or 'imaml', got {method!r}")
    torch.manual_seed(seed)
    theta = SineMLP()
    offsets = TaskOffsets(theta, meta_batch)
    tasks = SinusoidTasks(meta_batch, shots, queries, repeat=inner_steps, seed=seed)
    solver = (
        "unroll" if method == "maml" else mlo.solvers.CG(iterations=cg_iterations, ridge=cg_ridge)
    )
    adapt = Adapt(
        "adapt",
        offsets,
        torch.optim.SGD(offsets.parameters(), lr=inner_lr),
        data=tasks,
        config=mlo.ProblemConfig(
            solver=solver, unroll_steps=inner_steps, reset_each_inner_loop=True
        ),
    )
    adapt.proximal = proximal if method == "imaml" else 0.0
    meta = MetaInit(
        "meta",
        theta,
        torch.optim.Adam(theta.parameters(), lr=meta_lr),
        config=mlo.ProblemConfig(batch_from="adapt"),
    )
    return [meta, adapt], {"meta": ["adapt"]}


def adapt_and_score(
    theta: Sequence[Tensor], tasks, steps: int, lr: float, proximal: float = 0.0
) -> Tensor:
    """Fine-tune a copy of θ per task with ``steps`` SGD steps on the support set (with the
    proximal term ``proximal/2 ‖φ − θ‖²`` if given); return the query MSE per task."""
    xs, ys, xq, yq = tasks
    n = xs.shape[0]
    anchor = [t.detach().unsqueeze(0) for t in theta]
    params = [a.repeat(n, *([1] * (a.dim() - 1))).requires_grad_(True) for a in anchor]
    for _ in range(steps):
        loss = task_mse(functional_mlp(xs, params), ys).sum()
        if proximal:
            loss = loss + 0.5 * proximal * sum(((p - a) ** 2).sum() for p, a in zip(params, anchor))
        grads = torch.autograd.grad(loss, params)
        params = [(p - lr * g).detach().requires_grad_(True) for p, g in zip(params, grads)]
    with torch.no_grad():
        return task_mse(functional_mlp(xq, params), yq)
