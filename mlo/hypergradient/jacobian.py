"""Which best-response Jacobian a level gets: the total (nested) one of its total
gradient, or the partial one of ``f_D`` (DESIGN §2, "Nested levels")."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch

from ..autodiff import gradient_or_none
from ..errors import SetupError, first_line
from ..observe import cuda_devices
from .evaluator import Evaluator

logger = logging.getLogger("mlo")


class JacobianModes:
    """Decides, once per level, whether its Jacobian is built from its total gradient,
    and records a level that falls back to the partial one, with the reason.

    Args:
        evaluator: evaluates the levels' objectives.
        descendants: every level's descendants, parents first.
    """

    def __init__(self, evaluator: Evaluator, descendants: Mapping[str, Sequence[str]]) -> None:
        self.evaluator = evaluator
        self.descendants = descendants
        self.reads_below: dict[str, bool] = {}
        """Per level asked about: whether its objective reads one of its lower levels."""
        self.partial_because: dict[str, str] = {}
        """Levels that fell back to the partial Jacobian, with the short reason."""

    def nested(self, name: str) -> bool:
        """Whether level ``name``'s Jacobian is built from its total gradient: it reads
        one of its own lower levels (a structural fact of its objective, found once by
        differentiating it) and its configuration allows it (``jacobian``)."""
        if name not in self.reads_below:
            problem = self.evaluator.problems[name]
            below = list(self.descendants[name])
            solver = problem.config.solver
            if not below or not problem.config.uses_total() or solver.zero_jacobian:
                self.reads_below[name] = False
            else:
                problems = self.evaluator.problems
                tensors = [t for n in below for t in problems[n].params.tensors]
                devices = cuda_devices([problem.module])
                with torch.random.fork_rng(devices=devices), self.evaluator.buffers.preserved():
                    grads = gradient_or_none(self.evaluator.objective(name), tensors)
                self.reads_below[name] = any(g is not None for g in grads)
        return self.reads_below[name] and name not in self.partial_because

    def unavailable(self, name: str, error: BaseException) -> None:
        """Level ``name``'s total Jacobian failed in autograd (an operation without the
        third derivative it needs, such as batch norm's)."""
        self.fall_back(
            name,
            "its exact (total) Jacobian needs third derivatives through its lower levels, "
            f"which autograd could not take ({type(error).__name__}: {first_line(error)})",
            "total needs third derivatives that autograd lacks here",
            error,
        )

    def fall_back(
        self, name: str, why: str, short: str, error: BaseException | None = None
    ) -> None:
        """Level ``name`` reads its lower levels but cannot have its total Jacobian
        (``why``): with the default ``jacobian`` it uses the partial one from now on, with
        a warning (and ``describe()`` says ``short``); asked for explicitly, an error."""
        if self.evaluator.problems[name].config.jacobian == "total":
            raise SetupError(
                f"problem {name!r}: jacobian='total' is not available: {why}; use "
                "jacobian='partial' on it (the approximation Betty makes)"
            ) from error
        self.partial_because[name] = short
        logger.warning(
            "problem %r reads its lower levels, but %s; it uses the partial Jacobian from "
            "now on (set ProblemConfig(jacobian='partial') on it to say so and silence this)",
            name,
            why,
        )

    def describe(self, name: str, has_parents: bool) -> str:
        """How the level's best-response Jacobian treats its own lower levels, in words
        (said only of a level with parents and lower levels, where the choice matters)."""
        if not has_parents or not self.descendants[name]:
            return ""
        cfg = self.evaluator.problems[name].config
        if not cfg.uses_total():
            if cfg.jacobian == "partial":
                why = "as configured"
            elif cfg.solver.supports_total:
                why = f"{cfg.solver.name}'s default; jacobian='total' for the exact nested one"
            else:
                why = f"{cfg.solver.name} has no total"
            return f" jacobian=partial ({why})"
        if name in self.partial_because:
            return f" jacobian=partial ({self.partial_because[name]})"
        if self.nested(name) and cfg.jacobian == "one_system":
            return " jacobian=one_system (exact: one solve per level of its lower levels)"
        if self.nested(name):
            return " jacobian=total (it reads its lower levels)"
        return " jacobian=partial (it reads none of its lower levels: the same)"
