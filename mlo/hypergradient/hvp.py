"""How each level's second-order products are taken: ``ProblemConfig(hvp=...)``, with
``"auto"`` resolved level by level.

Reverse mode (``SecondOrder``: one gradient graph, differentiated again for every
product) is the faster; reverse mode with the graph built again for each product
(``mlo.autodiff.recompute``) and forward-over-reverse (``mlo.autodiff.forward``) hold
about two thirds of its peak, and the first takes less time than the second and needs no
forward-mode rules (docs/benchmarks.md, memory). ``"auto"`` takes reverse mode, and when
a level's products run out of memory it takes that solve again with the graph built for
each product and keeps that for the level from then on, with a warning; ``describe()``
says which mode each level uses and why.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

from torch import Tensor

from ..autodiff.linalg import Vector
from ..autodiff.recompute import REVERSE_MIXED
from ..durable import rng
from ..errors import OutOfMemoryError, first_line, is_out_of_memory
from ..solvers import Level, Solver, SolverResult
from .evaluator import Evaluator

logger = logging.getLogger("mlo")


class HvpModes:
    """Which products each level's solver gets (``Level.hvp``).

    Args:
        evaluator: the levels (their ``ProblemConfig(hvp=...)``) and the data-parallel
            reducer (on several ranks a switch is not made: see ``vjp``).
        memos: each level's ``Level.memo``, where recompute's products record that the
            mixed products fell back to reverse mode.
    """

    def __init__(self, evaluator: Evaluator, memos: dict[str, dict]) -> None:
        self.evaluator = evaluator
        self.memos = memos
        self.switched: dict[str, str] = {}
        """The levels ``"auto"`` moved to ``"recompute"``, and the error that moved them."""

    def mode(self, name: str) -> str:
        """Level ``name``'s products: its configured mode, ``"auto"`` resolved."""
        chosen = self.evaluator.problems[name].config.hvp
        if chosen != "auto":
            return chosen
        return "recompute" if name in self.switched else "reverse"

    def vjp(
        self, solver: Solver, level: Level, v: Vector, parents: Sequence[Sequence[Tensor]]
    ) -> SolverResult:
        """``solver.vjp(level, v, parents)``. If its products run out of memory in reverse
        mode under ``"auto"``, the same solve again from the same random state with the
        gradient's graph built for each product (``"recompute"``), which the level keeps
        from then on. On several data-parallel ranks the error stands: one rank starting
        its solve again would pair its collective calls with another rank's later ones."""
        name = level.name
        switchable = (
            solver.recompute_when_out_of_memory
            and level.hvp == "reverse"
            and self.evaluator.problems[name].config.hvp == "auto"
            and level.hvp_applies
            and self.evaluator.reducer is None
        )
        if not switchable:
            return solver.vjp(level, v, parents)
        before = rng.capture()
        try:
            return solver.vjp(level, v, parents)
        except (RuntimeError, MemoryError) as error:
            if not is_out_of_memory(error):
                raise
            why = first_line(error)
        # Out of the handler: the failed attempt's tensors are free before the retry.
        rng.restore(before)
        self.switched[name] = why
        logger.warning(
            "problem %r: its second-order products ran out of memory in reverse mode (%s); "
            "it builds the gradient's graph again for each product from now on, which "
            "holds about two thirds of the memory and takes longer (1.25x to 1.4x a tick "
            "on the DARTS supernet; set ProblemConfig(hvp='recompute') on it to say so and "
            "silence this)",
            name,
            why,
        )
        try:
            return solver.vjp(dataclasses.replace(level, hvp="recompute"), v, parents)
        except (RuntimeError, MemoryError) as error:
            if not is_out_of_memory(error):
                raise
            failure = error
        raise OutOfMemoryError(
            f"problem {name!r}: its second-order products ran out of memory in reverse "
            f"mode ({why}), and again with the gradient's graph built for each product, "
            f"which holds less ({first_line(failure)}). Use smaller batches or a smaller "
            "model, or ProblemConfig(hvp='finite_difference') (the memory of a training "
            "step, not exact)"
        ) from failure

    def describe(self, name: str) -> str:
        """The level's products, in words, for ``describe()`` (nothing for a solver that
        takes none, or that ``"auto"`` leaves in reverse mode)."""
        config = self.evaluator.problems[name].config
        chosen, solver = config.hvp, config.solver
        if not solver.takes_products or (
            chosen == "auto" and not solver.recompute_when_out_of_memory
        ):
            return ""
        if chosen == "auto" and name in self.switched:
            return " hvp=auto(recompute, since reverse ran out of memory)" + self._mixed(name)
        if chosen == "auto":
            return " hvp=auto(reverse)"
        if chosen == "finite_difference":
            return f" hvp=finite_difference(r={config.hvp_radius:g})"
        return f" hvp={chosen}" + (self._mixed(name) if chosen == "recompute" else "")

    def _mixed(self, name: str) -> str:
        """How recompute takes the level's mixed products (``mlo.autodiff.recompute``)."""
        why = self.memos.get(name, {}).get(REVERSE_MIXED)
        if why is None:
            return " mixed=forward-over-reverse"
        return f" mixed=reverse (forward mode failed: {why})"
