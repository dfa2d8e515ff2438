"""Total gradients: ``Hypergradients`` composes the evaluator, the Jacobian modes,
adjoint propagation and the nested products into what the engine asks for, a level's
gradient through the levels below it, and builds the [`Level`][mlo.solvers.Level] view
each solver gets."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..autodiff import gradient_or_none, materialized
from ..autodiff.linalg import Vector
from ..autodiff.trajectory import CURRENT_BATCH, Trajectory
from ..errors import SetupError
from ..graph import LevelGraph
from ..observe import cuda_devices
from ..solvers import Level
from .adjoint import AdjointPropagation, Watch
from .cost import CostEstimate
from .evaluator import Evaluator
from .hvp import HvpModes
from .jacobian import JacobianModes
from .nested import TotalSecondOrder
from .one_system import OneSystem


class Hypergradients:
    """Every level's total gradient (DESIGN §2) for one engine.

    Args:
        evaluator: the levels' objectives, batches and averages.
        graph: the level graph.
        trajectories: the recorded optimizer steps of the levels that ``unroll`` replays.
        watch: queues tensors for the finiteness check, blamed on a level.
    """

    def __init__(
        self,
        evaluator: Evaluator,
        graph: LevelGraph,
        trajectories: Mapping[str, Trajectory],
        watch: Watch,
    ) -> None:
        self.evaluator = evaluator
        self.graph = graph
        self.trajectories = trajectories
        self._one_systems: dict[str, OneSystem] = {}
        self.memos: dict[str, dict] = {}  # each level's Level.memo
        self.grouped_convolutions: dict[str, dict] = {}  # each level's, kept
        self.descendants = {n: graph.descendants(n) for n in graph.names}
        self.modes = JacobianModes(evaluator, self.descendants)
        self.diagnostics: dict[str, dict[str, Tensor]] = {}
        """The latest diagnostics of each level's solver."""
        self.diagnose = True
        self.blind: dict[str, bool] = {}  # see reads_nothing
        """Whether solvers compute their diagnostics now (the engine turns it off on the
        ticks it does not report)."""
        self.hvp_modes = HvpModes(evaluator, self.memos)
        self.propagate = AdjointPropagation(
            evaluator,
            graph,
            self.descendants,
            self.level,
            self.modes,
            watch,
            self.diagnostics,
            self.hvp_modes,
        )
        self.cost = CostEstimate(self.propagate, self.modes, self.memos)
        """Autograd products per update and per tick, exact or partial."""

    def total_gradient(self, name: str, loss: Tensor) -> Vector | None:
        """``d f_P / d θ_P`` with every descendant at its best response, by adjoint
        propagation, averaged over data-parallel ranks; ``None`` when the loss depends on
        none of ``θ_P``, not even through P's lower levels (a structural zero)."""
        evaluator = self.evaluator
        params = evaluator.problems[name].params.tensors
        if not self.descendants[name]:
            grads = gradient_or_none(loss, params)
            if all(g is None for g in grads):
                return None
            return evaluator.mean(name, materialized(grads, params))
        with evaluator.buffers.preserved():
            own = self.propagate(loss, name, [name], watch=True)[name]
        if own is None:
            return None
        return evaluator.mean(name, own)

    def reads_nothing(self, name: str) -> bool:
        """Whether level ``name``'s objective reads none of its own parameters and none of
        its lower levels' (found once, by differentiating it; changes nothing): a
        ``None`` total gradient is then a mistake, not a solver that passes nothing up."""
        if name not in self.blind:
            evaluator = self.evaluator
            tensors = [t for n in [name, *self.descendants[name]] for t in evaluator.params(n)]
            devices = cuda_devices([evaluator.problems[name].module])
            with torch.random.fork_rng(devices=devices), evaluator.buffers.preserved():
                grads = gradient_or_none(evaluator.objective(name), tensors)
            self.blind[name] = all(g is None for g in grads)
        return self.blind[name]

    def total_gradient_at(self, name: str, params: Sequence[Tensor], batch: Any) -> Vector:
        """Level ``name``'s total gradient with its parameters replaced by ``params`` (its
        lower levels see them too), on ``batch``, differentiable in ``params`` and in
        every other level's parameters: a training step of a nested level, as ``unroll``
        replays it."""
        params = list(params)
        # D's lower levels compute with fresh aliases of their parameters: derivatives by
        # them are then those at this θ_D, not also through the history of θ_D (earlier
        # replayed steps, which read the same lower levels).
        values = {name: params}
        problems = self.evaluator.problems
        for lower in self.descendants[name]:
            values[lower] = [p.view_as(p) for p in problems[lower].params.tensors]
        with self.evaluator.replaced(values), self.evaluator.buffers.preserved():
            loss = self.evaluator.objective(name, batch=batch)
            own = self.propagate(loss, name, [name], create_graph=True)
        if own[name] is None:
            return [torch.zeros_like(p) for p in params]
        return own[name]

    def level(self, name: str, parents: Sequence[str] = (), create_graph: bool = False) -> Level:
        """What level ``name``'s solver sees, for a product with ``parents``' parameters."""
        evaluator = self.evaluator
        problem = evaluator.problems[name]
        lr = None if problem.optimizer is None else float(problem.optimizer.param_groups[0]["lr"])
        nested = self.modes.nested(name)
        return Level(
            name=name,
            params=evaluator.params(name),
            objective=_objective_of(evaluator, name),
            learning_rate=lr,
            grad_clip=problem.config.grad_clip,
            trajectory=self.trajectories.get(name),
            response=(lambda: evaluator.response(name)) if problem.explicit else None,
            average=evaluator.average_of(name),
            second_order=(
                (lambda: TotalSecondOrder(self.propagate, name, parents, create_graph))
                if nested
                else None
            ),
            total=nested,
            total_gradient=(
                (lambda params, batch: self.total_gradient_at(name, params, batch))
                if nested
                else None
            ),
            create_graph=create_graph,
            optimizer=problem.optimizer,
            own_params=problem.params.tensors,
            hvp=self.hvp_modes.mode(name),
            hold=evaluator.held,
            hvp_radius=problem.config.hvp_radius,
            one_system=self._one_system(name, nested, create_graph),
            memo=self.memos.setdefault(name, {}),
            grouped_convolutions=self.grouped_convolutions.setdefault(name, {}),
            diagnose=self.diagnose and not create_graph,
        )

    def _one_system(self, name: str, nested: bool, create_graph: bool) -> Any:
        """The one-system products of a nested level that asks for them, else ``None``."""
        config = self.evaluator.problems[name].config
        if not nested or config.jacobian != "one_system":
            return None
        if create_graph:
            raise SetupError(
                f"problem {name!r}: jacobian='one_system' gives values, and a level above it "
                "that is itself nested differentiates through them; give that level "
                "jacobian='one_system' too (or use 'total' here)"
            )
        if name not in self._one_systems:  # the tree below a level is fixed with the graph
            iterations = getattr(config.solver, "iterations", 10)
            self._one_systems[name] = OneSystem(self.evaluator, self.graph, name, iterations)
        return self._one_systems[name].vjp


def _objective_of(evaluator: Evaluator, name: str) -> Callable[..., Tensor]:
    def objective(params: Sequence[Tensor] | None = None, batch: Any = CURRENT_BATCH) -> Tensor:
        return evaluator.objective(name, params, batch)

    return objective
