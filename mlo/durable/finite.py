"""The finiteness guard: no NaN or infinity reaches a parameter or a checkpoint unseen.

Losses, gradients, solver contributions and updated parameters are queued as they are
made (``FiniteGuard.watch``) and checked together, in one device synchronisation
(across ranks, one agreed flag): before every optimizer step on the CPU or when updates
may be skipped, else every ``log_every`` ticks. A failed check names the level, what was
not finite, and the step.
"""

from __future__ import annotations

import cmath
import logging
import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from ..config import EngineConfig
from ..errors import NonFiniteError
from ..graph import LevelGraph
from ..parallel.distributed import Reducer
from ..problem import Problem

logger = logging.getLogger("mlo")


class FiniteGuard:
    """Queues values for checking and checks them; in ``on_nonfinite="skip"`` mode it
    drops the update that made a non-finite value.

    Args:
        config: the engine's options (``check_finite_every``, ``on_nonfinite``, ...).
        problems: the levels by name.
        graph: the level graph (a bad hypergradient's message names the lower levels).
        reducer: the data-parallel reducer, or ``None`` on one process.
        clock: the number of ticks done (a value queued now belongs to the next one).
    """

    def __init__(
        self,
        config: EngineConfig,
        problems: Mapping[str, Problem],
        graph: LevelGraph,
        reducer: Reducer | None,
        clock: Callable[[], int],
    ) -> None:
        self.config, self.problems, self.graph = config, problems, graph
        self.reducer, self.clock = reducer, clock
        on_cpu = all(t.device.type == "cpu" for p in problems.values() for t in p.params.tensors)
        self.on_cpu = on_cpu  # the checks read CPU scalars one by one (free there)
        self.every = config.check_finite_every or (1 if on_cpu else config.log_every)
        """Ticks between checks; 1: before every optimizer step."""
        if config.on_nonfinite == "skip":
            self.every = 1  # an update can only be dropped before it is applied
        self.pending: list[tuple[int, str, str, list[Tensor]]] = []
        self.skipped: dict[str, int] = dict.fromkeys(problems, 0)
        """Updates dropped per level for non-finite values (``on_nonfinite="skip"``)."""
        self.consecutive: dict[str, int] = dict.fromkeys(problems, 0)

    def watch(self, name: str, what: str, tensors: Sequence[Tensor]) -> None:
        """Queue ``tensors`` for the next check, blamed on level ``name``. When every
        update is checked the tensors are kept as they are (checked moments later,
        before anything changes them); otherwise their norms are kept, a snapshot."""
        group = list(tensors) if self.every == 1 else [torch.stack(_norms(tensors))]
        self.pending.append((self.clock() + 1, name, what, group))

    def discard(self, name: str) -> None:
        """Drop the values queued for level ``name`` (one whose non-finite steps another
        mechanism handles: a loss scaler that skips them)."""
        self.pending = [entry for entry in self.pending if entry[1] != name]

    def finite_or_skip(self, name: str) -> bool:
        """Check the pending values; in skip mode drop a non-finite update (False)."""
        if self.config.on_nonfinite == "raise":
            self.check()
            return True
        try:
            self.check()
        except NonFiniteError as error:
            problem = self.problems[name]
            if problem.optimizer is not None:
                problem.optimizer.zero_grad(set_to_none=True)
            self.skipped[name] += 1
            self.consecutive[name] += 1
            logger.warning("skipped an update: %s", error)
            if self.consecutive[name] >= self.config.max_consecutive_skips:
                raise NonFiniteError(
                    f"problem {name!r}: {self.consecutive[name]} consecutive updates "
                    f"skipped for non-finite values (max_consecutive_skips="
                    f"{self.config.max_consecutive_skips}); the last: {error}"
                ) from None
            return False
        self.consecutive[name] = 0
        return True

    def check(self) -> None:
        """Raise [`mlo.NonFiniteError`][mlo.errors.NonFiniteError] naming the first
        non-finite pending value."""
        pending, self.pending = self.pending, []
        if not pending:
            return
        # One norm per tensor (non-finite when the tensor has a non-finite entry), then
        # one reduction and one synchronisation for all of them: on one process their sum
        # (a sum that overflows is looked into below, like a non-finite one); across
        # ranks a flag that every rank agrees on.
        tensors = [t for *_, group in pending for t in group]
        if self.reducer is None:
            total = _cpu_sum(tensors) if self.on_cpu else _sum_of(_norms(tensors))
            if cmath.isfinite(total):
                return
        elif bool(self.reducer.all_true(_all_finite(_norms(tensors)).reshape(1))[0]):
            return
        # The rare path: name the first non-finite value.
        culprits = [
            i
            for i, (*_, group) in enumerate(pending)
            if not all(bool(torch.isfinite(t).all()) for t in group)
        ]
        if not culprits:
            if self.reducer is None:
                return  # the norms' sum overflowed; every value is finite
            raise NonFiniteError(
                f"another data-parallel rank produced a non-finite value at step "
                f"{pending[0][0]}; its own error names the problem"
            )
        tick, name, what, group = pending[culprits[0]]
        flat = torch.cat([t.detach().reshape(-1) for t in group])
        bad = flat[~torch.isfinite(flat)][0].item()
        raise NonFiniteError(
            f"problem {name!r} produced a non-finite {what} ({bad}) at step {tick}. "
            f"Check its training_step and learning rate; "
            + (
                "the gradient includes the hypergradient from its lower levels' solvers "
                f"({', '.join(below)}), so check their settings too."
                if what == "gradient" and (below := self.graph.descendants(name))
                else "set ProblemConfig.grad_clip to bound the update."
            )
        )

    def assert_finite_state(self) -> None:
        """Raise unless every pending check passes and every parameter and floating
        buffer is finite (one device synchronisation): what a checkpoint may hold."""
        self.check()
        tensors = [  # (a fully sharded level's are its gathered parameters, as everywhere)
            (name, key, t)
            for name, p in self.problems.items()
            for key, t in [*p.module.named_parameters(), *p.module.named_buffers()]
            if t.is_floating_point() or t.is_complex()
        ]
        if not tensors or bool(_all_finite(_norms([t for *_, t in tensors]))):
            return
        name, key, _ = next(x for x in tensors if not bool(torch.isfinite(x[2]).all()))
        raise NonFiniteError(
            f"problem {name!r}: {key} is not finite at step {self.clock()}; no checkpoint "
            "was written, so the last one on disk is still finite. Check the level's "
            "training_step and learning rate, or set ProblemConfig.grad_clip."
        )


def check_learning_rates(name: str, optimizer: torch.optim.Optimizer, tick: int) -> None:
    """A learning rate that is a non-finite number raises before the step applies it
    (a host-side read: the rates are Python floats unless a tensor was given)."""
    for group in optimizer.param_groups:
        lr = group.get("lr")
        if isinstance(lr, float) and not math.isfinite(lr):
            raise NonFiniteError(
                f"problem {name!r}: its optimizer's learning rate is {lr} at step {tick}; "
                "check the lr given to the optimizer and its scheduler"
            )


def _cpu_sum(tensors: Sequence[Tensor]) -> complex:
    """The sum of every entry of these CPU tensors, as a Python float: finite exactly when
    every entry is finite, unless the sum overflows (a free read per tensor on the CPU);
    complex when a tensor is."""
    total: complex = 0.0
    for t in tensors:
        total += t.item() if t.dim() == 0 else t.detach().sum().item()
    return total


def _norms(tensors: Sequence[Tensor]) -> list[Tensor]:
    """Each tensor's norm, a 0-dim tensor that is finite exactly when the tensor is
    (unless it overflows)."""
    with torch.no_grad():
        return list(torch._foreach_norm(list(tensors)))


def _sum_of(norms: Sequence[Tensor]) -> float:
    """The sum of these 0-dim tensors as a Python float: one stack, one sum and one
    synchronisation per device."""
    return sum(float(torch.stack(group).sum()) for group in _by_device(norms))


def _all_finite(norms: Sequence[Tensor]) -> Tensor:
    """Whether every one of these 0-dim tensors (norms) is finite: one stack and one
    reduction per device (the common case is one device)."""
    flags = [torch.isfinite(torch.stack(group)).all() for group in _by_device(norms)]
    if len(flags) == 1:
        return flags[0]
    return torch.stack([f.cpu() for f in flags]).all()


def _by_device(tensors: Sequence[Tensor]) -> list[list[Tensor]]:
    """``tensors`` grouped by device, in order of first appearance."""
    groups: dict[torch.device, list[Tensor]] = {}
    for t in tensors:
        groups.setdefault(t.device, []).append(t)
    return list(groups.values())
