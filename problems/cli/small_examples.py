"""What the small examples (hyperparameter optimization, reweighting, MAML, teaching)
share: their parser, configuration checks, and the engine of one run with its
checkpoints."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, ConfigDict, Field

from mlo.options import NumbersNotBooleans

from .config_files import M, build_config, print_config
from .flags import add_threads_flag, apply_threads, comma_list


def example_parser(description: str) -> argparse.ArgumentParser:
    """A parser with the flags every small example takes (all default to the config's)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", type=Path, help="TOML file; flags override its values")
    parser.add_argument(
        "--print-config", action="store_true", help="print the effective configuration and exit"
    )
    parser.add_argument("--steps", type=int)
    parser.add_argument("--seeds", type=int)
    parser.add_argument("--out", help="output folder")  # a string: "" is refused, not "."
    parser.add_argument("--no-progress", action="store_const", const=False, dest="progress")
    parser.add_argument(
        "--resume",
        action="store_const",
        const=True,
        help="continue each run from its latest checkpoint in OUT/checkpoints",
    )
    parser.add_argument(
        "--checkpoint-every", type=int, dest="checkpoint_every", help="ticks between checkpoints"
    )
    parser.add_argument(
        "--overwrite",
        action="store_const",
        const=True,
        help="replace the runs in OUT (without it, a folder holding them is refused)",
    )
    parser.add_argument(
        "--override",
        type=comma_list,
        help="with --resume: settings allowed to differ from the runs' (e.g. inner_lr)",
    )
    add_threads_flag(parser)
    return parser


def parse_run(parser: argparse.ArgumentParser, model: type[M], argv: list[str] | None) -> M | None:
    """The validated configuration (file, then flags), or ``None`` after
    ``--print-config`` printed it; invalid input raises ``ConfigError``."""
    parsed = parser.parse_args(argv)
    flags = {
        k: v for k, v in vars(parsed).items() if k not in ("config", "print_config", "threads")
    }
    config = build_config(model, parsed.config, flags)  # mistakes: command_line reports them
    if parsed.print_config:
        print_config(config)
        return None
    threads = apply_threads(parsed.threads)
    from ..launch import lead

    if lead():  # under torchrun every rank sets its threads; one says so
        print(threads, file=sys.stderr)
    return config


def trained_level_solvers() -> list[str]:
    """The registered solvers that apply to a level trained by its optimizer (all but
    those that need an explicit ``best_response``, such as ``explicit``)."""
    import mlo

    return [n for n in mlo.solvers.available() if not mlo.solvers.resolve(n).needs_best_response]


def _registered_solver(name: str) -> str:
    import mlo

    solver = mlo.solvers.resolve(name)  # raises with the list of valid names
    if solver.needs_best_response:
        raise ValueError(
            f"solver {name!r} needs a level with an explicit best_response, and this "
            f"example's levels are trained by their optimizers; use one of "
            f"{', '.join(trained_level_solvers())}"
        )
    return name


SolverName = Annotated[str, AfterValidator(_registered_solver)]
"""A config field holding the name of a registered solver that applies to a level trained
by its optimizer."""


class ResumableRun(NumbersNotBooleans):
    """What every small example's configuration shares: checkpoints and resuming."""

    model_config = ConfigDict(extra="forbid")

    resume: bool = Field(
        False, description="continue each run from its latest checkpoint in OUT/checkpoints"
    )
    checkpoint_every: int = Field(50, ge=1, description="engine ticks between checkpoints")
    overwrite: bool = Field(False, description="replace the runs in OUT")
    override: list[str] = Field(
        default_factory=list,
        description="with resume: settings that may differ from the runs' (their new values "
        "apply from the resumed tick on)",
    )


EXAMPLE_FREE = (
    "resume",
    "overwrite",
    "override",
    "progress",
    "steps",
    "seeds",
    "checkpoint_every",
    "out",
)
"""Settings that say how long or how a small example runs, not what it computes: free to
change on --resume (more steps continue a run; more seeds add runs)."""


def example_folder(config: Any, example: str):
    """``with example_folder(config, "maml"):`` around a small example's runs: its folder
    rules (``problems.run_folder.claim_example``), taken by the rank that writes."""
    from contextlib import nullcontext

    from ..launch import lead
    from ..run_folder import claim_example, flatten

    if not lead():
        return nullcontext()
    return claim_example(
        Path(config.out),
        example,
        resume=config.resume,
        overwrite=config.overwrite,
        settings=flatten(config.model_dump(mode="json")),
        free=EXAMPLE_FREE,
        override=set(config.override),
    )


def example_engine(problems, dependencies, config: Any, metrics_file: str, log_every: int = 50):
    """The engine one run of an example trains: ``config.steps`` ticks, ``config.progress``,
    a metrics file ``metrics_file`` in ``config.out`` written every ``log_every`` ticks, and
    checkpoints every ``config.checkpoint_every`` ticks (and at the end) in
    ``config.out/checkpoints/<run>``, ``<run>`` being ``metrics_file``'s stem.

    With ``config.resume`` the engine is returned loaded from that run's latest
    checkpoint, so that ``engine.run()`` continues exactly where it stopped (a finished run
    trains no further), and the metric records after that checkpoint dropped (the run
    writes them again). Without it, the run's old checkpoints and metrics are removed.
    """
    import torch

    import mlo

    from ..launch import lead, shard_batch, start
    from ..run_folder import truncate_metrics

    _, distributed = start(torch.device("cpu"))
    if distributed:
        # Whole-dataset batches (a list of them) are split across the ranks; the engine
        # averages the gradients, so each update is the single process's.
        for problem in problems:
            if isinstance(problem.stream.data, list):
                problem.stream.data = [shard_batch(b) for b in problem.stream.data]
    folder = Path(config.out) / "checkpoints" / Path(metrics_file).stem
    metrics = Path(config.out) / metrics_file
    saved = sorted(folder.glob("step_*.pt"))
    if not config.resume and lead():
        for old in saved:
            old.unlink()
        metrics.unlink(missing_ok=True)
    if not config.resume:
        saved = []
    engine = mlo.Engine(
        problems,
        dependencies,
        mlo.EngineConfig(
            steps=config.steps,
            progress=config.progress,
            log_every=log_every,
            metrics_path=metrics,
            checkpoint_every=config.checkpoint_every,
            checkpoint_dir=folder,
            keep_last=2,
            distributed="ddp" if distributed else "none",
        ),
    )
    if saved:
        engine.load(saved[-1], keep_current_hyperparameters=bool(config.override))
        if lead():
            truncate_metrics(metrics, engine.tick)
    return engine
