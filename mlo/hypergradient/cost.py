"""How many autograd passes a tick takes, as the level graph, the schedule and the
solvers fix them (nothing is computed): under each level's Jacobian as configured, and
with the partial Jacobian on every level, so that the price of exact nested
hypergradients is shown (``Engine.describe``) and named when it is high.

Per update of a level P (DESIGN §2): one pass for P's own gradient, plus one call of
each lower level L's solver on P's adjoint propagation. A call takes
``s = solver.products_on(unroll_steps, ...)`` passes when L's Jacobian is partial (its
``products``, less one where ``cg`` takes its mixed products inside its Hessian-vector
products' passes; with ``hvp="recompute"`` each Hessian-vector product is two, since it
builds the gradient's graph again, and the mixed product one forward-over-reverse pass). When it is
total (L reads its own lower levels), each pass is one through L's total gradient: the
pass itself and a propagation through L's lower levels, ``inner`` passes, so the call
takes ``s · (1 + inner)``. The count compounds with the depth of the nesting; it is exact
(``tests/mlo/test_cost.py`` counts the passes).

Time compounds faster: a pass inside a nested level differentiates a graph one order of
derivative higher. ``estimate`` weighs each nested level's inner passes by
``NESTING_WEIGHT``; on the dense chain of ``benchmarks/depth.py`` (``darts``) it gives
exact/partial ratios of 1.9, 5.0 and 16 at 3, 4 and 5 levels, where the measured time
ratios were 1.9, 6.3 and 840 (docs/concepts.md, "What exactness costs"): a lower bound,
and beyond four levels a loose one.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from ..autodiff.recompute import REVERSE_MIXED
from ..solvers import ImplicitSolver
from .adjoint import AdjointPropagation
from .jacobian import JacobianModes

logger = logging.getLogger("mlo")

NESTING_WEIGHT = 2
"""The factor by which a nested level weighs the passes inside it, in ``estimate``."""


def updates_of(actions: Iterable[Any]) -> dict[str, int]:
    """Updates per level in a tick's schedule actions (``mlo.schedule.Action``)."""
    updates: dict[str, int] = {}
    for action in actions:
        if action.kind == "update":
            updates[action.problem] = updates.get(action.problem, 0) + 1
    return updates


class CostEstimate:
    """Autograd passes per update and per tick, exact (each level's Jacobian as
    configured) or partial (every level's partial Jacobian). Counted afresh on each call,
    so a level given another solver, or fallen back to its partial Jacobian, counts as it
    is now.

    Args:
        propagation: the engine's adjoint propagation (its plans give the solver calls).
        modes: which levels' Jacobians are total.
        memos: each level's ``Level.memo`` (the choices its solver made so far).
    """

    def __init__(
        self,
        propagation: AdjointPropagation,
        modes: JacobianModes,
        memos: Mapping[str, Mapping[Any, Any]],
    ) -> None:
        self.propagation, self.modes, self.memos = propagation, modes, memos
        self.problems = propagation.evaluator.problems

    def per_update(self, name: str, exact: bool) -> int:
        """Passes of one update of level ``name``: its gradient, and its propagation."""
        return 1 + self._below(name, exact, 1, {})

    def per_tick(self, updates: Mapping[str, int], exact: bool, weight: float = 1) -> float:
        """Passes of a tick whose updates per level are ``updates``; with ``weight``, the
        passes inside each nested level weighed by it (see ``estimate``)."""
        memo: dict[str, float] = {}
        below = self._below
        return sum(c * (1 + below(n, exact, weight, memo)) for n, c in updates.items())

    def estimate(self, updates: Mapping[str, int]) -> tuple[float, float]:
        """The time of a tick, exact and partial, in passes, each nested level weighing
        its inner passes by ``NESTING_WEIGHT``."""
        return (
            self.per_tick(updates, True, NESTING_WEIGHT),
            self.per_tick(updates, False),
        )

    def ratio(self, updates: Mapping[str, int]) -> float:
        """``estimate``'s exact over partial."""
        exact, partial = self.estimate(updates)
        return exact / partial if partial else 1.0

    def say_if_expensive(self, updates: Mapping[str, int], threshold: float = 10.0) -> str | None:
        """Warn when exactness is estimated to cost more than ``threshold`` times the
        partial Jacobian on a tick whose updates per level are ``updates`` (the engine
        calls it once, before its first tick): the figures and the switch. Returns the
        message, or ``None``."""
        nested = self.nested_levels()
        if not nested:
            return None
        exact, partial = self.estimate(updates)
        if exact <= threshold * partial:
            return None
        counted = self.per_tick(updates, True)
        message = (
            f"exact nested hypergradients cost at least {exact / partial:.0f}x the partial "
            f"Jacobian's time here ({counted:.0f} autograd passes per tick against "
            f"{partial:.0f}, and a pass inside a nested level differentiates a larger graph; "
            "engine.describe() itemises them). To keep exactness without nested solves, "
            "set ProblemConfig(jacobian='one_system') on those with cg or neumann whose "
            "lower levels form a chain; to trade exactness for speed, set "
            f"ProblemConfig(jacobian='partial') on {', '.join(repr(n) for n in nested)} "
            "(the approximation Betty makes)"
        )
        logger.warning(message)
        return message

    def nested_levels(self) -> list[str]:
        """The levels whose Jacobian is total (they have parents and read their own lower
        levels)."""
        parents = self.propagation.graph.parents
        return [n for n in self.problems if parents[n] and self.modes.nested(n)]

    def _call(self, lower: str, exact: bool, weight: float, memo: dict[str, float]) -> float:
        if lower not in memo:
            config = self.problems[lower].config
            nested = exact and self.modes.nested(lower)
            mode = self.propagation.hvp_modes.mode(lower)
            apart = nested or mode != "reverse"
            # The level's own choices (Level.memo), not this count's cache ``memo``.
            choices = self.memos.get(lower, {})
            passes = config.solver.products_on(config.unroll_steps, choices, apart)
            if mode == "recompute" and not nested and isinstance(config.solver, ImplicitSolver):
                # Each Hessian-vector product builds the gradient's graph again; the mixed
                # product is one forward-over-reverse pass unless forward mode failed.
                passes = 2 * (passes - 1) - (REVERSE_MIXED not in choices)
            if nested and config.jacobian == "one_system":
                # One MINRES solve per level of its chain, none nested in another's
                # products (each product is one backward pass, of a higher order).
                solves = 1 + len(self.propagation.graph.descendants(lower))
                passes = solves * (getattr(config.solver, "iterations", 10) + 2)
            elif nested:
                passes *= 1 + weight * self._below(lower, exact, weight, memo)
            memo[lower] = passes
        return memo[lower]

    def _below(self, name: str, exact: bool, weight: float, memo: dict[str, float]) -> float:
        steps = self.propagation.plan(name, [name]).steps
        return sum(self._call(lower, exact, weight, memo) for lower, _, _ in steps)
