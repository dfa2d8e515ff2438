"""Learning by teaching on digits: a teacher re-learns its input gates from how well the
student it taught does, against the teacher trained alone.

Formulation (three levels; edges relearn → teacher, relearn → student, teacher → student):

    teacher:  W_T*(H)     = argmin_{W_T}  CE(t(x ⊙ σ(H); W_T), y)                 100 labelled
    student:  W_S*(W_T,H) = argmin_{W_S}  KL(softmax(t(x ⊙ σ(H); W_T)/τ) ‖ s(x; W_S))  unlabelled
    relearn:  min_H  CE(s(x; W_S*), y) + λ · CE(t(x ⊙ σ(H); W_T*), y)             validation

t and s are MLPs on scikit-learn's digits; H holds one gate per pixel of the teacher's
input. The teacher and the student use the ``unroll`` solver (one step each per tick), so
the hypergradient of H runs through the student's step and the teacher's step.
Baseline: the same teacher, same labelled data and steps, with the gates fixed.

    python examples/learning_by_teaching.py
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
from problems.teaching import Gates, build, mlp


class TeachingRun(ResumableRun):
    model_config = ConfigDict(extra="forbid")

    steps: int = Field(600, ge=1, description="ticks (one update of each level)")
    labelled: int = Field(100, ge=10)
    unlabelled: int = Field(800, ge=10)
    validation: int = Field(200, ge=10)
    batch_size: int = Field(50, ge=1)
    lam: float = Field(1.0, ge=0)
    lr: float = Field(0.1, gt=0)
    gate_lr: float = Field(0.05, gt=0)
    solver: SolverName = "unroll"
    seeds: int = Field(3, ge=1)
    out: OutFolder = Path("runs/learning_by_teaching")
    progress: bool = True


def splits(config: TeachingRun, seed: int):
    data = load_digits_splits(
        n_train=config.labelled + config.unlabelled, n_val=config.validation, seed=seed
    )
    x, y = data.train

    def loader(stream: int, *tensors):
        # One generator per loader: a checkpoint restores each stream's shuffling on its own.
        return DataLoader(
            TensorDataset(*tensors),
            batch_size=config.batch_size,
            shuffle=True,
            drop_last=True,
            generator=torch.Generator().manual_seed(2 * seed + stream),
        )

    labelled = loader(0, x[: config.labelled], y[: config.labelled])
    unlabelled = loader(1, x[config.labelled :])
    return data, labelled, unlabelled, [data.val]


def teach(config: TeachingRun, seed: int) -> dict[str, float]:
    torch.manual_seed(seed)
    data, labelled, unlabelled, val = splits(config, seed)
    problems, deps = build(
        data.features,
        10,
        labelled,
        unlabelled,
        val,
        solver=config.solver,
        lr=config.lr,
        gate_lr=config.gate_lr,
        lam=config.lam,
    )
    engine = example_engine(problems, deps, config, f"metrics_seed{seed}.jsonl")
    engine.run()
    teacher, student = engine.problems["teacher"], engine.problems["student"]
    return {
        "teacher": accuracy(teacher.logits, data.test),
        "student": accuracy(student.module, data.test),
    }


def teacher_alone(config: TeachingRun, seed: int) -> dict[str, float]:
    torch.manual_seed(seed)
    data, labelled, _, _ = splits(config, seed)
    net, gates = mlp(data.features, 10), Gates(data.features)
    opt = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=0.9)
    stream = mlo.data.BatchStream("teacher", labelled)
    for _ in range(config.steps):
        x, y = stream.next()
        loss = F.cross_entropy(net(gates(x)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {"teacher": accuracy(lambda x: net(gates(x)), data.test), "student": float("nan")}


@command_line
def main(argv: list[str] | None = None) -> None:
    parser = example_parser(__doc__.split("\n")[0])
    parser.add_argument("--lam", type=float)
    parser.add_argument("--solver", choices=trained_level_solvers())
    config = parse_run(parser, TeachingRun, argv)
    if config is None:
        return
    with example_folder(config, "learning_by_teaching"):
        rows = {"learning by teaching on mlo": [], "teacher alone": []}
        for seed in range(config.seeds):
            rows["learning by teaching on mlo"].append(teach(config, seed))
            rows["teacher alone"].append(teacher_alone(config, seed))
        Console().print(
            comparison_table(
                f"digits, {config.labelled} labelled + {config.unlabelled} unlabelled, "
                f"{config.steps} steps, {config.seeds} seed(s)",
                [
                    ("teacher test accuracy %", "teacher", 100, 2),
                    ("student test accuracy %", "student", 100, 2),
                ],
                rows,
            )
        )


if __name__ == "__main__":
    main(sys.argv[1:])
