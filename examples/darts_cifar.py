"""DARTS (Liu et al., 2019) on the mlo engine: search a CIFAR cell, then retrain it.

Formulation (two levels, edge ``architecture → network``):

    network:       W*(A) = argmin_W  CE(supernet(x; A, W), y)   x ∈ search-train (½ of train)
    architecture:  min_A  CE(supernet(x; A, W*(A)), y)          x ∈ search-validation (½)

The network level's hypergradient solver is ``darts`` by default (the paper's
second-order approximation); ``--solver`` selects any registered solver.

    python examples/darts_cifar.py search --max-steps 20            # a short look
    python examples/darts_cifar.py search                           # the paper's 50 epochs
    python examples/darts_cifar.py evaluate --genotype runs/darts/genotype.json --short
    python examples/darts_cifar.py evaluate --genotype DARTS_V2     # 600 epochs, 20 cells

Offline, pass ``--data-dir`` to a folder holding ``cifar-10-batches-py/`` (or use
``--dataset synthetic`` for a smoke run that says nothing about accuracy).
"""

from __future__ import annotations

import argparse
import logging
import sys

import torch
from rich.console import Console
from rich.logging import RichHandler

from problems.cli import ConfigError, add_common_flags, build_config, fail, print_config
from problems.nas import NasDataError, build_darts
from problems.nas.config import DartsRun, EvalRun
from problems.nas.runner import (
    SearchSetup,
    genotype_rows,
    run_evaluation,
    run_search,
    summary_table,
)
from problems.nas.search import to_device


def wire_darts(setup: SearchSetup):
    c = setup.config
    return build_darts(
        setup.supernet,
        setup.arch,
        setup.search_train,
        setup.search_val,
        total_updates=setup.total_updates,
        hyper=c.hyper,
        solver=c.solver,
        unroll_steps=c.unroll_steps,
    )


@torch.no_grad()
def batch_accuracy(engine, batch) -> dict[str, float]:
    arch = engine.problems["architecture"]
    x, y = to_device(batch, arch.params.tensors[0].device)
    with arch.autocast():
        logits = engine.problems["network"].module(x, arch.module.normalized())
    return {"val acc": float((logits.argmax(1) == y).float().mean())}


def parse(argv: list[str] | None) -> tuple[str, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command")
    search = commands.add_parser("search", help="search a cell (default)")
    add_common_flags(search)
    search.add_argument("--solver", help="first_order, darts, neumann, cg, unroll")
    search.add_argument("--unroll-steps", type=int, dest="unroll_steps")
    search.add_argument(
        "--partial-channels",
        type=int,
        dest="partial_channels",
        help="PC-DARTS: each edge sees 1/k of the channels",
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
    try:
        if command == "search":
            config = build_config(DartsRun, args.config, flags, defaults={"out": "runs/darts"})
        else:
            config = build_config(EvalRun, args.config, flags)
    except ConfigError as exc:
        fail(str(exc))
    if args.print_config:
        print_config(config)
        return 0
    try:
        if command == "search":
            result = run_search(
                config,
                wire_darts,
                title="DARTS search",
                accuracy_of=batch_accuracy,
                console=console,
            )
            rows = {
                "dataset": config.dataset,
                "steps (architecture updates)": str(result.steps),
                "search time": f"{result.seconds:.1f} s",
                "images / s": f"{result.images_per_second:.1f}",
                "supernet val accuracy": f"{100 * result.val_accuracy:.2f} %",
                **genotype_rows(result.genotype),
                **{f"outputs: {k}": str(v) for k, v in result.files.items()},
            }
            Console().print(summary_table("DARTS search", rows))
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
