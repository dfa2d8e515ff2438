"""Per-feature L2 regularisation tuned by hypergradient, on scikit-learn's digits.

Formulation (two levels, edge ``penalty → classifier``):

    classifier:  W*(λ) = argmin_W  CE(W; D_train) + Σ_j exp(λ_j) ‖W[:, j]‖²
    penalty:     min_λ   CE(W*(λ); D_val)

``W`` is a multinomial logistic regression (64 pixels → 10 classes) trained by SGD;
``λ`` holds one log penalty weight per pixel, updated by Adam with the hypergradient
from the chosen solver (``cg`` by default) after every ``--inner-steps`` classifier steps.

Baseline: the same classifier with a single weight decay, chosen by grid search on the
validation loss, with the same wall-clock budget as the multilevel run (the steps per
grid point follow from the measured time of a classifier step). Both are scored on the
held-out test split, over several seeds.

    python examples/hyperparameter_optimization.py            # defaults: 3 seeds
    python examples/hyperparameter_optimization.py --steps 20 --seeds 1   # a quick look
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import ConfigDict, Field
from rich.console import Console
from torch import nn

import mlo
from problems.cli import (
    OutFolder,
    ResumableRun,
    SolverName,
    command_line,
    example_engine,
    example_folder,
    example_parser,
    parse_run,
    trained_level_solvers,
)
from problems.hpo import build, load_digits_splits
from problems.launch import lead
from problems.report import comparison_table

GRID = (-8.0, -6.0, -5.0, -4.0, -3.0, -2.0)


def evaluate(model: nn.Module, split) -> tuple[float, float]:
    x, y = split
    with mlo.observing([model]):
        logits = model(x)
        return float(F.cross_entropy(logits, y)), int(mlo.observe.correct(logits, y)) / len(y)


def tuned_run(args, seed: int) -> dict[str, float]:
    torch.manual_seed(seed)
    data = load_digits_splits(seed=seed)
    problems, deps = build(
        data.features,
        10,
        [data.train],
        [data.val],
        solver=args.solver,
        inner_steps=args.inner_steps,
        inner_lr=args.inner_lr,
        outer_lr=args.outer_lr,
    )
    engine = example_engine(problems, deps, args, f"metrics_seed{seed}.jsonl", log_every=10)
    start = time.perf_counter()
    engine.run()
    seconds = time.perf_counter() - start
    model = engine.problems["classifier"].module
    test_loss, test_acc = evaluate(model, data.test)
    return {"test_loss": test_loss, "test_acc": test_acc, "seconds": seconds}


def grid_run(args, seed: int, budget_seconds: float) -> dict[str, float]:
    """The best single weight decay on the validation loss, by a grid search that gets the
    same wall-clock budget as the per-feature run: the steps per grid point are set from
    the measured time of a classifier step."""
    data = load_digits_splits(seed=seed)
    x, y = data.train

    def train(log_l2: float, steps: int) -> nn.Module:
        torch.manual_seed(seed)
        model = nn.Linear(data.features, 10)
        opt = torch.optim.SGD(model.parameters(), lr=args.inner_lr)
        decay = torch.tensor(log_l2).exp()
        for _ in range(steps):
            loss = F.cross_entropy(model(x), y) + decay * (model.weight**2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return model

    start = time.perf_counter()
    train(GRID[0], 50)
    per_step = (time.perf_counter() - start) / 50
    steps = max(1, int(budget_seconds / (len(GRID) * per_step)))
    start = time.perf_counter()
    best = None
    for log_l2 in GRID:
        model = train(log_l2, steps)
        val_loss, _ = evaluate(model, data.val)
        if best is None or val_loss < best[0]:
            best = (val_loss, log_l2, model)
    seconds = time.perf_counter() - start
    test_loss, test_acc = evaluate(best[2], data.test)
    return {
        "test_loss": test_loss,
        "test_acc": test_acc,
        "seconds": seconds,
        "log_l2": best[1],
        "steps": steps,
    }


class HpoRun(ResumableRun):
    """The example's settings (``--config FILE.toml``; flags override the file)."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(100, ge=1, description="updates of the penalty")
    inner_steps: int = Field(20, ge=1, description="classifier updates per penalty update")
    solver: SolverName = "cg"
    inner_lr: float = Field(0.5, gt=0)
    outer_lr: float = Field(0.05, gt=0)
    seeds: int = Field(3, ge=1)
    out: OutFolder = Path("runs/hyperparameter_optimization")
    progress: bool = True


@command_line
def main(argv: list[str] | None = None) -> None:
    parser = example_parser(__doc__.split("\n")[0])
    parser.add_argument(
        "--inner-steps",
        type=int,
        dest="inner_steps",
        help="classifier updates per penalty update (20)",
    )
    parser.add_argument("--solver", choices=trained_level_solvers())
    parser.add_argument("--inner-lr", type=float, dest="inner_lr")
    parser.add_argument("--outer-lr", type=float, dest="outer_lr")
    args = parse_run(parser, HpoRun, argv)
    if args is None:
        return
    with example_folder(args, "hyperparameter_optimization"):
        tuned, grid = [], []
        for seed in range(args.seeds):
            tuned.append(tuned_run(args, seed))
            grid.append(grid_run(args, seed, budget_seconds=tuned[-1]["seconds"]))
        if not lead():  # under torchrun, rank 0 reports
            return

        Console().print(
            comparison_table(
                f"digits, per-feature L2 ({args.solver}) vs grid-searched weight decay, "
                f"{args.seeds} seed(s)",
                [
                    ("test accuracy %", "test_acc", 100, 2),
                    ("test loss", "test_loss", 1, 3),
                    ("seconds per seed", "seconds", 1, 1),
                ],
                {
                    f"mlo per-feature L2 ({args.solver})": tuned,
                    f"single weight decay, grid of {len(GRID)}": grid,
                },
            )
        )
        print(
            "grid choices of log weight decay:",
            [r["log_l2"] for r in grid],
            "; classifier steps per grid point:",
            [r["steps"] for r in grid],
            f"(the per-feature run: {args.steps * args.inner_steps})",
        )


if __name__ == "__main__":
    main()
