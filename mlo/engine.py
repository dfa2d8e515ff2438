"""The engine: trains a graph of problems, each level through the levels below it.

A tick reads as a short story: the schedule says which levels update, in which order;
each update draws a batch, takes the level's total gradient (``mlo.hypergradient``),
has it checked (``mlo.durable.finite``), and lets the level's optimizer step (on
shards under ``mlo.parallel``). Around the ticks, ``Engine.run`` reports,
checkpoints and resumes (``mlo.durable``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .autodiff.trajectory import CURRENT_BATCH, Trajectory
from .config import EngineConfig
from .describe import describe
from .durable.checkpoint import read, save_atomic, seal
from .durable.finite import FiniteGuard, check_learning_rates
from .durable.rotation import CheckpointRotation
from .durable.state import engine_state, fingerprint, restore_engine_state
from .errors import UnknownProblemError
from .graph import LevelGraph
from .hypergradient.cost import updates_of
from .hypergradient.evaluator import Evaluator
from .hypergradient.total import Hypergradients
from .loggers import make_logger
from .monitor import MetricsWriter, RunMonitor, solver_warnings
from .observe import cuda_devices, observing
from .parallel.distributed import Reducer
from .parallel.sharding import Sharding
from .parameters import BufferGuard
from .preflight import preflight
from .problem import Problem
from .schedule import Schedule
from .wiring import (
    blind_loss,
    check_checkpoint_dir,
    check_inputs,
    check_levels,
    connect_peers,
    dependencies_by_name,
    detached_loss,
    refresh_parameter_slots,
    refuse_shared_parameters,
    warn_on_shared_generators,
)

logger = logging.getLogger("mlo")


class Engine:
    """Trains a graph of problems, each level through the levels below it.

    Args:
        problems: the levels, each a [`mlo.Problem`][mlo.Problem] with a unique name.
        dependencies: ``{upper: [lowers]}``, by name or by problem object. ``U → L`` means
            L's objective reads U's parameters, so L's solution is a function of them.
        config: engine options ([`mlo.EngineConfig`][mlo.EngineConfig]).
        resume: a checkpoint written by [`save`][mlo.Engine.save] (or ``run()``) to
            continue from.
    """

    def __init__(
        self,
        problems: Sequence[Problem],
        dependencies: Mapping[Any, Sequence[Any] | Any] | None = None,
        config: EngineConfig | None = None,
        resume: str | Path | None = None,
    ) -> None:
        problems = check_inputs(problems, config)
        self.config = config if config is not None else EngineConfig()
        deps = dependencies_by_name({} if dependencies is None else dependencies)
        self.graph = LevelGraph.from_dependencies([p.name for p in problems], deps)
        self.problems: dict[str, Problem] = {p.name: p for p in problems}
        connect_peers(self.problems)
        check_levels(self.problems)
        refresh_parameter_slots(self.problems)
        # The data-parallel reducer (it checks the process group); a level trained by its
        # optimizer is replicated on every rank, an explicit one holds its rank's solution.
        self.reducer = None if self.config.distributed == "none" else Reducer()
        # Fully sharded levels compute with their gathered parameters, so this comes
        # before anything reads a level's parameters.
        self.sharding = Sharding(self.problems) if self.config.distributed == "fsdp" else None
        refuse_shared_parameters(self.problems)
        folder = check_checkpoint_dir(self.config.checkpoint_dir)
        warn_on_shared_generators(self.problems)
        configs = {n: p.config for n, p in self.problems.items()}
        self.schedule = Schedule(
            self.graph,
            {n: c.unroll_steps for n, c in configs.items()},
            {n: c.warmup_steps for n, c in configs.items()},
            {n: c.reset_each_inner_loop for n, c in configs.items()},
        )
        self.trajectories: dict[str, Trajectory] = {
            n: Trajectory(c.unroll_steps)
            for n, c in configs.items()
            if c.solver.needs_trajectory and self.graph.parents[n]
        }
        self.tick = 0
        self.updates: dict[str, int] = dict.fromkeys(self.problems, 0)
        self.updating: str | None = None
        """The level being updated now (``None`` between updates): a progress display
        may read it from another thread."""
        replicated = {n: not (p.explicit and p.optimizer is None) for n, p in self.problems.items()}
        # Any objective may read any module, so re-evaluations guard all buffers.
        buffers = BufferGuard([p.module for p in problems])
        self.evaluator = Evaluator(self.problems, buffers, self.reducer, replicated, self._clock)
        self.guard = FiniteGuard(self.config, self.problems, self.graph, self.reducer, self._clock)
        self.hypergradients = Hypergradients(
            self.evaluator, self.graph, self.trajectories, self.guard.watch
        )
        lead = self.reducer is None or self.reducer.rank == 0
        self.rotation = CheckpointRotation(folder, self.config.keep_last, writer=lead)
        self._losses: dict[str, Tensor | None] = {}
        self._warned: set[str] = set()
        self._cost_said = False
        self._preflight_done = False
        if resume is not None:
            self.load(resume)

    def _clock(self) -> int:
        return self.tick

    @property
    def check_finite_every(self) -> int:
        """Ticks between finiteness checks; 1: before every optimizer step."""
        return self.guard.every

    @property
    def skipped(self) -> dict[str, int]:
        """Updates dropped per level for non-finite values (``on_nonfinite="skip"``)."""
        return self.guard.skipped

    # ------------------------------------------------------------------ a tick

    def step(self) -> None:
        """One engine tick: every top level updates once, its lower levels first."""
        # Solver diagnostics are computed on the ticks that are reported (and the first).
        done = self.tick + 1
        every, steps = self.config.log_every, self.config.steps
        self.hypergradients.diagnose = done == 1 or done % every == 0 or done == steps
        actions = self.schedule.tick()
        if not self._cost_said:  # said before the first tick, which may be the slow one
            self._cost_said = True
            self.hypergradients.cost.say_if_expensive(updates_of(actions))
        try:
            for action in actions:
                if action.kind == "reset":
                    self._reset(action.problem)
                else:
                    self.updating = action.problem
                    self._update(action.problem)
        finally:
            self.hypergradients.diagnose = True
            self.updating = None
        self.tick += 1
        if self.reducer is not None:
            self.evaluator.buffers.broadcast(self.reducer)
        if self.guard.every == 1 and self.config.on_nonfinite == "raise":
            # Checked before every optimizer step: the parameters this tick's last step
            # wrote are checked with the next update's values (or by run() at its end,
            # by save(), by the next tick), still blamed on this tick and this level.
            return
        if self.tick % self.guard.every == 0:
            self.guard.check()

    def _update(self, name: str) -> None:
        """One update of level ``name``: its total gradient, checked, then its step."""
        problem = self.problems[name]
        batch = self.evaluator.draw_batch(name)
        if problem.explicit and problem.optimizer is None:
            self._update_explicit(name)
            return
        loss = self.evaluator.objective(name, batch=batch)
        if not loss.requires_grad:
            raise detached_loss(name, problem)
        detached = loss.detach()
        self.guard.watch(name, "loss", [detached])
        grads = self.hypergradients.total_gradient(name, loss)
        if grads is None and self.hypergradients.reads_nothing(name):
            raise blind_loss(name, problem, self.graph.descendants(name))
        if grads is None:  # its lower levels' solvers pass nothing up (first_order)
            grads = [torch.zeros_like(p) for p in problem.params.tensors]
        params = problem.params.tensors
        for p, g in zip(params, grads):
            p.grad = g
        self.guard.watch(name, "gradient", grads)
        if problem.config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, problem.config.grad_clip)
        self._losses[name] = detached
        if self.guard.every == 1 and not self.guard.finite_or_skip(name):
            return
        trajectory = self.trajectories.get(name)
        if trajectory is not None:
            # A level sharing another's batch is replayed on the current shared batch, so
            # that it pairs with the sharing level's current state.
            shared = problem.config.batch_from is not None
            trajectory.record(problem.optimizer, params, CURRENT_BATCH if shared else batch)
        check_learning_rates(name, problem.optimizer, self.tick + 1)
        sharded = self.sharding is not None and name in self.sharding
        if sharded:  # the optimizer steps the shards, with their gradients' slices
            self.sharding.move_gradients(name)
        problem.optimizer.step()
        for p in params:  # the gradients the engine set (zero_grad's work, without its hooks)
            p.grad = None
        if sharded:
            self.sharding.gather(name)
        # Checked before any level reads them: a bad step is blamed on this level.
        self.guard.watch(name, "parameter after its optimizer step", params)
        if problem.scheduler is not None:
            problem.scheduler.step()
        self.updates[name] += 1

    def _update_explicit(self, name: str) -> None:
        """Set a level to its explicit best response (no gradient step)."""
        problem = self.problems[name]
        # No graph is needed for the values: a response that takes gradients inside (an
        # attack) re-enables them itself, and may skip building second-order graphs.
        with self.evaluator.buffers.preserved(), torch.no_grad():
            values = [v.detach() for v in self.evaluator.response(name)]
        self.guard.watch(name, "best response", values)
        if self.guard.every == 1 and not self.guard.finite_or_skip(name):
            return
        with torch.no_grad():
            for param, value in zip(problem.params.tensors, values):
                param.copy_(value)
        # Its objective is only reported, so it is evaluated when a report asks for it.
        self._losses[name] = None
        self.updates[name] += 1

    def _reset(self, name: str) -> None:
        self.problems[name].reset()
        if self.sharding is not None and name in self.sharding:
            self.sharding.write_shards(name)

    def hypergradient(self, name: str) -> dict[str, Tensor]:
        """The total derivative of ``name``'s objective w.r.t. its own parameters.

        Evaluated at the current parameters and at each level's current batch (the next
        batch for a level that has not drawn one yet). No parameter, buffer, optimizer
        state, data position or random-number state is changed.
        """
        if name not in self.problems:
            raise UnknownProblemError(
                f"unknown problem {name!r}; problems: {', '.join(self.problems)}"
            )
        problem = self.problems[name]
        devices = cuda_devices([problem.module])
        with torch.random.fork_rng(devices=devices), self.evaluator.buffers.preserved():
            loss = self.evaluator.objective(name)
            grads = self.hypergradients.total_gradient(name, loss)
        if grads is None:  # the loss depends on none of its parameters
            grads = [torch.zeros_like(p) for p in problem.params.tensors]
        return {n: g.detach() for n, g in zip(problem.params.names, grads)}

    # ------------------------------------------------------------------ a run

    def run(self) -> None:
        """Train until tick ``config.steps`` (a resumed engine continues where it stopped),
        with progress, metrics, checkpoints and solver warnings."""
        total = self.config.steps
        if self.config.preflight:
            self.preflight()
        lead = self.reducer is None or self.reducer.rank == 0  # the rank that reports
        monitor = RunMonitor(total, list(self.problems), self.config.progress and lead)
        metrics = make_logger(self.config.logger, log_dir=self.config.log_dir) if lead else None
        writer = MetricsWriter(self.config.metrics_path if lead else None, metrics)
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
                    self.rotation.write(self.tick, self.save)
            self.guard.check()
        finally:
            writer.close()
            monitor.close({"updates": ", ".join(f"{n} {c}" for n, c in self.updates.items())})

    def close(self) -> None:
        """Stop every level's data-loader workers now (``BatchStream.close``), instead of
        whenever the garbage collector reaches the engine; the engine steps no more.
        ``with mlo.Engine(...) as engine:`` closes it at the end of the block."""
        for problem in self.problems.values():
            problem.stream.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def preflight(self) -> None:
        """Evaluate every level's objective once on its current (or first) batch, changing
        nothing, so that a batch that does not fit a model fails before any training."""
        if not self._preflight_done:
            preflight(self.evaluator)
            self._preflight_done = True

    def report(self) -> dict[str, Any]:
        """The latest losses, solver diagnostics and update counts as plain numbers (one
        device synchronisation); logs each new solver warning once."""
        losses = self.losses()
        diagnostics = self.diagnostics()
        solver_warnings(self.problems, diagnostics, self.tick, self._warned)
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
                    value = self.evaluator.objective(name)
            values[name] = value.detach().reshape(())
        if self.reducer is not None and values:
            # Each rank's loss is on its own shard: report the global batch's.
            values = dict(zip(values, self.reducer.mean(list(values.values()))))
        return {name: float(value) for name, value in values.items()}

    def diagnostics(self) -> dict[str, dict[str, float]]:
        """Every level's solver diagnostics, as floats (synchronises), as of the latest
        computation that made them: [`hypergradient`][mlo.Engine.hypergradient], or a tick
        that [`run`][mlo.Engine.run] reports (the first, every ``log_every``-th and the
        last; other ticks skip the arithmetic that only diagnostics need)."""
        made = self.hypergradients.diagnostics
        return {n: {k: float(v) for k, v in d.items()} for n, d in made.items()}

    def observing(self):
        """A ``with`` block in which evaluating any level's module changes no state:
        buffers, random generators and training flags are restored on exit, and gradients
        are off (``mlo.observing``). Use it for every
        accuracy or metric computed between updates."""
        return observing([p.module for p in self.problems.values()], self.evaluator.buffers)

    def describe(self, ticks: int = 1) -> str:
        """Print and return the level graph, each level's solver, and the update order of
        the next ``ticks`` ticks (simulated; nothing is trained)."""
        modes = self.hypergradients.modes
        text = describe(
            self.graph,
            self.problems,
            self.schedule,
            self.tick,
            modes,
            self.hypergradients.hvp_modes,
            ticks,
            self.hypergradients.cost,
        )
        print(text)
        return text

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
        """Restore a [`state_dict`][mlo.Engine.state_dict]. All of it is validated before
        anything changes: a mismatch raises [`mlo.CheckpointError`][mlo.CheckpointError]
        naming every difference and leaves the engine as it was.

        Each optimizer's type and hyperparameters (learning rate, momentum, ...) must
        match the checkpoint's. To resume on purpose with the hyperparameters this engine's
        optimizers were built with (say, a lower learning rate), pass
        ``keep_current_hyperparameters=True``: optimizer states (momenta) are restored, the
        hyperparameters kept, and a scheduled rate continues from the new base rate."""
        restore_engine_state(self, state, keep_current_hyperparameters)

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write [`state_dict`][mlo.Engine.state_dict] (plus ``extra``) atomically to
        ``path``.

        The state is checked first: a pending non-finite loss or gradient, or a parameter
        or buffer that is not finite, raises [`mlo.NonFiniteError`][mlo.NonFiniteError]
        and nothing is written, so a checkpoint never holds a poisoned state."""
        self.guard.assert_finite_state()
        state = self.state_dict()
        if self.reducer is None:
            return save_atomic(seal({"engine": state, "extra": extra or {}}), path)
        # Data parallel: every rank calls save (the state gathers each rank's random
        # states and batches); rank 0 writes, and no rank goes on before the file exists.
        if self.reducer.rank == 0:
            save_atomic(seal({"engine": state, "extra": extra or {}}), path)
        self.reducer.barrier()
        return Path(path)

    def load(self, path: str | Path, keep_current_hyperparameters: bool = False) -> dict[str, Any]:
        """Restore from a file written by [`save`][mlo.Engine.save]; returns its ``extra``.

        The file's checksum is verified first (a corrupt file raises
        [`mlo.CheckpointError`][mlo.CheckpointError]), then
        [`load_state_dict`][mlo.Engine.load_state_dict] validates and applies it (see there
        for ``keep_current_hyperparameters``)."""
        device = next(iter(self.problems.values())).params.tensors[0].device
        saved = read(path, map_location=device)
        self.load_state_dict(saved["engine"], keep_current_hyperparameters)
        extra = saved.get("extra", {})
        return extra if isinstance(extra, dict) else {}
