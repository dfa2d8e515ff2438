"""Meta-Weight-Net on digits with 40 % symmetric label noise, against plain training.

Formulation (two levels, edge ``weighting → classifier``):

    classifier:  W*(Θ) = argmin_W  Σ_i V(ℓ_i; Θ) ℓ_i / Σ_i V(ℓ_i; Θ),  ℓ_i = CE(f(x_i; W), ỹ_i)
    weighting:   min_Θ  CE(f(x; W*(Θ)), y)        on a small clean meta-set

f is an MLP on scikit-learn's 8×8 digits; ỹ are the training labels with 40 % replaced
by another class uniformly at random; V(·; Θ) maps each example's loss to a weight in
(0, 1). The classifier's hypergradient comes from the ``unroll`` solver (the one-step
look-ahead of the paper, exact). Baseline: the same classifier and steps on the noisy
labels with every weight 1. Both are scored on the clean test split over 3 seeds.

    python examples/data_reweighting.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import ConfigDict, Field
from rich.console import Console
from torch.utils.data import DataLoader, TensorDataset

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
from problems.digits import accuracy, load_digits_splits
from problems.report import comparison_table
from problems.reweighting import build, symmetric_noise
from problems.reweighting.levels import classifier_net


class ReweightingRun(ResumableRun):
    model_config = ConfigDict(extra="forbid")

    steps: int = Field(1500, ge=1, description="classifier updates (one meta update each)")
    batch_size: int = Field(100, ge=1)
    noise: float = Field(0.4, ge=0, lt=1, description="fraction of training labels flipped")
    train_size: int = Field(1000, ge=10)
    meta_size: int = Field(100, ge=10, description="clean meta-set size")
    solver: SolverName = "unroll"
    lr: float = Field(0.1, gt=0)
    meta_lr: float = Field(1e-3, gt=0)
    seeds: int = Field(3, ge=1)
    out: OutFolder = Path("runs/data_reweighting")
    progress: bool = True


def loaders(config: ReweightingRun, seed: int):
    data = load_digits_splits(n_train=config.train_size, n_val=config.meta_size, seed=seed)
    x, y = data.train
    noisy = symmetric_noise(y, config.noise, 10, seed)
    train = DataLoader(
        TensorDataset(x, noisy),
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(seed),
    )
    return data, noisy, train, [data.val]


def reweighted(config: ReweightingRun, seed: int) -> dict[str, float]:
    torch.manual_seed(seed)
    data, noisy, train, meta = loaders(config, seed)
    problems, deps = build(
        data.features, 10, train, meta, solver=config.solver, lr=config.lr, meta_lr=config.meta_lr
    )
    engine = example_engine(problems, deps, config, f"metrics_seed{seed}.jsonl")
    engine.run()
    model, weigher = engine.problems["classifier"].module, engine.problems["weighting"].module
    x, y = data.train
    with torch.no_grad():
        weights = weigher(F.cross_entropy(model(x), noisy, reduction="none"))
    clean = noisy == y
    return {
        "test_acc": accuracy(model, data.test),
        "weight_clean": float(weights[clean].mean()),
        "weight_noisy": float(weights[~clean].mean()),
    }


def plain(config: ReweightingRun, seed: int) -> dict[str, float]:
    torch.manual_seed(seed)
    data, _, train, _ = loaders(config, seed)
    model = classifier_net(data.features, 10)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9, weight_decay=5e-4)
    stream = mlo.data.BatchStream("plain", train)
    for _ in range(config.steps):
        x, y = stream.next()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {"test_acc": accuracy(model, data.test), "weight_clean": 1.0, "weight_noisy": 1.0}


@command_line
def main(argv: list[str] | None = None) -> None:
    parser = example_parser(__doc__.split("\n")[0])
    parser.add_argument("--noise", type=float)
    parser.add_argument("--solver", choices=trained_level_solvers())
    config = parse_run(parser, ReweightingRun, argv)
    if config is None:
        return
    with example_folder(config, "data_reweighting"):
        rows = {
            f"Meta-Weight-Net on mlo ({config.solver})": [],
            "plain training on noisy labels": [],
        }
        for seed in range(config.seeds):
            rows[f"Meta-Weight-Net on mlo ({config.solver})"].append(reweighted(config, seed))
            rows["plain training on noisy labels"].append(plain(config, seed))
        Console().print(
            comparison_table(
                f"digits, {int(100 * config.noise)} % symmetric label noise, {config.steps} steps, "
                f"{config.seeds} seed(s)",
                [
                    ("test accuracy %", "test_acc", 100, 2),
                    ("mean weight, clean", "weight_clean", 1, 3),
                    ("mean weight, noisy", "weight_noisy", 1, 3),
                ],
                rows,
            )
        )


if __name__ == "__main__":
    main(sys.argv[1:])
