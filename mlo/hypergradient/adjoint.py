"""Adjoint propagation over the level graph (DESIGN §2): the total derivative of a scalar
with every descendant of one level at its best response.

The engine uses it for each update's gradient (the scalar is the level's loss, the target
the level itself); the nested products of ``mlo.hypergradient.nested`` use it for
Hessian-vector and mixed products of a level's total gradient (the scalar is ``wᵀ g_D``,
the targets ``D`` or D's parents).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..autodiff import vjp
from ..autodiff.linalg import Vector, add
from ..durable import rng
from ..graph import LevelGraph
from ..solvers import Level
from .evaluator import Evaluator
from .hvp import HvpModes
from .jacobian import JacobianModes

LevelView = Callable[[str, Sequence[str], bool], Level]
"""``view(lower, parents, create_graph)``: what ``lower``'s solver sees."""
Watch = Callable[[str, str, Sequence[Tensor]], None]
"""``watch(level, what, tensors)``: queue tensors for the finiteness check."""


@dataclass(frozen=True)
class Plan:
    """What the static level graph decides for one propagation: the levels whose adjoints
    are taken (the targets, then the descendants a target is reached from), their
    parameters, and the solver steps deepest first: each lower level, its parents among
    those levels, and their parameters."""

    levels: list[str]
    params: list[list[Tensor]]
    tensors: list[Tensor]
    steps: list[tuple[str, list[str], list[list[Tensor]]]]


class AdjointPropagation:
    """``propagation(scalar, owner, targets)``: ``d scalar / d θ_T`` for each target.

    Args:
        evaluator: the levels' objectives and parameter replacements.
        graph: the level graph.
        descendants: every level's descendants, parents first.
        view: builds the [`Level`][mlo.solvers.Level] a lower level's solver sees.
        modes: which levels' Jacobians are total (and their fall-back).
        watch: queues tensors for the finiteness check.
        diagnostics: where each solver's diagnostics are kept, by level.
        hvp_modes: how each level's products are taken, and the switch to "recompute"
            when reverse mode runs out of memory.
    """

    def __init__(
        self,
        evaluator: Evaluator,
        graph: LevelGraph,
        descendants: Mapping[str, Sequence[str]],
        view: LevelView,
        modes: JacobianModes,
        watch: Watch,
        diagnostics: dict[str, dict[str, Tensor]],
        hvp_modes: HvpModes,
    ) -> None:
        self.evaluator, self.graph, self.descendants = evaluator, graph, descendants
        self.hvp_modes = hvp_modes
        self.view, self.modes, self.watch = view, modes, watch
        self.diagnostics = diagnostics
        self.plans: dict[tuple, Plan] = {}

    def __call__(
        self,
        scalar: Tensor,
        owner: str,
        targets: Sequence[str],
        *,
        create_graph: bool = False,
        retain_graph: bool = False,
        watch: bool = False,
    ) -> dict[str, Vector | None]:
        """``d scalar / d θ_T`` for each level ``T`` in ``targets``, where every
        descendant of ``owner`` is a function of its parents through its best response.

        1. ``adj[X] = ∂scalar/∂θ_X`` for the targets and the descendants (one autograd call);
        2. deepest descendant first, ``adj[U] += J_{L,U}ᵀ adj[L]`` for each parent ``U`` of
           ``L`` among the targets and the descendants (L's solver gives the product);
        3. the targets' adjoints are the result.

        An adjoint that is zero by the structure of the graph (nothing on the way reads
        that level) is ``None`` and its solver is not called; likewise a level whose every
        way up to a target crosses a zero Jacobian (``first_order``). ``create_graph``
        makes the result differentiable (every solver builds its products with
        ``create_graph``); ``retain_graph`` keeps the scalar's graph for another call;
        ``watch`` queues the solvers' contributions for the finiteness check, blamed on
        ``owner``. Levels whose parameters are replaced for the moment
        (``Evaluator.replaced``) are differentiated by their replacements.
        """
        plan = self.plan(owner, targets)
        values = self.evaluator.values
        params_of = plan.params
        tensors = plan.tensors
        if values:
            params_of = [values.get(n, ps) for n, ps in zip(plan.levels, plan.params)]
            tensors = [t for group in params_of for t in group]
        if scalar.requires_grad and tensors:
            flat = vjp(
                [scalar],
                tensors,
                create_graph=create_graph,
                retain_graph=retain_graph or create_graph,
            )
        else:
            flat = [None] * len(tensors)
        adjoint: dict[str, Vector | None] = {}
        start = 0
        for n, params in zip(plan.levels, params_of):
            part = flat[start : start + len(params)]
            start += len(params)
            if all(g is None for g in part):
                adjoint[n] = None
            else:
                adjoint[n] = [torch.zeros_like(p) if g is None else g for g, p in zip(part, params)]
        problems = self.evaluator.problems
        for lower, parents, groups in plan.steps:
            if adjoint[lower] is None:
                continue
            if values:
                groups = [values.get(u, g) for u, g in zip(parents, groups)]
            solver = problems[lower].config.solver
            # Under data parallelism an adjoint sums local contributions; it is averaged
            # once, here, where it is complete and used.
            vector = self.evaluator.mean(lower, adjoint[lower])
            level = self.view(lower, parents, create_graph)
            if level.total:
                # Its total products need third derivatives through its lower levels,
                # which some operations lack (batch norm): then it falls back to the
                # partial Jacobian, or says why it cannot, as if the attempt never happened.
                before = rng.capture()
                try:
                    result = solver.vjp(level, vector, groups)
                except (RuntimeError, NotImplementedError) as error:
                    rng.restore(before)
                    self.modes.unavailable(lower, error)
                    level = self.view(lower, parents, create_graph)
                    result = solver.vjp(level, vector, groups)
            else:
                result = self.hvp_modes.vjp(solver, level, vector, groups)
            contributions = [t for group in result.vjps for t in group]
            if watch and contributions:
                self.watch(
                    owner,
                    f"hypergradient from level {lower!r} (its {solver.name!r} solver)",
                    contributions,
                )
            for upper, product in zip(parents, result.vjps):
                current = adjoint[upper]
                adjoint[upper] = product if current is None else add(current, product)
            if result.diagnostics and not create_graph:
                self.diagnostics[lower] = result.diagnostics
        return {t: adjoint[t] for t in targets}

    def plan(self, owner: str, targets: Sequence[str]) -> Plan:
        """The propagation plan for ``owner`` and ``targets``, computed once per graph and
        solver choice (a level given another solver gets a new plan)."""
        below = self.descendants[owner]
        problems = self.evaluator.problems
        key = (owner, tuple(targets), tuple(id(problems[n].config.solver) for n in below))
        plan = self.plans.get(key)
        if plan is not None:
            return plan
        reaches = dict.fromkeys(targets, True)
        for level in below:
            reaches[level] = not problems[level].config.solver.zero_jacobian and any(
                reaches.get(u, False) for u in self.graph.parents[level]
            )
        levels = [*targets, *(n for n in below if reaches[n])]
        params = [list(problems[n].params.tensors) for n in levels]
        inside = set(levels)
        steps = []
        for lower in reversed(below):
            if reaches[lower]:
                parents = [u for u in self.graph.parents[lower] if u in inside]
                steps.append((lower, parents, [problems[u].params.tensors for u in parents]))
        plan = Plan(levels, params, [t for group in params for t in group], steps)
        self.plans[key] = plan
        return plan
