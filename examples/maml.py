"""MAML and iMAML on sinusoid regression (5-shot and 10-shot), against pretraining on all
tasks and fine-tuning.

Formulation (two levels, edge ``meta → adapt``), for a batch of 25 tasks t:

    adapt:  Δ*(θ) = argmin_Δ  Σ_t MSE(f(x_t^s; θ + Δ_t), y_t^s)  [+ λ/2 Σ_t ‖Δ_t‖², iMAML]
    meta:   min_θ  mean_t MSE(f(x_t^q; θ + Δ_t*), y_t^q)

f is the 1-40-40-1 ReLU network; Δ is reset to 0 before each inner loop. MAML takes one
inner SGD step (lr 0.01) and differentiates through it (``unroll``); iMAML takes 10 inner
steps on the proximal objective (λ = 1, lr 0.02) and uses the implicit function theorem
(``cg``). Baseline: θ trained on the pooled points of the same tasks (no inner loop).
All three are scored on 100 held-out tasks after fine-tuning on each task's support set
(10 steps of lr 0.01; iMAML with its own inner loop), query MSE over 100 points.

    python examples/maml.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from pydantic import ConfigDict, Field
from rich.console import Console

from problems.cli import (
    OutFolder,
    ResumableRun,
    command_line,
    example_engine,
    example_folder,
    example_parser,
    parse_run,
)
from problems.meta import SineMLP, adapt_and_score, build, functional_mlp, sample_tasks
from problems.meta.levels import task_mse
from problems.report import comparison_table


class MamlRun(ResumableRun):
    model_config = ConfigDict(extra="forbid")

    steps: int = Field(1000, ge=1, description="meta updates")
    meta_batch: int = Field(25, ge=1)
    shots: list[int] = Field(default_factory=lambda: [5, 10])
    meta_lr: float = Field(1e-3, gt=0)
    maml_inner_lr: float = Field(0.01, gt=0)
    imaml_inner_steps: int = Field(10, ge=1)
    imaml_inner_lr: float = Field(0.02, gt=0)
    imaml_proximal: float = Field(1.0, gt=0, description="λ of iMAML's proximal term")
    imaml_cg_iterations: int = Field(5, ge=1, description="CG iterations of iMAML's solver")
    imaml_cg_ridge: float = Field(
        1.0,
        ge=0,
        description="ρ added to the inner Hessian in CG: the task losses of a ReLU network are "
        "not convex, and without it CG meets negative curvature",
    )
    eval_steps: int = Field(10, ge=0, description="fine-tuning steps on a test task")
    seeds: int = Field(3, ge=1)
    out: OutFolder = Path("runs/maml")
    progress: bool = True


def meta_learn(config: MamlRun, method: str, shots: int, seed: int) -> tuple[list, float]:
    maml = method == "maml"
    problems, deps = build(
        method=method,
        meta_batch=config.meta_batch,
        shots=shots,
        inner_steps=1 if maml else config.imaml_inner_steps,
        inner_lr=config.maml_inner_lr if maml else config.imaml_inner_lr,
        meta_lr=config.meta_lr,
        seed=seed,
        proximal=config.imaml_proximal,
        cg_iterations=config.imaml_cg_iterations,
        cg_ridge=config.imaml_cg_ridge,
    )
    engine = example_engine(problems, deps, config, f"{method}_{shots}shot_seed{seed}.jsonl")
    start = time.perf_counter()
    engine.run()
    return list(engine.problems["meta"].module.weights), time.perf_counter() - start


def pretrain(config: MamlRun, shots: int, seed: int) -> tuple[list, float]:
    torch.manual_seed(seed)
    model = SineMLP()
    opt = torch.optim.Adam(model.parameters(), lr=config.meta_lr)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in range(config.steps):
        xs, ys, xq, yq = sample_tasks(config.meta_batch, shots, 10, gen)
        x, y = torch.cat([xs, xq], 1), torch.cat([ys, yq], 1)
        params = [p.unsqueeze(0).expand(config.meta_batch, *p.shape) for p in model.weights]
        loss = task_mse(functional_mlp(x, params), y).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return list(model.weights), time.perf_counter() - start


@command_line
def main(argv: list[str] | None = None) -> None:
    parser = example_parser(__doc__.split("\n")[0])
    parser.add_argument("--imaml-cg-iterations", type=int, dest="imaml_cg_iterations")
    parser.add_argument("--imaml-cg-ridge", type=float, dest="imaml_cg_ridge")
    config = parse_run(parser, MamlRun, argv)
    if config is None:
        return
    with example_folder(config, "maml"):
        console = Console()
        for shots in config.shots:
            test = sample_tasks(100, shots, 100, torch.Generator().manual_seed(10_000 + shots))
            rows: dict[str, list[dict[str, float]]] = {
                "MAML (unroll)": [],
                "iMAML (cg)": [],
                "pretrain + fine-tune": [],
            }
            for seed in range(config.seeds):
                for name, method in (("MAML (unroll)", "maml"), ("iMAML (cg)", "imaml")):
                    theta, seconds = meta_learn(config, method, shots, seed)
                    if method == "maml":
                        mse = adapt_and_score(theta, test, config.eval_steps, config.maml_inner_lr)
                    else:
                        mse = adapt_and_score(
                            theta,
                            test,
                            config.imaml_inner_steps,
                            config.imaml_inner_lr,
                            config.imaml_proximal,
                        )
                    rows[name].append({"mse": float(mse.mean()), "seconds": seconds})
                theta, seconds = pretrain(config, shots, seed)
                mse = adapt_and_score(theta, test, config.eval_steps, config.maml_inner_lr)
                rows["pretrain + fine-tune"].append({"mse": float(mse.mean()), "seconds": seconds})
            console.print(
                comparison_table(
                    f"sinusoid regression, {shots}-shot, {config.steps} meta steps, "
                    f"{config.seeds} seed(s): query MSE after fine-tuning (lower is better)",
                    [("test MSE", "mse", 1, 3), ("train seconds", "seconds", 1, 1)],
                    rows,
                )
            )


if __name__ == "__main__":
    main(sys.argv[1:])
