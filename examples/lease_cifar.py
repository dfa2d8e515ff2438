"""LeaSE — learning by self-explanation (Hosseini & Xie) — searching a CIFAR cell on mlo.

Formulation (four levels; edges relearn → explainer, relearn → explain,
explainer → explain, explain → audience):

    explainer:  W*(A)     = argmin_W  CE(f(x; A, W), y)                        x ∈ D_tr
    explain:    E*(A, W*) = PGD explanations of f on the audience's examples x ∈ D_tr
    audience:   V*(E)     = argmin_V  CE(g(x; V), y) + γ·CE(g(x ⊙ E; V), y)   same x
    relearn:    min_A  CE(g(x; V*), y) + λ·CE(f(x; A, W*), y)                  x ∈ D_val

f is the DARTS supernet (architecture A, weights W), g a fixed ResNet (weights V); D_tr
and D_val are the two halves of the training set. See docs/lease.md.

    python examples/lease_cifar.py --small                         # a first look (CIFAR-10)
    python examples/lease_cifar.py                                 # 50 epochs, DARTS settings
    python examples/lease_cifar.py --baseline darts                # DARTS, same budget/seed
    python examples/lease_cifar.py evaluate --genotype runs/lease/genotype.json --short

Offline, pass --data-dir to a folder holding cifar-10-batches-py/ (or use --dataset
synthetic for a smoke run that says nothing about accuracy).
"""

from __future__ import annotations

import argparse
import logging
import sys

import torch
from rich.console import Console
from rich.logging import RichHandler

from problems.cli import ConfigError, add_common_flags, build_config, fail, print_config
from problems.lease import LeaseRun, build
from problems.nas import NasDataError, build_darts
from problems.nas.config import EvalRun
from problems.nas.data import STATS, loader
from problems.nas.runner import (
    SearchSetup,
    genotype_rows,
    run_evaluation,
    run_search,
    summary_table,
)
from problems.nas.search import to_device

EXPLANATIONS = {"pgd": ("pgd", True), "pgd_sign": ("pgd", False), "saliency": ("saliency", True)}


def wire(setup: SearchSetup):
    config: LeaseRun = setup.config
    if config.baseline == "darts":
        return build_darts(
            setup.supernet,
            setup.arch,
            setup.search_train,
            setup.search_val,
            total_updates=setup.total_updates,
            hyper=config.hyper,
            solver=config.lease.explainer_solver,
        )
    # The audience's examples: search-train again, shuffled independently of the explainer's.
    audience_data = loader(
        setup.search_train.dataset,
        config.batch_size,
        shuffle=True,
        seed=config.seed + 2,
        workers=config.workers,
        pin_memory=setup.device.type == "cuda",
    )
    std = torch.tensor(STATS.get(config.dataset, ((0,) * 3, (1.0,) * 3))[1])
    if config.dataset == "synthetic":
        std = torch.ones(3)
    return build(
        setup.supernet,
        setup.arch,
        setup.search_train,
        audience_data,
        setup.search_val,
        num_classes=setup.num_classes,
        batch_size=config.batch_size,
        total_updates=setup.total_updates,
        image_shape=(3, config.image_size, config.image_size),
        pixel_std=std,
        hyper=config.lease,
        search=config.hyper,
        seed=config.seed,
    )


@torch.no_grad()
def accuracies(engine, batch) -> dict[str, float]:
    """The explainer's and the audience's accuracy on the current validation batch."""
    top = engine.graph.roots[0]
    level = engine.problems[top]
    x, y = to_device(batch, level.params.tensors[0].device)
    with level.autocast():
        weights = level.module.normalized()
        explainer = engine.problems[
            "explainer" if "explainer" in engine.problems else "network"
        ].module(x, weights)
        out = {"explainer acc": float((explainer.argmax(1) == y).float().mean())}
        if "audience" in engine.problems:
            audience = engine.problems["audience"].module(x)
            out["audience acc"] = float((audience.argmax(1) == y).float().mean())
    return out


def parse(argv: list[str] | None) -> tuple[str, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command")
    search = commands.add_parser("search", help="search a cell with LeaSE (default)")
    add_common_flags(search)
    search.add_argument("--lam", type=float, dest="lease.lam", help="λ (default 1)")
    search.add_argument("--gamma", type=float, dest="lease.gamma", help="γ (default 1)")
    search.add_argument(
        "--explanation",
        choices=list(EXPLANATIONS),
        help="pgd (differentiable, default), pgd_sign (the paper's sign "
        "steps: no gradient to A and W), saliency",
    )
    search.add_argument("--pgd-steps", type=int, dest="lease.explanation.steps")
    search.add_argument("--solver", help="solver of the explainer and audience levels")
    search.add_argument(
        "--audience",
        dest="lease.audience.arch",
        choices=["resnet18", "resnet_small", "resnet_tiny"],
    )
    search.add_argument("--partial-channels", type=int, dest="partial_channels")
    search.add_argument(
        "--small",
        action="store_const",
        const=True,
        help="small budget for a first look on a CPU (see LeaseRun.small)",
    )
    search.add_argument(
        "--baseline",
        choices=["none", "darts"],
        help="darts: the same search without explain and audience",
    )
    evaluate = commands.add_parser("evaluate", help="retrain a genotype from scratch")
    add_common_flags(evaluate)
    evaluate.add_argument("--genotype", help="genotype.json or a published name (DARTS_V2)")
    evaluate.add_argument(
        "--short",
        action="store_const",
        const=True,
        help="short budget: 10 epochs, 8 cells, 16 channels",
    )
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("search", "evaluate", "-h", "--help"):
        argv = ["search", *argv]
    args = parser.parse_args(argv)
    return args.command, args


def main(argv: list[str] | None = None) -> int:
    command, args = parse(argv)
    console = Console(stderr=True)
    logging.basicConfig(
        level=logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )
    flags = {
        k: v
        for k, v in vars(args).items()
        if k not in ("command", "config", "print_config") and v is not None
    }
    if "explanation" in flags:
        method, differentiable = EXPLANATIONS[flags.pop("explanation")]
        flags["lease.explanation.method"] = method
        flags["lease.explanation.differentiable"] = differentiable
    if "solver" in flags:
        solver = flags.pop("solver")
        flags["lease.explainer_solver"] = flags["lease.audience_solver"] = solver
    try:
        if command == "search":
            config = build_config(LeaseRun, args.config, flags).effective()
        else:
            config = build_config(
                EvalRun, args.config, flags, defaults={"out": "runs/lease_evaluate"}
            )
    except ConfigError as exc:
        fail(str(exc))
    if args.print_config:
        print_config(config)
        return 0
    try:
        if command == "search":
            title = "DARTS baseline" if config.baseline == "darts" else "LeaSE search"
            result = run_search(config, wire, title=title, accuracy_of=accuracies, console=console)
            rows = {
                "method": title,
                "dataset": config.dataset,
                "steps (architecture updates)": str(result.steps),
                "search time": f"{result.seconds:.1f} s",
                "images / s": f"{result.images_per_second:.1f}",
                "supernet val accuracy": f"{100 * result.val_accuracy:.2f} %",
                **{
                    k: f"{100 * v:.2f} % (last batch)"
                    for k, v in result.extra["accuracies"].items()
                },
                **genotype_rows(result.genotype),
                **{f"outputs: {k}": str(v) for k, v in result.files.items()},
            }
            Console().print(summary_table(title, rows))
        else:
            result = run_evaluation(config, console=console)
            Console().print(
                summary_table(
                    "evaluation",
                    {
                        "genotype": config.genotype,
                        "test error": f"{100 * result.test_error:.2f} %",
                        "parameters": f"{result.params_millions:.3f} M",
                        "epochs / steps": f"{result.epochs} / {result.steps}",
                        "time": f"{result.seconds:.1f} s",
                    },
                )
            )
    except (NasDataError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
