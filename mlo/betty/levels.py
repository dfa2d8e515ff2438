"""How a Betty program becomes mlo levels: each problem's mlo level, the Jacobian graph
read from Betty's ``u2l``/``l2u`` dependencies, and each level's solver."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor

from .. import solvers
from ..config import ProblemConfig
from ..errors import SetupError
from ..problem import Problem as Level
from .problems import IterativeProblem, Problem

TYPES = ("darts", "sama", "neumann", "cg")


class BettyBatches:
    """A problem's batches as its own ``get_batch()`` makes them, from the iterators its
    ``initialize()`` made, so that batch order and random state are Betty's."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem

    def __iter__(self) -> Iterator[Any]:
        while True:
            yield self.problem.get_batch()


class BettyLevel(Level):
    """The mlo level of a Betty problem: its module, optimizer and scheduler, its batches,
    and its ``training_step`` (under autocast for ``bf16``/``fp16``). The last call's
    statistics (the loss dict's other entries) are kept in ``stats``."""

    def __init__(self, problem: Problem, config: ProblemConfig) -> None:
        super().__init__(
            problem.name, problem.module, problem.optimizer, BettyBatches(problem), config
        )
        self.problem = problem
        self.stats: dict[str, Any] = {}
        # The engine placed the module before building its level: read its device once.
        device = next(iter(problem.module.parameters())).device.type
        self._autocast = (
            None if problem.dtype is None else {"device_type": device, "dtype": problem.dtype}
        )

    def training_step(self, batch: Any) -> Tensor:
        problem = self.problem
        with nullcontext() if self._autocast is None else torch.autocast(**self._autocast):
            out = problem.training_step(batch)
        if isinstance(out, dict):
            if "loss" not in out:
                raise SetupError(
                    f"Betty problem {self.name!r}: training_step returned a dict without a "
                    "'loss' entry; return the loss tensor or {'loss': loss, ...}"
                )
            self.stats = {k: v for k, v in out.items() if k != "loss"}
            out = out["loss"]
        else:
            self.stats = {}
        if isinstance(out, Tensor) and out.dtype in (torch.float16, torch.bfloat16):
            out = out.float()  # as autocast's own losses: reduce and scale in float32
        return out


def solver_of(name: str, config: Any) -> solvers.Solver:
    """The mlo solver for a Betty ``Config.type`` at Betty's step sizes."""
    kind = config.type
    if kind == "darts":
        return solvers.Darts(epsilon=config.darts_alpha, xi=1.0)
    if kind == "sama":
        radius = getattr(config, "sama_adam_alpha", None) or config.darts_alpha
        return solvers.Sama(epsilon=radius, xi=1.0)
    if kind == "neumann":
        return solvers.Neumann(iterations=config.neumann_iterations, alpha=config.neumann_alpha)
    if kind == "cg":
        return solvers.CG(iterations=config.cg_iterations)
    raise SetupError(
        f"Betty problem {name!r}: Config(type={kind!r}) has no mlo counterpart; mlo has "
        f"{', '.join(TYPES)} (and 'unroll' for an IterativeProblem)"
    )


def jacobian_graph(
    problems: Sequence[Problem], u2l: Mapping[Problem, Sequence[Problem]], paths: Mapping
) -> tuple[dict[str, list[str]], dict[str, set[str]]]:
    """mlo's ``{upper: [lowers]}`` graph for Betty's hypergradient paths, and for each
    level the path owners whose Jacobian products pass through it.

    Betty's upper level ``U`` with ``u2l`` edge ``U → L`` differentiates along every
    ``l2u`` path ``L = p_0 → p_1 → … → p_k = U``: the product of the Jacobians of
    ``p_0`` by ``U``, of ``p_1`` by ``p_0``, …, of ``p_{k-1}`` by ``p_{k-2}``, applied to
    ``∂f_U/∂θ_{p_{k-1}}``. In mlo's terms ``p_j`` is an upper of ``p_{j+1}`` (its
    solution is a function of ``p_j``), and ``U`` an upper of ``L``.
    """
    edges: dict[str, set[str]] = {p.name: set() for p in problems}
    owners: dict[str, set[str]] = {p.name: set() for p in problems}
    for upper, lowers in u2l.items():
        for lower in lowers:
            edges[upper.name].add(lower.name)
            for path in paths[(upper.name, lower.name)]:
                for j, node in enumerate(path[:-1]):
                    owners[node].add(upper.name)
                    if j + 1 < len(path) - 1:
                        edges[node].add(path[j + 1])
    return {u: sorted(ls) for u, ls in edges.items() if ls}, owners


def level_config(
    problem: Problem, owners: set[str], by_name: Mapping[str, Problem]
) -> ProblemConfig:
    """The mlo options of a Betty problem's level."""
    config = problem.config
    implicit = {o: bool(by_name[o].config.first_order) for o in sorted(owners)}
    if len(set(implicit.values())) > 1 and not isinstance(problem, IterativeProblem):
        raise SetupError(
            f"the upper levels that differentiate through Betty problem {problem.name!r} "
            f"disagree on first_order ({implicit}); mlo applies one solver per level, so set "
            "first_order the same on all of them"
        )
    if isinstance(problem, IterativeProblem) and owners:
        # Betty differentiates through an iterative problem's steps whatever its uppers'
        # first_order (its examples set first_order=False on them).
        solver: solvers.Solver = solvers.Unroll()
    elif not any(implicit.values()):
        solver = solvers.FirstOrder()
    else:
        solver = solver_of(problem.name, config)
    settings: dict[str, Any] = {"solver": solver, "unroll_steps": int(config.unroll_steps)}
    if config.jacobian is not None:
        settings["jacobian"] = config.jacobian
    return ProblemConfig(**settings)
