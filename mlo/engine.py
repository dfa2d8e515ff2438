"""The engine: runs the schedule and computes every update's gradient by adjoint propagation."""

from __future__ import annotations

import cmath
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .adjoint import propagate
from .autodiff import gradient, gradient_or_none
from .checkpoint import read, save_atomic, seal
from .config import EngineConfig
from .describe import describe
from .distributed import Reducer
from .errors import LevelError, MLOError, NonFiniteError, SetupError
from .graph import LevelGraph
from .linalg import Vector
from .monitor import MetricsWriter, RunMonitor
from .nested import TotalSecondOrder
from .observe import cuda_devices, observing
from .parameters import BufferGuard, ParameterSet
from .problem import Problem
from .schedule import Schedule
from .sharding import Sharding
from .solvers import Level
from .state import engine_state, fingerprint, restore_engine_state
from .trajectory import CURRENT_BATCH, Trajectory

logger = logging.getLogger("mlo")


class Engine:
    """Trains a graph of problems, each level through the levels below it.

    Args:
        problems: the levels, each a :class:`mlo.Problem` with a unique name.
        dependencies: ``{upper: [lowers]}``, by name or by problem object. ``U → L`` means
            L's objective reads U's parameters, so L's solution is a function of them.
        config: engine options (:class:`mlo.EngineConfig`).
        resume: a checkpoint written by :meth:`save` (or ``run()``) to continue from.
    """

    def __init__(
        self,
        problems: Sequence[Problem],
        dependencies: Mapping[Any, Sequence[Any] | Any] | None = None,
        config: EngineConfig | None = None,
        resume: str | Path | None = None,
    ) -> None:
        problems = list(problems)
        if not problems:
            raise SetupError("Engine needs at least one problem")
        for p in problems:
            if not isinstance(p, Problem):
                raise SetupError(f"problems must be mlo.Problem instances, got {type(p).__name__}")
        if config is not None and not isinstance(config, EngineConfig):
            raise SetupError("config must be a mlo.EngineConfig")
        self.config = config if config is not None else EngineConfig()
        names = [p.name for p in problems]
        deps = {} if dependencies is None else dependencies
        self.graph = LevelGraph.from_dependencies(names, _by_name(deps))
        self.problems: dict[str, Problem] = {p.name: p for p in problems}
        for p in problems:
            clash = [
                n for n in self.problems if n != p.name and (hasattr(type(p), n) or n in vars(p))
            ]
            if clash:
                raise SetupError(
                    f"problem name(s) {clash} clash with attributes of {type(p).__name__} "
                    f"(self.{clash[0]} would not reach the problem); rename the problem"
                )
            p._peers = {n: q for n, q in self.problems.items() if n != p.name}
        self._validate_levels()
        _refresh_parameter_slots(self.problems)
        self._reducer = self._data_parallel()  # (checks the process group, if any)
        # Fully sharded levels compute with their gathered parameters (mlo.sharding), so
        # this comes before anything reads a level's parameters.
        self._sharding = Sharding(self.problems) if self.config.distributed == "fsdp" else None
        _refuse_shared_parameters(self.problems)
        folder = self.config.checkpoint_dir
        if folder is not None and folder.exists() and not folder.is_dir():
            raise SetupError(
                f"checkpoint_dir {folder} is a file, not a folder; give a folder for "
                "step_<tick>.pt checkpoints"
            )
        _warn_on_shared_generators(self.problems)
        self.schedule = Schedule(
            self.graph,
            {n: p.config.unroll_steps for n, p in self.problems.items()},
            {n: p.config.warmup_steps for n, p in self.problems.items()},
            {n: p.config.reset_each_inner_loop for n, p in self.problems.items()},
        )
        self.trajectories: dict[str, Trajectory] = {
            n: Trajectory(p.config.unroll_steps)
            for n, p in self.problems.items()
            if p.config.solver.needs_trajectory and self.graph.parents[n]
        }
        self._descendants = {n: self.graph.descendants(n) for n in self.graph.names}
        self._reads_below: dict[str, bool] = {}  # see _nested
        self._partial_because: dict[str, str] = {}  # see _fall_back
        # Any objective may read any module, so re-evaluations guard all buffers.
        self._buffers = BufferGuard([p.module for p in problems])
        self.tick = 0
        self.updates: dict[str, int] = dict.fromkeys(self.problems, 0)
        self._losses: dict[str, Tensor | None] = {}
        self._diagnostics: dict[str, dict[str, Tensor]] = {}
        self._diagnose = True  # whether solvers compute diagnostics now (see step)
        self._pending_checks: list[tuple[int, str, str, list[Tensor]]] = []
        self._plans: dict[tuple, Any] = {}  # adjoint propagation plans (mlo.adjoint)
        self._values: dict[str, list[Tensor]] = {}  # parameters replaced (_replaced)
        self._warned: set[str] = set()
        on_cpu = all(t.device.type == "cpu" for p in problems for t in p.params.tensors)
        self._on_cpu = on_cpu  # the checks read CPU scalars one by one (free there)
        self.check_finite_every = self.config.check_finite_every or (
            1 if on_cpu else self.config.log_every
        )
        if self.config.on_nonfinite == "skip":
            self.check_finite_every = 1  # an update can only be dropped before it is applied
        self.skipped: dict[str, int] = dict.fromkeys(self.problems, 0)
        self._consecutive_skips: dict[str, int] = dict.fromkeys(self.problems, 0)
        self._preflight_done = False
        self._written: list[Path] = []
        if resume is not None:
            self.load(resume)

    def _sharding_of(self, name: str) -> Sharding | None:
        """The engine's :class:`mlo.sharding.Sharding` if level ``name`` is sharded."""
        sharding = self._sharding
        return sharding if sharding is not None and name in sharding else None

    def _data_parallel(self) -> Reducer | None:
        """The reducer of ``distributed="ddp"`` or ``"fsdp"`` (see :mod:`mlo.distributed`); a level
        trained by its optimizer is replicated on every rank, an explicit level (set by
        its best response) holds its own rank's solution."""
        self._replicated = {
            n: not (p.explicit and p.optimizer is None) for n, p in self.problems.items()
        }
        if self.config.distributed == "none":
            return None
        return Reducer()

    def _mean(self, name: str, vector: Vector) -> Vector:
        """``vector`` averaged over the data-parallel ranks if level ``name`` is
        replicated there; unchanged on one process."""
        if self._reducer is None or not self._replicated[name]:
            return vector
        return self._reducer.mean(vector)

    def _validate_levels(self) -> None:
        for name, p in self.problems.items():
            source = p.config.batch_from
            if source is not None:
                if source not in self.problems or source == name:
                    raise SetupError(
                        f"problem {name!r}: batch_from={source!r} must name another problem "
                        f"({', '.join(n for n in self.problems if n != name)})"
                    )
                if p.stream.data is not None:
                    raise SetupError(
                        f"problem {name!r} has its own data and batch_from={source!r}; pass "
                        "data=None to read the other problem's batches"
                    )
                if self.problems[source].config.batch_from is not None:
                    raise SetupError(
                        f"problem {name!r}: batch_from={source!r}, which itself reads its "
                        "batches from another problem; point at the problem that owns the data"
                    )
            if p.config.solver.needs_best_response and not p.explicit:
                raise SetupError(
                    f"problem {name!r} uses the {p.config.solver.name!r} solver but "
                    f"{type(p).__name__} does not implement best_response(batch)"
                )
            if p.optimizer is None and p.config.solver.needs_trajectory:
                raise SetupError(
                    f"problem {name!r} has no optimizer to replay; the 'unroll' solver needs one"
                )

    # ------------------------------------------------------------------ objectives

    def _current_batch(self, name: str) -> Any:
        """The batch a level is evaluated on: its own latest batch, the next one if it has
        not drawn any (without consuming it), or its ``batch_from`` problem's."""
        problem = self.problems[name]
        source = problem.config.batch_from
        if source is not None:
            return self._current_batch(source)
        return problem.batch if problem.has_batch else problem.stream.peek()

    def _draw_batch(self, name: str) -> Any:
        problem = self.problems[name]
        if problem.config.batch_from is not None:
            batch = self._current_batch(name)
        else:
            batch = problem.stream.next()
        problem.batch, problem.has_batch = batch, True
        return batch

    def _objective(
        self, name: str, params: Sequence[Tensor] | None = None, batch: Any = CURRENT_BATCH
    ):
        problem = self.problems[name]
        if batch is CURRENT_BATCH:
            batch = self._current_batch(name)
        context = problem.params.substitute(params) if params is not None else nullcontext()
        try:
            with context:
                loss = problem.training_step(batch)
        except MLOError:
            raise
        except (RuntimeError, IndexError, ValueError) as error:
            # Shape and label mistakes in the data surface here, deep in a model's code:
            # name the level, the step and the batch (the original stays chained).
            raise LevelError(
                f"problem {name!r}: {type(problem).__name__}.training_step failed at step "
                f"{self.tick + 1} on a batch that is {_describe_batch(batch)} "
                f"({type(error).__name__}: {_first_line(error)}); check that every batch of "
                "its data fits its model (shapes, label range)"
            ) from error
        if type(loss) is Tensor and loss.dim() == 0 and loss.dtype.is_floating_point:
            return loss  # the common case, checked in three cheap reads
        if not isinstance(loss, Tensor):
            raise SetupError(
                f"{type(problem).__name__}.training_step of problem {name!r} returned "
                f"{type(loss).__name__}; it must return a scalar torch.Tensor"
            )
        if loss.numel() != 1:
            raise SetupError(
                f"{type(problem).__name__}.training_step of problem {name!r} returned a tensor "
                f"of shape {tuple(loss.shape)}; it must return a scalar (reduce it, e.g. .mean())"
            )
        if not loss.is_floating_point():
            raise SetupError(
                f"{type(problem).__name__}.training_step of problem {name!r} returned a "
                f"{loss.dtype} tensor; it must return a real floating-point loss"
                + (" (take .real or .abs() of a complex one)" if loss.is_complex() else "")
            )
        return loss.reshape(())

    def _total_unavailable(self, name: str, error: BaseException) -> None:
        """Level ``name``'s total Jacobian failed in autograd (an operation without the
        third derivative it needs, such as batch norm's)."""
        self._fall_back(
            name,
            "its exact (total) Jacobian needs third derivatives through its lower levels, "
            f"which autograd could not take ({type(error).__name__}: {_first_line(error)})",
            "total needs third derivatives that autograd lacks here",
            error,
        )

    def _fall_back(
        self, name: str, why: str, short: str, error: BaseException | None = None
    ) -> None:
        """Level ``name`` reads its lower levels but cannot have its total Jacobian
        (``why``): with the default ``jacobian`` it uses the partial one from now on, with
        a warning (and ``describe()`` says ``short``); asked for explicitly, an error."""
        if self.problems[name].config.jacobian == "total":
            raise SetupError(
                f"problem {name!r}: jacobian='total' is not available: {why}; use "
                "jacobian='partial' on it (the approximation Betty makes)"
            ) from error
        self._partial_because[name] = short
        logger.warning(
            "problem %r reads its lower levels, but %s; it uses the partial Jacobian from "
            "now on (set ProblemConfig(jacobian='partial') on it to say so and silence this)",
            name,
            why,
        )

    def _level(self, name: str, parents: Sequence[str] = (), create_graph: bool = False) -> Level:
        """What level ``name``'s solver sees, for a product with ``parents``' parameters."""
        problem = self.problems[name]
        lr = None if problem.optimizer is None else float(problem.optimizer.param_groups[0]["lr"])
        nested = self._nested(name)
        return Level(
            name=name,
            params=list(self._values.get(name, problem.params.tensors)),
            objective=lambda params=None, batch=CURRENT_BATCH: self._objective(name, params, batch),
            learning_rate=lr,
            grad_clip=problem.config.grad_clip,
            trajectory=self.trajectories.get(name),
            response=(lambda: self._response(name)) if problem.explicit else None,
            average=(
                self._reducer.mean if self._reducer is not None and self._replicated[name] else None
            ),
            second_order=(
                (lambda: TotalSecondOrder(self, name, parents, create_graph)) if nested else None
            ),
            total=nested,
            total_gradient=(
                (lambda params, batch: self._total_gradient_at(name, params, batch))
                if nested
                else None
            ),
            create_graph=create_graph,
            diagnose=self._diagnose and not create_graph,
        )

    def _response(self, name: str) -> list[Tensor]:
        problem = self.problems[name]
        values = list(problem.best_response(self._current_batch(name)))
        if len(values) != len(problem.params):
            raise SetupError(
                f"{type(problem).__name__}.best_response of problem {name!r} returned "
                f"{len(values)} tensors for {len(problem.params)} parameters"
            )
        for value, param, pname in zip(values, problem.params.tensors, problem.params.names):
            if value.shape != param.shape:
                raise SetupError(
                    f"{type(problem).__name__}.best_response of problem {name!r}: {pname} has "
                    f"shape {tuple(param.shape)}, the response {tuple(value.shape)}"
                )
        return values

    # ------------------------------------------------------------------ adjoint propagation

    def _total_gradient(self, name: str, loss: Tensor) -> Vector:
        """``d f_P / d θ_P`` with every descendant at its best response (DESIGN §2), by
        adjoint propagation (:func:`mlo.adjoint.propagate`)."""
        problem = self.problems[name]
        if not self._descendants[name]:
            return self._mean(name, gradient(loss, problem.params.tensors))
        with self._buffers.preserved():
            own = propagate(self, loss, name, [name], watch=True)[name]
        if own is None:
            return [torch.zeros_like(p) for p in problem.params.tensors]
        return self._mean(name, own)

    def _total_gradient_at(self, name: str, params: Sequence[Tensor], batch: Any) -> Vector:
        """Level ``name``'s total gradient with its parameters replaced by ``params`` (its
        lower levels see them too), on ``batch``, differentiable in ``params`` and in
        every other level's parameters: a training step of a nested level, as ``unroll``
        replays it."""
        params = list(params)
        # D's lower levels compute with fresh aliases of their parameters: derivatives by
        # them are then those at this θ_D, not also through the history of θ_D (earlier
        # replayed steps, which read the same lower levels).
        values = {name: params}
        for lower in self._descendants[name]:
            values[lower] = [p.view_as(p) for p in self.problems[lower].params.tensors]
        with self._replaced(values), self._buffers.preserved():
            loss = self._objective(name, batch=batch)
            own = propagate(self, loss, name, [name], create_graph=True)
        if own[name] is None:
            return [torch.zeros_like(p) for p in params]
        return own[name]

    @contextmanager
    def _replaced(self, values: dict[str, list[Tensor]]) -> Iterator[None]:
        """Levels compute with ``values`` in place of their parameters, and the adjoint
        propagation and solvers differentiate by those, until the block ends."""
        previous = self._values
        with ExitStack() as stack:
            for level, tensors in values.items():
                stack.enter_context(self.problems[level].params.substitute(tensors))
            self._values = {**previous, **values}
            try:
                yield
            finally:
                self._values = previous

    def _nested(self, name: str) -> bool:
        """Whether level ``name``'s Jacobian is built from its total gradient: it reads
        one of its own lower levels (a structural fact of its objective, found once by
        differentiating it) and its configuration allows it (``jacobian``)."""
        if name not in self._reads_below:
            problem = self.problems[name]
            below = list(self._descendants[name])
            solver = problem.config.solver
            if not below or not problem.config.uses_total() or solver.zero_jacobian:
                self._reads_below[name] = False
            else:
                tensors = [t for n in below for t in self.problems[n].params.tensors]
                devices = cuda_devices([problem.module])
                with torch.random.fork_rng(devices=devices), self._buffers.preserved():
                    grads = gradient_or_none(self._objective(name), tensors)
                self._reads_below[name] = any(g is not None for g in grads)
        return self._reads_below[name] and name not in self._partial_because

    def hypergradient(self, name: str) -> dict[str, Tensor]:
        """The total derivative of ``name``'s objective w.r.t. its own parameters.

        Evaluated at the current parameters and at each level's current batch (the next
        batch for a level that has not drawn one yet). No parameter, buffer, optimizer
        state, data position or random-number state is changed.
        """
        if name not in self.problems:
            raise KeyError(f"unknown problem {name!r}; problems: {', '.join(self.problems)}")
        problem = self.problems[name]
        devices = cuda_devices([problem.module])
        with torch.random.fork_rng(devices=devices), self._buffers.preserved():
            loss = self._objective(name)
            grads = self._total_gradient(name, loss)
        return {n: g.detach() for n, g in zip(problem.params.names, grads)}

    # ------------------------------------------------------------------ training

    def _update(self, name: str) -> None:
        problem = self.problems[name]
        batch = self._draw_batch(name)
        if problem.explicit and problem.optimizer is None:
            self._update_explicit(name)
            return
        loss = self._objective(name, batch=batch)
        if not loss.requires_grad:
            raise SetupError(
                f"{type(problem).__name__}.training_step of problem {name!r} returned a loss "
                "that does not depend on its parameters (detached, built from .item() or "
                "numbers, or computed under torch.no_grad()), so the level would never "
                "train; return the loss tensor autograd built from the module's output"
            )
        detached = loss.detach()
        self._watch(name, "loss", [detached])
        grads = self._total_gradient(name, loss)
        params = problem.params.tensors
        for p, g in zip(params, grads):
            p.grad = g
        self._watch(name, "gradient", grads)
        if problem.config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, problem.config.grad_clip)
        self._losses[name] = detached
        if self.check_finite_every == 1 and not self._finite_or_skip(name):
            return
        trajectory = self.trajectories.get(name)
        if trajectory is not None:
            # A level sharing another's batch is replayed on the current shared batch, so
            # that it pairs with the sharing level's current state.
            shared = problem.config.batch_from is not None
            trajectory.record(problem.optimizer, params, CURRENT_BATCH if shared else batch)
        _check_learning_rates(name, problem.optimizer, self.tick + 1)
        sharding = self._sharding_of(name)
        if sharding is not None:  # the optimizer steps the shards, with their gradients' slices
            sharding.move_gradients(name)
        problem.optimizer.step()
        for p in params:  # the gradients the engine set (zero_grad's work, without its hooks)
            p.grad = None
        if sharding is not None:
            sharding.gather(name)
        # Checked before any level reads them: a bad step is blamed on this level.
        self._watch(name, "parameter after its optimizer step", params)
        if problem.scheduler is not None:
            problem.scheduler.step()
        self.updates[name] += 1

    def _update_explicit(self, name: str) -> None:
        """Set a level to its explicit best response (no gradient step)."""
        problem = self.problems[name]
        # No graph is needed for the values: a response that takes gradients inside (an
        # attack) re-enables them itself, and may skip building second-order graphs.
        with self._buffers.preserved(), torch.no_grad():
            values = [v.detach() for v in self._response(name)]
        self._watch(name, "best response", values)
        if self.check_finite_every == 1 and not self._finite_or_skip(name):
            return
        with torch.no_grad():
            for param, value in zip(problem.params.tensors, values):
                param.copy_(value)
        # Its objective is only reported, so it is evaluated when a report asks for it.
        self._losses[name] = None
        self.updates[name] += 1

    def _watch(self, name: str, what: str, tensors: Sequence[Tensor]) -> None:
        """Queue ``tensors`` for the next finiteness check, blamed on level ``name``. When
        every update is checked the tensors are kept as they are (checked moments later,
        before anything changes them); otherwise their norms are kept, a snapshot."""
        every = self.check_finite_every == 1  # checked moments later, or a snapshot now
        group = list(tensors) if every else [torch.stack(_norms(tensors))]
        self._pending_checks.append((self.tick + 1, name, what, group))

    def _finite_or_skip(self, name: str) -> bool:
        """Check the pending values; in skip mode drop a non-finite update (False)."""
        if self.config.on_nonfinite == "raise":
            self._check_finite()
            return True
        try:
            self._check_finite()
        except NonFiniteError as error:
            problem = self.problems[name]
            if problem.optimizer is not None:
                problem.optimizer.zero_grad(set_to_none=True)
            self.skipped[name] += 1
            self._consecutive_skips[name] += 1
            logger.warning("skipped an update: %s", error)
            if self._consecutive_skips[name] >= self.config.max_consecutive_skips:
                raise NonFiniteError(
                    f"problem {name!r}: {self._consecutive_skips[name]} consecutive updates "
                    f"skipped for non-finite values (max_consecutive_skips="
                    f"{self.config.max_consecutive_skips}); the last: {error}"
                ) from None
            return False
        self._consecutive_skips[name] = 0
        return True

    def _reset(self, name: str) -> None:
        self.problems[name].reset()
        sharding = self._sharding_of(name)
        if sharding is not None:
            sharding.write_shards(name)

    def _check_finite(self) -> None:
        pending, self._pending_checks = self._pending_checks, []
        if not pending:
            return
        # One norm per tensor (non-finite when the tensor has a non-finite entry), then
        # one reduction and one synchronisation for all of them: on one process their sum
        # (a sum that overflows is looked into below, like a non-finite one); across
        # ranks a flag that every rank agrees on.
        tensors = [t for *_, group in pending for t in group]
        if self._reducer is None:
            total = _cpu_sum(tensors) if self._on_cpu else _sum_of(_norms(tensors))
            if cmath.isfinite(total):
                return
        elif bool(self._reducer.all_true(_all_finite(_norms(tensors)).reshape(1))[0]):
            return
        # The rare path: name the first non-finite value.
        culprits = [
            i
            for i, (*_, group) in enumerate(pending)
            if not all(bool(torch.isfinite(t).all()) for t in group)
        ]
        if not culprits:
            if self._reducer is None:
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
                f"({', '.join(self._descendants[name])}), so check their settings too."
                if what == "gradient" and self._descendants[name]
                else "set ProblemConfig.grad_clip to bound the update."
            )
        )

    def step(self) -> None:
        """One engine tick: every top level updates once, its lower levels first."""
        # Solver diagnostics are computed on the ticks that are reported (and the first).
        done = self.tick + 1
        self._diagnose = done == 1 or done % self.config.log_every == 0 or done == self.config.steps
        try:
            for action in self.schedule.tick():
                if action.kind == "reset":
                    self._reset(action.problem)
                else:
                    self._update(action.problem)
        finally:
            self._diagnose = True
        self.tick += 1
        if self._reducer is not None:
            self._buffers.broadcast(self._reducer)
        if self.check_finite_every == 1 and self.config.on_nonfinite == "raise":
            # Checked before every optimizer step: the parameters this tick's last step
            # wrote are checked with the next update's values (or by run() at its end,
            # by save(), by the next tick), still blamed on this tick and this level.
            return
        if self.tick % self.check_finite_every == 0:
            self._check_finite()

    def run(self) -> None:
        """Train until tick ``config.steps`` (a resumed engine continues where it stopped),
        with progress, metrics, checkpoints and solver warnings."""
        total = self.config.steps
        if self.config.preflight:
            self.preflight()
        lead = self._reducer is None or self._reducer.rank == 0  # the rank that reports
        monitor = RunMonitor(total, list(self.problems), self.config.progress and lead)
        writer = MetricsWriter(self.config.metrics_path if lead else None)
        every = self.config.checkpoint_every
        try:
            while self.tick < total:
                self.step()
                done = self.tick
                if done % self.config.log_every == 0 or done == total:
                    record = self.report()
                    writer.write(record)
                    monitor.update(done, record["loss"])
                if every is not None and (done % every == 0 or done == total):
                    self._checkpoint()
            self._check_finite()
        finally:
            writer.close()
            monitor.close({"updates": ", ".join(f"{n} {c}" for n, c in self.updates.items())})

    def _checkpoint(self) -> Path:
        """Write ``step_<tick>.pt`` and remove this run's oldest beyond ``keep_last``.

        Only files this run wrote are rotated, in the order written: another run's
        checkpoints in the same folder are never deleted, whatever their names. The list
        is part of each checkpoint, so a resumed run goes on rotating the files written
        before it was stopped.
        """
        folder = Path(self.config.checkpoint_dir)
        path = folder / f"step_{self.tick:08d}.pt"
        before = self._written
        self._written = [p for p in self._written if p != path] + [path]
        try:
            self.save(path)
        except BaseException:
            self._written = before
            raise
        writer = self._reducer is None or self._reducer.rank == 0
        for old in self._written[: -self.config.keep_last] if writer else []:
            old.unlink(missing_ok=True)
        self._written = self._written[-self.config.keep_last :]
        return path

    def _assert_finite_state(self) -> None:
        """Raise unless every pending check passes and every parameter and floating
        buffer is finite (one device synchronisation): what a checkpoint may hold."""
        self._check_finite()
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
            f"problem {name!r}: {key} is not finite at step {self.tick}; no checkpoint was "
            "written, so the last one on disk is still finite. Check the level's training_step "
            "and learning rate, or set ProblemConfig.grad_clip."
        )

    def preflight(self) -> None:
        """Evaluate every level's objective once on its current (or first) batch, changing
        nothing, so that a batch that does not fit a model fails before any training."""
        if self._preflight_done:
            return
        devices = cuda_devices([p.module for p in self.problems.values()])
        for name in self.problems:
            try:
                with torch.random.fork_rng(devices=devices), self._buffers.preserved():
                    self._objective(name)
            except LevelError as error:
                cause = error.__cause__ or error
                raise LevelError(self._preflight_message(name, cause)) from cause
            except MLOError:
                raise
            except TypeError as error:
                raise SetupError(self._preflight_message(name, error)) from error
        self._preflight_done = True

    def _preflight_message(self, name: str, error: Exception) -> str:
        problem = self.problems[name]
        batch = self._current_batch(name)
        return (
            f"problem {name!r} fails on its first batch, before any training "
            f"({type(error).__name__}: {_first_line(error)}). The batch is "
            f"{_describe_batch(batch)}; check that the data fits "
            f"{type(problem.module).__name__} and {type(problem).__name__}.training_step"
        )

    def report(self) -> dict[str, Any]:
        """The latest losses, solver diagnostics and update counts as plain numbers (one
        device synchronisation); logs each new solver warning once."""
        losses = self.losses()
        diagnostics = {n: {k: float(v) for k, v in d.items()} for n, d in self._diagnostics.items()}
        for name, values in diagnostics.items():
            for message in self.problems[name].config.solver.warnings(values):
                key = f"{name}:{message.split('(')[0]}"
                if key not in self._warned:
                    self._warned.add(key)
                    logger.warning("level %r, step %d: %s", name, self.tick, message)
        return {
            "step": self.tick,
            "loss": {n: v if math.isfinite(v) else str(v) for n, v in losses.items()},
            "diagnostics": diagnostics,
            "updates": dict(self.updates),
        }

    def losses(self) -> dict[str, float]:
        """The latest loss of every level that has updated, as floats (synchronises).

        A level updated by its explicit best response reports its objective at the
        current state."""
        values = {}
        for name, value in self._losses.items():
            if value is None:
                with self.observing():
                    value = self._objective(name)
            values[name] = value.detach().reshape(())
        if self._reducer is not None and values:
            # Each rank's loss is on its own shard: report the global batch's.
            values = dict(zip(values, self._reducer.mean(list(values.values()))))
        return {name: float(value) for name, value in values.items()}

    def observing(self):
        """A ``with`` block in which evaluating any level's module changes no state:
        buffers, random generators and training flags are restored on exit, and gradients
        are off (:func:`mlo.observe.observing`). Use it for every accuracy or metric
        computed between updates."""
        return observing([p.module for p in self.problems.values()], self._buffers)

    # ------------------------------------------------------------------ checkpoints

    def fingerprint(self) -> dict[str, Any]:
        """What a checkpoint must match: the edges and every parameter's name and shape."""
        return fingerprint(self)

    def state_dict(self) -> dict[str, Any]:
        """Parameters, buffers, optimizer and scheduler states, data positions and current
        batches, random number generator states, unroll trajectories, the schedule and the
        tick."""
        return engine_state(self)

    def load_state_dict(
        self, state: dict[str, Any], keep_current_hyperparameters: bool = False
    ) -> None:
        """Restore a :meth:`state_dict`. All of it is validated before anything changes:
        a mismatch raises :class:`mlo.CheckpointError` naming every difference and leaves
        the engine as it was.

        Each optimizer's type and hyperparameters (learning rate, momentum, ...) must
        match the checkpoint's. To resume on purpose with the hyperparameters this engine's
        optimizers were built with (say, a lower learning rate), pass
        ``keep_current_hyperparameters=True``: optimizer states (momenta) are restored, the
        hyperparameters kept, and a scheduled rate continues from the new base rate."""
        restore_engine_state(self, state, keep_current_hyperparameters)

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write :meth:`state_dict` (plus ``extra``) atomically to ``path``.

        The state is checked first: a pending non-finite loss or gradient, or a parameter
        or buffer that is not finite, raises :class:`NonFiniteError` and nothing is
        written, so a checkpoint never holds a poisoned state."""
        self._assert_finite_state()
        state = self.state_dict()
        if self._reducer is None:
            return save_atomic(seal({"engine": state, "extra": extra or {}}), path)
        # Data parallel: every rank calls save (the state gathers each rank's random
        # states and batches); rank 0 writes, and no rank goes on before the file exists.
        if self._reducer.rank == 0:
            save_atomic(seal({"engine": state, "extra": extra or {}}), path)
        self._reducer.barrier()
        return Path(path)

    def load(self, path: str | Path, keep_current_hyperparameters: bool = False) -> dict[str, Any]:
        """Restore from a file written by :meth:`save`; returns its ``extra``.

        The file's checksum is verified first (a corrupt file raises
        :class:`mlo.CheckpointError`), then :meth:`load_state_dict` validates and applies
        it (see there for ``keep_current_hyperparameters``)."""
        device = next(iter(self.problems.values())).params.tensors[0].device
        saved = read(path, map_location=device)
        self.load_state_dict(saved["engine"], keep_current_hyperparameters)
        extra = saved.get("extra", {})
        return extra if isinstance(extra, dict) else {}

    def diagnostics(self) -> dict[str, dict[str, float]]:
        """Every level's solver diagnostics, as floats (synchronises), as of the latest
        computation that made them: :meth:`hypergradient`, or a tick that :meth:`run`
        reports (the first, every ``log_every``-th and the last; other ticks skip the
        arithmetic that only diagnostics need)."""
        return {n: {k: float(v) for k, v in d.items()} for n, d in self._diagnostics.items()}

    def describe(self, ticks: int = 1) -> str:
        """Print and return the level graph, each level's solver, and the update order of
        the next ``ticks`` ticks (simulated; nothing is trained)."""
        text = describe(self, ticks)
        print(text)
        return text


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


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "no message"


def _check_learning_rates(name: str, optimizer: torch.optim.Optimizer, tick: int) -> None:
    """A learning rate that is a non-finite number raises before the step applies it
    (a host-side read: the rates are Python floats unless a tensor was given)."""
    for group in optimizer.param_groups:
        lr = group.get("lr")
        if isinstance(lr, float) and not math.isfinite(lr):
            raise NonFiniteError(
                f"problem {name!r}: its optimizer's learning rate is {lr} at step {tick}; "
                "check the lr given to the optimizer and its scheduler"
            )


def _describe_batch(batch: Any) -> str:
    if isinstance(batch, Tensor):
        return f"a tensor of shape {tuple(batch.shape)} ({batch.dtype})"
    if isinstance(batch, (list, tuple)):
        return "(" + ", ".join(_describe_batch(b) for b in batch) + ")"
    if isinstance(batch, dict):
        return "{" + ", ".join(f"{k}: {_describe_batch(v)}" for k, v in batch.items()) + "}"
    return type(batch).__name__


def _warn_on_shared_generators(problems: Mapping[str, Problem]) -> None:
    """Two problems whose loaders shuffle with one ``torch.Generator`` cannot be resumed
    exactly (restoring one stream's shuffling moves the other's): say so once."""
    owners: dict[int, str] = {}
    for name, problem in problems.items():
        generator = getattr(problem.stream.data, "generator", None)
        if not isinstance(generator, torch.Generator):
            continue
        other = owners.setdefault(id(generator), name)
        if other != name:
            logger.warning(
                "problems %r and %r shuffle their data with the same torch.Generator; a "
                "resumed run will not draw the same batches. Give each DataLoader its own "
                "generator (torch.Generator().manual_seed(...)).",
                other,
                name,
            )


def _refresh_parameter_slots(problems: Mapping[str, Problem]) -> None:
    """Find each level's parameters in its module again: a module changed after its
    Problem was made (``mlo.convert_sync_batchnorm`` moves parameters into new batch-norm
    modules) must be evaluated at substituted values through the modules it has now. The
    parameters themselves must be the same ones (an optimizer holds them)."""
    for name, problem in problems.items():
        fresh = ParameterSet(problem.module)
        if [id(t) for t in fresh.tensors] != [id(t) for t in problem.params.tensors]:
            raise SetupError(
                f"problem {name!r}: its module's trainable parameters were replaced after "
                "the Problem was made, so its optimizer no longer holds them; make the "
                "Problem (and its optimizer) after changing the module"
            )
        problem.params = fresh


def _refuse_shared_parameters(problems: Mapping[str, Problem]) -> None:
    owner: dict[int, tuple[str, str]] = {}
    for name, problem in problems.items():
        for pname, tensor in zip(problem.params.names, problem.params.tensors):
            other = owner.setdefault(id(tensor), (name, pname))
            if other[0] != name:
                raise SetupError(
                    f"problems {other[0]!r} and {name!r} both train the parameter "
                    f"{other[1]!r} (they share a module); each level needs parameters of its "
                    "own. A level that only reads another's parameters reaches them as "
                    f"self.{other[0]}.module inside training_step"
                )


def _by_name(dependencies: Mapping[Any, Any]) -> dict[str, list[str]]:
    def name_of(x: Any) -> str:
        if isinstance(x, Problem):
            return x.name
        if isinstance(x, str):
            return x
        raise SetupError(
            f"dependencies must use problem names or Problem objects, got {type(x).__name__}"
        )

    if not isinstance(dependencies, Mapping):
        raise SetupError(
            f"dependencies must be a dict {{upper: [lowers]}}, got {type(dependencies).__name__}; "
            "e.g. {'outer': ['inner']} when inner's objective reads outer's parameters"
        )
    out: dict[str, list[str]] = {}
    for upper, lowers in dependencies.items():
        if isinstance(lowers, (str, Problem)):
            lowers = [lowers]
        elif not isinstance(lowers, (list, tuple, set, frozenset)):
            raise SetupError(
                f"dependencies[{upper!r}] must be a list of the lower problems (names or "
                f"Problem objects), got {type(lowers).__name__} {lowers!r:.40}"
            )
        out.setdefault(name_of(upper), []).extend(name_of(lo) for lo in lowers)
    return out
