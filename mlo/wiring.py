"""Connecting declared problems into one engine's levels: dependencies by name, each
problem's view of its peers, and the checks that refuse a program that cannot train
(run when an [`mlo.Engine`][mlo.Engine] is built, before anything changes)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .errors import SetupError
from .parameters import ParameterSet
from .problem import Problem

logger = logging.getLogger("mlo")


def dependencies_by_name(dependencies: Mapping[Any, Any]) -> dict[str, list[str]]:
    """``{upper: [lowers]}`` with every problem given by its name (problem objects are
    accepted, a single lower may be given bare)."""

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


def connect_peers(problems: Mapping[str, Problem]) -> None:
    """Let each problem reach the others by name (``self.outer``), refusing a name that
    an attribute of the problem would hide."""
    for p in problems.values():
        clash = [n for n in problems if n != p.name and (hasattr(type(p), n) or n in vars(p))]
        if clash:
            raise SetupError(
                f"problem name(s) {clash} clash with attributes of {type(p).__name__} "
                f"(self.{clash[0]} would not reach the problem); rename the problem"
            )
        p.set_peers({n: q for n, q in problems.items() if n != p.name})


def check_levels(problems: Mapping[str, Problem]) -> None:
    """Refuse batch sharing and solver choices that cannot work."""
    for name, p in problems.items():
        source = p.config.batch_from
        if source is not None:
            if source not in problems or source == name:
                raise SetupError(
                    f"problem {name!r}: batch_from={source!r} must name another problem "
                    f"({', '.join(n for n in problems if n != name)})"
                )
            if p.stream.data is not None:
                raise SetupError(
                    f"problem {name!r} has its own data and batch_from={source!r}; pass "
                    "data=None to read the other problem's batches"
                )
            if problems[source].config.batch_from is not None:
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


def refresh_parameter_slots(problems: Mapping[str, Problem]) -> None:
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


def refuse_shared_parameters(problems: Mapping[str, Problem]) -> None:
    """Each level trains parameters of its own."""
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


def warn_on_shared_generators(problems: Mapping[str, Problem]) -> None:
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


def check_inputs(problems: Sequence[Problem], config: Any) -> list[Problem]:
    """The problems as a list, refusing an empty one, a non-problem, or a config that is
    not an :class:`~mlo.config.EngineConfig`."""
    from .config import EngineConfig

    problems = list(problems)
    if not problems:
        raise SetupError("Engine needs at least one problem")
    for p in problems:
        if not isinstance(p, Problem):
            raise SetupError(f"problems must be mlo.Problem instances, got {type(p).__name__}")
    if config is not None and not isinstance(config, EngineConfig):
        raise SetupError("config must be a mlo.EngineConfig")
    return problems


def check_checkpoint_dir(folder: Path | None) -> Path | None:
    """``folder``, refused if it is a file."""
    if folder is not None and folder.exists() and not folder.is_dir():
        raise SetupError(
            f"checkpoint_dir {folder} is a file, not a folder; give a folder for "
            "step_<tick>.pt checkpoints"
        )
    return folder


def detached_loss(name: str, problem: Problem) -> SetupError:
    """The error for a loss without a graph: the level would never train."""
    return SetupError(
        f"{type(problem).__name__}.training_step of problem {name!r} returned a loss "
        "that does not depend on its parameters (detached, built from .item() or "
        "numbers, or computed under torch.no_grad()), so the level would never "
        "train; return the loss tensor autograd built from the module's output"
    )


def blind_loss(name: str, problem: Problem, below: Sequence[str]) -> SetupError:
    """The error for a loss with a graph that reaches none of the level's parameters, not
    even through its lower levels."""
    return SetupError(
        f"{type(problem).__name__}.training_step of problem {name!r} returned a loss "
        "that depends on none of its own parameters"
        + (f", not even through its lower levels ({', '.join(below)})" if below else "")
        + ", so the level would never train; compute it from self.module (another "
        "level's parameters alone do not train this one)"
    )
