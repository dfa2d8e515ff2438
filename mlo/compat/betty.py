"""Run an unchanged Betty program on mlo's engine: ``mlo.from_betty(engine).run()``.

`Betty <https://github.com/leopard-ai/betty>`_ (``betty-ml``) programs declare their levels
as ``ImplicitProblem`` subclasses with a ``training_step``, a ``Config`` each, an
``EngineConfig`` and ``u2l``/``l2u`` dependencies. ``from_betty`` takes the constructed
``betty.engine.Engine`` and returns an [`mlo.Engine`][mlo.Engine] that trains the *same* modules
with the same optimizers, schedulers and data. Nothing is copied: each mlo level holds the
Betty problem's own module, and the Betty ``training_step`` runs unchanged, so that
``self.inner.module``, ``self.outer`` and calling a problem as a function keep working.

What maps to what:

- ``u2l`` edges and reversed ``l2u`` edges form mlo's ``{upper: [lowers]}`` graph.
- A lower level's ``Config.type`` becomes its solver: ``darts`` →
  ``mlo.solvers.Darts`` (``epsilon=darts_alpha``, ``xi=1``, Betty's scale), ``sama``
  (Betty 0.2) → ``mlo.solvers.Sama`` (``epsilon=sama_adam_alpha``, ``xi=1``; mlo's
  reading of the paper's preconditioner, not compared with Betty 0.2, which is not
  installable),
  ``neumann`` → ``mlo.solvers.Neumann`` (``iterations=neumann_iterations``,
  ``alpha=neumann_alpha``), ``cg`` → ``mlo.solvers.CG``
  (``iterations=cg_iterations``; a correct conjugate-gradient solve, where Betty 0.1.1's
  is not). A level whose upper levels all set ``first_order=False`` (Betty then adds no
  implicit term) gets ``mlo.solvers.FirstOrder``.
- ``unroll_steps``, ``warmup_steps`` (Betty's first upper update comes at the first
  multiple of ``unroll_steps`` past the warm-up) and ``gradient_clipping`` map to
  [`mlo.ProblemConfig`][mlo.ProblemConfig]; an ``on_inner_loop_start`` hook runs where mlo resets a
  level (``reset_each_inner_loop``); ``on_epoch_end`` runs when a level's first loader
  ends; a custom ``get_batch`` is the level's data.
- ``EngineConfig.train_iters`` counts updates of the lowest levels; mlo counts ticks
  (updates of the top level), so ``steps`` is the number of top-level updates Betty
  would make in ``train_iters`` iterations. An engine's ``validation()`` runs every
  ``valid_step`` lowest-level updates, in eval mode, as in Betty.

What has no counterpart raises [`mlo.SetupError`][mlo.errors.SetupError] naming it: the
``reinforce`` type,
``IterativeProblem`` levels, ``fp16``, ``gradient_accumulation``, the
``custom_optimizer_step`` and ``param_callback`` hooks, ``roll_back``, Betty's own
``distributed`` flag (use mlo's ``distributed="ddp"`` under torchrun), early stopping,
environments, and engine subclasses that override ``train_step`` or ``run``.

Where the results differ from Betty's (see the docs page "Moving from Betty"): mlo's CG
solves the linear system (Betty's updates the search direction with the old residual), its
finite differences leave the lower level's parameters where they were (Betty 0.1.1's
darts leaves them moved by ``darts_alpha``), a middle level that reads its own lower
levels gets the exact nested Jacobian with ``cg`` and ``neumann`` (``jacobian="total"``,
their default; Betty's is the partial one, which is also mlo's default with ``darts``),
and hypergradients are propagated over edges rather than enumerated over paths.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from torch import Tensor

from .. import solvers
from ..betty.levels import solver_of
from ..config import EngineConfig, ProblemConfig
from ..engine import Engine
from ..errors import SetupError
from ..problem import Problem

logger = logging.getLogger(__name__)

__all__ = ["BettyLevel", "BettyProgram", "from_betty"]


def _betty() -> Any:
    try:
        import betty.engine
        import betty.problems
    except ImportError as error:
        raise SetupError(
            "mlo.from_betty needs betty-ml, which is not installed: "
            'pip install "mlo[betty]" (or pip install betty-ml)'
        ) from error
    return betty


class BettyLevel(Problem):
    """An mlo level that runs a Betty problem's own ``training_step``.

    ``betty`` is the Betty problem; its module, optimizer and scheduler are this level's
    (the same objects, not copies). The batch is Betty's: a tuple of the loader's items
    moved to the problem's device (a tuple of such batches with several loaders).
    """

    def __init__(self, betty: Any, config: ProblemConfig) -> None:
        super().__init__(
            betty.name,
            betty.module,
            betty.optimizer,
            data=_BettyBatches(betty),
            config=config,
            scheduler=betty.scheduler,
        )
        self.betty = betty

    def training_step(self, batch: Any) -> Tensor:
        """Betty's ``training_step`` on ``batch``; a returned dict gives its ``"loss"``."""
        self.betty.cur_batch = batch
        out = self.betty.training_step(batch)
        if isinstance(out, dict):
            if "loss" not in out:
                raise SetupError(
                    f"Betty problem {self.name!r}: training_step returned a dict without a "
                    "'loss' entry; return the loss tensor or {'loss': loss, ...}"
                )
            out = out["loss"]
        return out

    def reset(self) -> None:
        """Betty's ``on_inner_loop_start`` hook (mlo calls it before each inner loop)."""
        self.betty.on_inner_loop_start()


class BettyProgram(Engine):
    """The [`mlo.Engine`][mlo.Engine] that ``from_betty`` returns: mlo's engine, plus the
    Betty engine's ``validation()`` every ``valid_step`` lowest-level updates.

    ``validations`` lists ``(tick, stats)`` for each validation run.
    """

    def __init__(
        self,
        problems: list[BettyLevel],
        dependencies: dict[str, list[str]],
        config: EngineConfig,
        betty_engine: Any,
        leaf: str,
    ) -> None:
        super().__init__(problems, dependencies, config)
        self.betty_engine = betty_engine
        self.validations: list[tuple[int, dict[str, Any]]] = []
        self._leaf = leaf
        self._valid_step = int(betty_engine.config.valid_step)
        self._validates = callable(getattr(betty_engine, "validation", None))

    def step(self) -> None:
        """One mlo tick; then Betty's ``validation()`` when the lowest level's updates
        passed a multiple of ``valid_step``."""
        before = self.updates[self._leaf]
        super().step()
        # Betty's iteration count, read by programs (a validation's file names).
        self.betty_engine.global_step = self.updates[self._leaf]
        if not self._validates or self._valid_step <= 0:
            return
        if self.updates[self._leaf] // self._valid_step > before // self._valid_step:
            self.validate()

    def validate(self) -> dict[str, Any]:
        """Run the Betty engine's ``validation()`` with every level in eval mode, as Betty
        does, and record and log its statistics."""
        self.betty_engine.eval()
        try:
            stats = self.betty_engine.validation() or {}
        finally:
            self.betty_engine.train()
        self.validations.append((self.tick, stats))
        logger.info("[validation] tick %d: %s", self.tick, stats)
        return stats


def from_betty(betty_engine: Any, **overrides: Any) -> BettyProgram:
    """An mlo engine for a constructed Betty engine (betty-ml 0.1.1), training the same
    modules with the same data; ``from_betty(engine).run()`` is the whole migration.

    Args:
        betty_engine: a ``betty.engine.Engine`` (or subclass) built as usual.
        **overrides: [`mlo.EngineConfig`][mlo.EngineConfig] fields (``steps``, ``progress``,
            ``checkpoint_every``, ``distributed``, …) that replace the converted ones, and
            ``problems={name: {ProblemConfig field: value}}`` for per-level settings
            (e.g. ``{"inner": {"jacobian": "partial"}}`` for Betty's nested Jacobian).

    Raises:
        SetupError: betty-ml is missing, the argument is not a Betty engine, or the program
            uses something with no mlo counterpart (the message names it), such as an
            ``l2u`` edge whose upper level has no ``u2l`` chain down to its lower one
            (Betty's learning-by-ignoring example; ``mlo.betty`` runs those). Nothing is
            changed on the Betty objects when it raises.
    """
    betty = _betty()
    if not isinstance(betty_engine, betty.engine.Engine):
        raise SetupError(
            f"from_betty takes a constructed betty.engine.Engine; got {type(betty_engine).__name__}"
        )
    problem_overrides = overrides.pop("problems", {}) or {}
    refusals = _refusals(betty, betty_engine)
    if refusals:
        listed = "\n".join(f"  - {r}" for r in refusals)
        raise SetupError(
            f"from_betty cannot convert this program; it uses {len(refusals)} thing(s) "
            f"mlo's engine has no counterpart for:\n{listed}\nAlternatively, {_ON_MLO_BETTY}."
        )
    problems = list(betty_engine.problems)
    names = [p.name for p in problems]
    if len(set(names)) != len(names):
        raise SetupError(
            f"Betty problems must have distinct names for mlo (got {names}); rename them"
        )
    unknown = set(problem_overrides) - set(names)
    if unknown:
        raise SetupError(
            f"from_betty(problems=...) names {sorted(unknown)}, which are not problems of "
            f"this engine ({names})"
        )
    uppers, lowers = _edges(betty_engine, names)
    by_name = {p.name: p for p in problems}
    configs = {}
    for problem in problems:
        settings = _problem_settings(problem, [by_name[u] for u in uppers[problem.name]])
        settings.update(problem_overrides.get(problem.name, {}))
        configs[problem.name] = ProblemConfig(**settings)
    leaves = [n for n in names if not lowers[n]]
    roots = [n for n in names if not uppers[n]]
    counts = _betty_update_counts(problems, int(betty_engine.config.train_iters))
    # No preflight: it would run each training_step once more, side effects included.
    engine_settings: dict[str, Any] = {"steps": max(counts[r] for r in roots), "preflight": False}
    log_steps = [p.config.log_step for p in problems if p.config.log_step > 0]
    if log_steps:
        engine_settings["log_every"] = min(log_steps)
    engine_settings.update(overrides)
    config = EngineConfig(**engine_settings)
    levels = [BettyLevel(p, configs[p.name]) for p in problems]
    dependencies = {u: sorted(ls) for u, ls in lowers.items() if ls}
    return BettyProgram(levels, dependencies, config, betty_engine, leaves[0])


# ---------------------------------------------------------------------------- checks


_ENGINE_METHODS = ("train_step", "run")
_ON_MLO_BETTY = (
    "mlo.betty runs it: change the program's betty imports to mlo.betty (Betty 0.2's API, "
    "no Betty needed), where roll_back, gradient_accumulation, fp16, param_callback, "
    "custom_optimizer_step, environments, early stopping, train_step overrides and paths "
    "through l2u-only edges work as in Betty"
)


def _refusals(betty: Any, engine: Any) -> list[str]:
    """Everything in a Betty 0.1.1 program that ``from_betty`` cannot convert, each with
    what to do instead."""
    config = engine.config
    found = []
    refused = {
        "roll_back": "mlo's engine has no roll-back of lower levels after an upper update",
        "distributed": "launch with torchrun and pass from_betty(engine, distributed='ddp')",
        "early_stopping": "stop on your validation statistics outside engine.run()",
    }
    for field, why in refused.items():
        if getattr(config, field, False):
            found.append(f"EngineConfig({field}=True): {why}")
    if engine.env is not None:
        found.append("an environment (Engine(env=...)): mlo's engine has no environments")
    base = betty.engine.Engine
    for method in _ENGINE_METHODS:
        if getattr(type(engine), method) is not getattr(base, method):
            found.append(
                f"{type(engine).__name__} overrides Engine.{method}, which mlo's engine "
                "replaces; move that logic into validation() or around engine.run()"
            )
    found.extend(_l2u_only_refusals(engine))
    for problem in engine.problems:
        found.extend(_problem_refusals(betty, problem))
    return found


def _l2u_only_refusals(engine: Any) -> list[str]:
    """Each ``l2u`` edge ``L → U`` where no ``u2l`` chain leads from ``U`` down to ``L``.

    mlo's graph says an upper level's parameters are free and each lower level's solution
    follows them. An ``l2u`` edge under a ``u2l`` chain fits that reading (the upper reads a
    level below it). Without one (Betty's learning-by-ignoring: ``finetune`` reads
    ``pretrain``, and nothing of ``finetune`` reaches ``pretrain``), Betty's ``U`` is
    trained on ``L`` and its solution follows ``L``'s, and Betty differentiates along the
    paths through it; a converted graph would drop those paths."""
    deps = engine.dependencies or {}
    below: dict[Any, set[Any]] = {}

    def descendants(problem: Any) -> set[Any]:
        if problem not in below:
            below[problem] = set()
            for low in deps.get("u2l", {}).get(problem, []):
                below[problem] |= {low, *descendants(low)}
        return below[problem]

    found = []
    for low, ups in deps.get("l2u", {}).items():
        for up in ups:
            if low not in descendants(up):
                found.append(
                    f"the l2u edge {low.name!r} → {up.name!r}: {up.name!r} reads "
                    f"{low.name!r}, but no u2l chain leads from {up.name!r} down to "
                    f"{low.name!r}; Betty differentiates along the paths through such an "
                    "edge, which mlo's upper/lower graph would drop"
                )
    return found


_HOOKS = {
    "custom_optimizer_step": "give the level a torch.optim optimizer that does the step",
    "param_callback": "apply the change in the level's training_step or after run()",
}


def _problem_refusals(betty: Any, problem: Any) -> list[str]:
    name = problem.name
    found = []
    if not isinstance(problem, betty.problems.ImplicitProblem):
        found.append(
            f"problem {name!r} is a {type(problem).__name__}; from_betty converts "
            "ImplicitProblem levels (betty-ml 0.1.1's IterativeProblem replaces the module's "
            "optimizer by its functorch-patched one, and cannot step on torch 2.x). For "
            "differentiation through the unrolled steps, make it an ImplicitProblem and pass "
            f"problems={{{name!r}: {{'solver': 'unroll'}}}}"
        )
    config = problem.config
    if config.fp16:
        found.append(f"problem {name!r}: Config(fp16=True); train in float32 or bfloat16")
    if config.gradient_accumulation != 1:
        found.append(
            f"problem {name!r}: Config(gradient_accumulation={config.gradient_accumulation}); "
            "use a larger batch"
        )
    for hook, fix in _HOOKS.items():
        if callable(getattr(problem, hook, None)):
            found.append(f"problem {name!r}: the {hook} hook; {fix}")
    return found


# ---------------------------------------------------------------------------- mapping


def _edges(engine: Any, names: list[str]) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """``uppers[n]`` and ``lowers[n]`` of each problem: ``u2l`` edges and reversed ``l2u``."""
    uppers: dict[str, set[str]] = {n: set() for n in names}
    lowers: dict[str, set[str]] = {n: set() for n in names}
    deps = engine.dependencies or {}
    for upper, lows in deps.get("u2l", {}).items():
        for low in lows:
            uppers[low.name].add(upper.name)
            lowers[upper.name].add(low.name)
    for low, ups in deps.get("l2u", {}).items():
        for upper in ups:
            uppers[low.name].add(upper.name)
            lowers[upper.name].add(low.name)
    return uppers, lowers


def _problem_settings(problem: Any, uppers: list[Any]) -> dict[str, Any]:
    config = problem.config
    unroll = int(config.unroll_steps)
    settings: dict[str, Any] = {
        "unroll_steps": unroll,
        # Betty's uppers first update at the first multiple of unroll_steps past the warm-up.
        "warmup_steps": unroll * (int(config.warmup_steps) // unroll),
        "grad_clip": config.gradient_clipping if config.gradient_clipping > 0 else None,
        "reset_each_inner_loop": callable(getattr(problem, "on_inner_loop_start", None)),
        "solver": _solver(problem, uppers),
    }
    return settings


def _solver(problem: Any, uppers: list[Any]) -> Any:
    """The mlo solver for the Jacobian of ``problem`` towards its upper levels."""
    if not uppers:
        return solvers.FirstOrder()  # a top level: no Jacobian is ever taken
    implicit = {u.name: bool(u.config.first_order) for u in uppers}
    if not any(implicit.values()):
        return solvers.FirstOrder()
    if not all(implicit.values()):
        raise SetupError(
            f"the upper levels of Betty problem {problem.name!r} disagree on first_order "
            f"({implicit}); mlo applies one solver per lower level, so set first_order the "
            "same on all of them"
        )
    return solver_of(problem.name, problem.config)


def _betty_update_counts(problems: list[Any], iterations: int) -> dict[str, int]:
    """How many updates each problem makes in ``iterations`` Betty iterations: each
    iteration steps every lowest level once, and a level steps its uppers after every
    ``unroll_steps``-th of its own updates past its warm-up, once all their lower levels
    are ready (Betty's ``step_normal``), simulated without computing anything."""
    children = {p.name: [c.name for c in p.children] for p in problems}
    parents = {p.name: [q.name for q in p.parents] for p in problems}
    config = {p.name: p.config for p in problems}
    count = dict.fromkeys(children, 0)
    ready = {n: dict.fromkeys(children[n], False) for n in children}

    def step(name: str) -> None:
        if not all(ready[name].values()):
            return
        count[name] += 1
        c = config[name]
        if count[name] % c.unroll_steps == 0 and count[name] > c.warmup_steps:
            for parent in parents[name]:
                ready[parent][name] = True
                step(parent)
        ready[name] = dict.fromkeys(children[name], False)

    leaves = [n for n in children if not children[n]]
    for _ in range(iterations):
        for leaf in leaves:
            step(leaf)
    return count


# ---------------------------------------------------------------------------- data


class _BettyBatches:
    """A Betty problem's batches from Betty's own ``get_batch``: the iterators Betty's
    ``initialize()`` made (so a shuffled loader's order is Betty's at the same seed), its
    restart of an ended loader with ``on_epoch_end``, its conversion of the items, or the
    problem's own ``get_batch``."""

    def __init__(self, problem: Any) -> None:
        self.problem = problem

    def __iter__(self) -> Iterator[Any]:
        problem = self.problem
        if problem.train_data_loader is None and not _overrides(problem, "get_batch"):
            raise SetupError(f"Betty problem {problem.name!r} has no train_data_loader")
        while True:
            yield problem.get_batch()


def _overrides(problem: Any, method: str) -> bool:
    from betty.problems import Problem as BettyProblem

    return getattr(type(problem), method) is not getattr(BettyProblem, method)
