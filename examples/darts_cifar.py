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

import sys

from problems.nas.cli import nas_main
from problems.nas.config import DartsRun
from problems.nas.observe import search_accuracies
from problems.nas.runner import SearchSetup, darts_levels


def wire_darts(setup: SearchSetup):
    return darts_levels(setup, setup.config.solver, setup.config.unroll_steps)


def add_search_flags(search) -> None:
    search.add_argument("--solver", help="first_order, darts, neumann, cg, unroll")
    search.add_argument("--unroll-steps", type=int, dest="unroll_steps")


def main(argv: list[str] | None = None) -> int:
    return nas_main(
        argv,
        description=__doc__.split("\n")[0],
        search_model=DartsRun,
        add_search_flags=add_search_flags,
        wire=wire_darts,
        title_of=lambda config: "DARTS search",
        accuracy_of=search_accuracies,
        search_defaults={"out": "runs/darts"},
    )


if __name__ == "__main__":
    sys.exit(main())
