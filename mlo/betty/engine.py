"""Betty 0.2's ``Engine``, run by mlo: Betty's schedule and update rules, mlo's
hypergradients.

The engine steps the program as Betty does. Each iteration steps every lowest problem
(a *leaf*: no ``l2u`` edge ends at it); a problem that has taken ``unroll_steps ×
gradient_accumulation`` steps since its inner loop began (past its warm-up) lets its
``l2u`` uppers step, and an upper steps once all its lower problems are ready. A step
draws the problem's batch from its own iterators, evaluates its ``training_step``, adds
the gradient of ``loss / gradient_accumulation`` — its *total* gradient through the
problems below it, from mlo's adjoint propagation and solvers — and every
``gradient_accumulation``-th step clips, lets the optimizer step and calls
``param_callback``. ``roll_back``, ``validation()``, ``global_step``, early stopping,
loggers, environments and ``train_step`` overrides behave as in Betty.

Where the arithmetic differs from Betty's, the page "Moving from Betty" says how: mlo's
``cg`` solves its system, and a middle level that reads its own lower levels gets the
exact nested Jacobian with ``cg`` and ``neumann`` (Betty's partial one with ``darts`` and
``sama``, mlo's default for them) unless its ``Config(jacobian=...)`` says otherwise.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ..config import EngineConfig as MloEngineConfig
from ..engine import Engine as MloEngine
from ..errors import SetupError
from ..loggers import make_logger
from .configs import Config, EngineConfig
from .levels import TYPES, BettyLevel, jacobian_graph, level_config
from .problems import IterativeProblem, Problem

logger = logging.getLogger("mlo.betty")

STRATEGIES = ("default", "cpu", "gpu", "distributed")


class Engine:
    """Betty's engine (Betty 0.2.1's constructor, attributes and methods).

    Args:
        problems: the program's [`Problem`][mlo.betty.problems.Problem]s.
        config: the [`EngineConfig`][mlo.betty.configs.EngineConfig].
        dependencies: ``{"u2l": {upper: [lowers]}, "l2u": {lower: [uppers]}}``: a ``u2l``
            edge says the lower problem's loss reads the upper's parameters, an ``l2u``
            edge that the upper's loss reads the lower's.
        env: an [`Env`][mlo.betty.envs.Env] the problems share.

    Raises:
        SetupError: a configuration value mlo cannot honour, a dependency on a problem
            that is not in ``problems``, or an upper level no ``l2u`` path reaches; the
            message names it. Nothing is trained or moved before the checks pass.
    """

    def __init__(
        self,
        problems: Sequence[Problem],
        config: EngineConfig | None = None,
        dependencies: Mapping[str, Mapping[Problem, Sequence[Problem]]] | None = None,
        env: Any = None,
    ) -> None:
        self.config = config if config is not None else EngineConfig()
        self.problems = list(problems)
        self.dependencies = dependencies if dependencies is not None else {"u2l": {}, "l2u": {}}
        self.env = env
        self.train_iters = 0
        self.valid_step = 0
        self.global_step = 0
        self.leaves: list[Problem] = []
        self.logger: Any = None
        self.device: Any = None
        self.mlo: MloEngine | None = None
        """The mlo engine that holds the levels and computes their hypergradients."""
        self._strategy = "default"
        self._backend = self.config.backend
        self._world_size = 1
        self._rank = 0
        self._local_rank = 0
        self._best: Any = None
        self._since_best = 0
        self.initialize()

    # ------------------------------------------------------------------ set-up

    def initialize(self) -> None:
        """Check the program, set up devices, problems and the mlo levels (called once, by
        the constructor)."""
        _check_engine_config(self.config)
        for problem in self.problems:
            _check_problem(problem)
        names = [p.name for p in self.problems]
        if len(set(names)) != len(names):
            raise SetupError(f"Betty problems must have distinct names; got {names}")
        u2l, l2u = self._edges()
        self.train_iters = int(self.config.train_iters)
        self.valid_step = int(self.config.valid_step)
        self._strategy = self.config.strategy
        self.parse_dependency(u2l, l2u)
        paths = {
            (upper.name, lower.name): self.find_paths(lower, upper, l2u)
            for upper, lowers in u2l.items()
            for lower in lowers
        }
        by_name = {p.name: p for p in self.problems}
        for (upper, _), found in paths.items():
            for path in found:  # Betty's form: the owner, the levels from the top down, the owner
                names = [upper, *reversed(path[:-1]), upper]
                by_name[upper]._paths.append([by_name[n] for n in names])
        self.configure_systems()
        _show_progress()
        self.logger = make_logger(
            self.config.logger_type, project="betty", fallback=True, name="mlo.betty"
        )
        for problem in self.problems:
            self.set_problem_attr(problem)
        if self.env is not None:
            self.env._strategy, self.env.device = self._strategy, self.device
            self.env._world_size, self.env._rank = self._world_size, self._rank
            self.env._local_rank = self._local_rank
            self.env.initialize()
        for problem in self.problems:
            if problem.device is None:
                problem.device = self.device
            problem._strategy, problem._world_size = self._strategy, self._world_size
            problem._rank, problem._local_rank = self._rank, self._local_rank
            problem._roll_back = bool(self.config.roll_back) and bool(problem.parents)
            problem.logger = self.logger
            problem.env = self.env
            problem.initialize()
            _rebuild_optimizer(problem)
            problem._engine = self
            problem.ready = [False] * len(problem.children)
            problem._inner_loop_start = True
            if problem.precision == "fp16":
                device = next(iter(problem.module.parameters())).device.type
                problem.scaler = torch.amp.GradScaler(
                    device,
                    init_scale=problem.config.initial_dynamic_scale,
                    growth_factor=problem.config.scale_factor,
                )
        graph, owners = jacobian_graph(self.problems, u2l, paths)
        levels = [BettyLevel(p, level_config(p, owners[p.name], by_name)) for p in self.problems]
        settings: dict[str, Any] = {"steps": self.train_iters, "progress": False}
        settings["preflight"] = False  # Betty evaluates nothing before the first step
        if self._strategy == "distributed":
            settings["distributed"] = "ddp"
        self.mlo = MloEngine(levels, graph, MloEngineConfig(**settings))
        self.mlo.hypergradients.diagnose = False
        self.mlo.evaluator.buffers.preserving = self.config.running_stats == "preserve"
        self._levels = {level.name: level for level in levels}
        if self.is_rank_zero():
            for problem in self.problems:
                logger.info(
                    "problem %r: uppers %s, lowers %s, paths %s",
                    problem.name,
                    [p.name for p in problem.parents],
                    [p.name for p in problem.children],
                    [[n.name for n in path] for path in problem.paths],
                )

    def _edges(self) -> tuple[dict[Problem, list[Problem]], dict[Problem, list[Problem]]]:
        deps = self.dependencies
        if not isinstance(deps, Mapping) or set(deps) - {"u2l", "l2u"}:
            raise SetupError(
                "dependencies must be {'u2l': {upper: [lowers]}, 'l2u': {lower: [uppers]}}"
            )
        known = {id(p) for p in self.problems}
        out = []
        for kind in ("u2l", "l2u"):
            edges = {}
            for key, values in (deps.get(kind) or {}).items():
                values = list(values) if isinstance(values, (list, tuple)) else [values]
                for p in [key, *values]:
                    if id(p) not in known:
                        raise SetupError(
                            f"dependencies[{kind!r}] names {getattr(p, 'name', p)!r}, which is "
                            "not one of the engine's problems; pass it in problems="
                        )
                edges[key] = values
            out.append(edges)
        return out[0], out[1]

    def parse_dependency(self, u2l: Mapping, l2u: Mapping) -> None:
        """Upper and lower problems from ``l2u``, and the leaves."""
        for problem in self.problems:
            problem._parents, problem._children, problem._paths = [], [], []
        for lower, uppers in l2u.items():
            for upper in uppers:
                if upper not in lower._parents:
                    lower._parents.append(upper)
                    upper._children.append(lower)
        self.leaves = []
        for problem in self.problems:
            problem._leaf = not problem._children
            if problem._leaf:
                self.leaves.append(problem)

    @staticmethod
    def find_paths(src: Problem, dst: Problem, l2u: Mapping) -> list[list[str]]:
        """Every ``l2u`` path from ``src`` up to ``dst``, as names from ``src``."""
        found: list[list[str]] = []

        def walk(node: Problem, path: list[Problem]) -> None:
            if node is dst and len(path) > 1:
                found.append([p.name for p in path])
                return
            for up in l2u.get(node, []):
                if up not in path:
                    walk(up, [*path, up])

        walk(src, [src])
        if not found:
            raise SetupError(
                f"u2l edge {dst.name!r} → {src.name!r}: no l2u path leads from {src.name!r} "
                f"up to {dst.name!r}, so {dst.name!r}'s loss never reads it; add "
                f"l2u={{{src.name}: [{dst.name}]}} (or the chain through the levels between)"
            )
        return found

    def configure_systems(self) -> None:
        """The device, and the process group for ``strategy="distributed"``."""
        strategy = self._strategy
        if strategy == "distributed":
            if not dist.is_initialized():
                dist.init_process_group(backend=self._backend)
            self._world_size, self._rank = dist.get_world_size(), dist.get_rank()
            if torch.cuda.is_available() and self._backend == "nccl":
                self._local_rank = int(os.environ.get("LOCAL_RANK", self._rank))
                torch.cuda.set_device(self._local_rank)
                self.device = torch.device("cuda", self._local_rank)
            else:
                self.device = torch.device("cpu")
        elif strategy == "cpu":
            self.device = torch.device("cpu")
        elif strategy == "gpu":
            self.device = torch.device("cuda")
        else:
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def set_problem_attr(self, problem: Problem) -> str:
        """Let the engine, the other problems and the environment reach ``problem`` by its
        name."""
        name = problem.name
        if name in vars(self) or hasattr(type(self), name):
            raise SetupError(f"problem name {name!r} is taken by an engine attribute; rename it")
        setattr(self, name, problem)
        for other in self.problems:
            if other is not problem:
                if name in vars(other) or hasattr(type(other), name):
                    raise SetupError(
                        f"problem name {name!r} is taken by an attribute of problem "
                        f"{other.name!r}; rename it"
                    )
                setattr(other, name, problem)
        if self.env is not None:
            setattr(self.env, name, problem)
        return name

    # ------------------------------------------------------------------ running

    def run(self) -> None:
        """``train_iters`` iterations, with ``validation()`` every ``valid_step``."""
        self.train()
        for it in range(1, self.train_iters + 1):
            self.global_step += 1
            self.mlo.tick = self.global_step - 1
            self.train_step()
            if self.valid_step > 0 and it % self.valid_step == 0 and self.do_validation():
                self.eval()
                stats = self.validation() or {}
                self.train()
                self.logger.info(f"[Validation] [Global Step {self.global_step}] {_text(stats)}")
                self.logger.log(stats, tag="validation", step=self.global_step)
                if self.config.early_stopping and self._stop(stats):
                    self.logger.info("Early stopping")
                    break
        self.mlo.guard.check()
        self.cleanup()
        if self.is_rank_zero():
            self.logger.info(f"Multilevel optimization finished: {self.global_step} iterations")

    def train_step(self) -> None:
        """One iteration: every leaf problem steps (and the uppers it makes ready)."""
        for leaf in self.leaves:
            leaf.step(global_step=self.global_step)

    def do_validation(self) -> bool:
        """Whether ``validation()`` runs: the engine defines it, on rank 0."""
        return self.is_implemented("validation") and self.is_rank_zero()

    def _stop(self, stats: Mapping[str, Any]) -> bool:
        metric = self.config.early_stopping_metric
        if metric not in stats:
            raise SetupError(
                f"early_stopping_metric={metric!r}, but validation() returned "
                f"{sorted(stats)}; return it, or name one of those"
            )
        value = float(stats[metric])
        better = self._best is None or (
            value < self._best if self.config.early_stopping_mode == "min" else value > self._best
        )
        if better:
            self._best, self._since_best = value, 0
        else:
            self._since_best += 1
        return self._since_best >= self.config.early_stopping_tolerance

    def train(self) -> None:
        """Every problem in training mode."""
        for problem in self.problems:
            problem.train()

    def eval(self) -> None:
        """Every problem in evaluation mode."""
        for problem in self.problems:
            problem.eval()

    def cleanup(self) -> None:
        """Close the logger; end the process group this engine started."""
        close = getattr(self.logger, "close", None)
        if callable(close):
            close()
        if self._strategy == "distributed" and dist.is_initialized():
            dist.destroy_process_group()

    def is_rank_zero(self) -> bool:
        """Whether this process is rank 0 (or the only one)."""
        return self._rank == 0

    def is_implemented(self, fn_name: str) -> bool:
        """Whether the engine has a method ``fn_name``."""
        return callable(getattr(self, fn_name, None))

    # ------------------------------------------------------------------ a problem's step

    def step_problem(self, problem: Problem, global_step: int | None) -> None:
        """Betty's ``Problem.step``: a step of ``problem`` and the uppers it makes ready;
        then, with ``roll_back``, the lower levels' return and re-step."""
        problem._global_step = global_step
        self._step_normal(problem, global_step)
        if self._boundary(problem):
            self._step_after_roll_back(problem)

    def _boundary(self, problem: Problem) -> bool:
        every = problem.config.unroll_steps * problem.gas
        return problem._count % every == 0 and problem._count > problem.warmup_steps

    def _step_normal(self, problem: Problem, global_step: int | None) -> None:
        if not all(problem.ready):
            return
        if problem._inner_loop_start:
            if problem.is_implemented("on_inner_loop_start"):
                problem.on_inner_loop_start()
            problem._inner_loop_start = False
            if problem._roll_back:
                problem.cache_states()
        if problem._training:
            problem._count += 1
        stats = self._descend(problem, draw=True)
        if problem.scheduler is not None and not problem._roll_back:
            problem.scheduler.step()
        if problem.log_step > 0 and problem._count % problem.log_step == 0 and self.is_rank_zero():
            self._log(problem, stats, global_step)
        if problem._training and self._boundary(problem):
            for upper in problem.parents:
                upper.ready[upper.children.index(problem)] = True
                self._step_normal(upper, global_step)
            problem._inner_loop_start = True
        problem.ready = [False] * len(problem.children)

    def _step_after_roll_back(self, problem: Problem) -> None:
        if not all(problem.ready) or not problem._training:
            return
        if problem._roll_back:
            problem.recover_states()
            self._descend(problem, draw=False)
            if problem.scheduler is not None:
                problem.scheduler.step()
            for upper in problem.parents:
                upper.ready[upper.children.index(problem)] = True
                self._step_after_roll_back(upper)
        problem.ready = [False] * len(problem.children)

    def _descend(self, problem: Problem, draw: bool) -> dict[str, Any]:
        """One (micro-)step: the batch, the loss, its total gradient added to ``.grad``,
        and on an accumulation boundary the optimizer step."""
        name, engine = problem.name, self.mlo
        level = self._levels[name]
        if draw:
            engine.evaluator.draw_batch(name)
            problem.cur_batch = level.batch
        loss = engine.evaluator.objective(name)
        stats = {"loss": loss.detach(), **level.stats}
        scaled = loss / problem.gas if problem.gas > 1 else loss
        if problem.scaler is not None:
            scaled = problem.scaler.scale(scaled)
        grads = engine.hypergradients.total_gradient(name, scaled) if loss.requires_grad else None
        params = level.params.tensors
        if grads is not None:
            for p, g in zip(params, grads):
                p.grad = g if p.grad is None else p.grad + g
        if problem.scaler is None:
            engine.guard.watch(name, "loss", [stats["loss"]])
            engine.guard.watch(name, "gradient", [p.grad for p in params if p.grad is not None])
        else:  # the scaler finds and skips non-finite steps itself
            engine.guard.discard(name)
        if problem.is_implemented("grad_callback"):
            problem.grad_callback()
        if problem._count % problem.gas == 0:
            self._optimizer_step(problem, level)
        return stats

    def _optimizer_step(self, problem: Problem, level: BettyLevel) -> None:
        params = level.params.tensors
        engine = self.mlo
        if problem.scaler is None:
            engine.guard.check()
        trajectory = engine.trajectories.get(problem.name)
        if trajectory is not None:
            trajectory.record(problem.optimizer, params, level.batch)
        clip = problem.gradient_clipping
        if problem.is_implemented("custom_optimizer_step"):
            if clip > 0:
                torch.nn.utils.clip_grad_norm_(params, clip)
            problem.custom_optimizer_step()
        elif problem.scaler is not None:
            problem.scaler.unscale_(problem.optimizer)
            if clip > 0:
                torch.nn.utils.clip_grad_norm_(params, clip)
            problem.scaler.step(problem.optimizer)
            problem.scaler.update()
        else:
            if clip > 0:
                torch.nn.utils.clip_grad_norm_(params, clip)
            problem.optimizer.step()
        if problem.is_implemented("param_callback"):
            problem.param_callback()
        for p in params:
            p.grad = None
        engine.updates[problem.name] += 1

    def _log(self, problem: Problem, stats: dict[str, Any], global_step: int | None) -> None:
        values = {
            k: float(v.detach()) if isinstance(v, Tensor) and v.numel() == 1 else v
            for k, v in stats.items()
        }
        self.logger.info(
            f'[Problem "{problem.name}"] [Global Step {global_step}] '
            f"[Local Step {problem._count}] {_text(values)}"
        )
        problem.log(values, global_step)


# ---------------------------------------------------------------------------- checks


def _check_engine_config(config: Any) -> None:
    if not isinstance(config, EngineConfig):
        raise SetupError(
            f"config must be a mlo.betty.configs.EngineConfig, got {type(config).__name__}"
        )
    if config.strategy not in STRATEGIES:
        raise SetupError(
            f"EngineConfig(strategy={config.strategy!r}) is not supported; mlo runs "
            f"{', '.join(STRATEGIES)} ('distributed' is mlo's data parallelism under torchrun)"
        )
    if config.logger_type not in ("none", "tensorboard", "wandb"):
        raise SetupError(
            f"EngineConfig(logger_type={config.logger_type!r}): use 'none', 'tensorboard' "
            "or 'wandb'"
        )
    if config.early_stopping_mode not in ("min", "max"):
        raise SetupError(
            f"EngineConfig(early_stopping_mode={config.early_stopping_mode!r}): use 'min' or 'max'"
        )
    if config.running_stats not in ("update", "preserve"):
        raise SetupError(
            f"EngineConfig(running_stats={config.running_stats!r}): use 'update' (Betty's) "
            "or 'preserve' (mlo's)"
        )
    if int(config.train_iters) < 0:
        raise SetupError(f"EngineConfig(train_iters={config.train_iters}) must be at least 0")


def _check_problem(problem: Any) -> None:
    if not isinstance(problem, Problem):
        raise SetupError(
            f"{type(problem).__name__} is not a mlo.betty problem; subclass "
            "mlo.betty.problems.ImplicitProblem (import it where the program imported "
            "betty.problems)"
        )
    config = problem.config
    name = problem.name
    if not isinstance(config, Config):
        raise SetupError(f"Betty problem {name!r}: config must be a mlo.betty.configs.Config")
    if not isinstance(problem, IterativeProblem) and config.type not in TYPES:
        raise SetupError(
            f"Betty problem {name!r}: Config(type={config.type!r}) is not supported; use one "
            f"of {', '.join(TYPES)}"
            + (" (REINFORCE estimates a different gradient)" if config.type == "reinforce" else "")
        )
    if config.precision not in ("fp32", "bf16", "fp16"):
        raise SetupError(
            f"Betty problem {name!r}: Config(precision={config.precision!r}); use 'fp32', "
            "'bf16' or 'fp16'"
        )
    for field in ("unroll_steps", "gradient_accumulation"):
        value = getattr(config, field)
        if not isinstance(value, int) or value < 1:
            raise SetupError(f"Betty problem {name!r}: Config({field}={value!r}) must be an int ≥1")
    if isinstance(problem, IterativeProblem) and config.gradient_accumulation != 1:
        raise SetupError(
            f"Betty problem {name!r}: an IterativeProblem replays its optimizer steps, one "
            "batch each; gradient_accumulation must be 1 for it"
        )
    if config.jacobian not in (None, "total", "partial"):
        raise SetupError(
            f"Betty problem {name!r}: Config(jacobian={config.jacobian!r}); use 'total', "
            "'partial' or None"
        )


def _rebuild_optimizer(problem: Problem) -> None:
    """A problem with a ``param_groups()`` method trains those groups (Betty rebuilds its
    optimizer from them, with the optimizer's defaults)."""
    if problem.optimizer is None:
        raise SetupError(
            f"Betty problem {problem.name!r} has no optimizer: give it optimizer= or a "
            "configure_optimizer() method"
        )
    if not problem.is_implemented("param_groups"):
        return
    old = problem.optimizer
    problem.optimizer = type(old)(problem.param_groups(), **old.defaults)
    if problem.scheduler is not None:
        if getattr(problem.scheduler, "optimizer", None) is old and problem.is_implemented(
            "configure_scheduler"
        ):
            problem.scheduler = problem.configure_scheduler()
        else:
            raise SetupError(
                f"Betty problem {problem.name!r}: its scheduler was built on the optimizer "
                "that param_groups() replaces; build it in configure_scheduler() instead"
            )


def _show_progress() -> None:
    """Betty prints its progress at INFO; so does mlo.betty, unless the program set up
    logging for it."""
    log = logging.getLogger("mlo.betty")
    if not log.handlers and log.level == logging.NOTSET:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def _text(stats: Mapping[str, Any]) -> str:
    return " || ".join(f"{k}: {v}" for k, v in stats.items())
