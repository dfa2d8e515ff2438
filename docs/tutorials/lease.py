"""Tutorial 4: LeaSE — run a search, read its pictures, evaluate the cell, and extend it
with an explanation method and an audience of your own.

Everything runs offline on scikit-learn's digits (1,797 real 8×8 images, brought to
16×16) with a budget of a few minutes on a CPU; the same calls run CIFAR-10 with
``dataset="cifar10"`` and the default budget.

    python docs/tutorials/lease.py [--out runs/tutorial_lease] [--steps 4]
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import torch
from torch import nn

from problems.lease import LeaseRun, register_explanation, wire_search
from problems.nas.config import EvalRun
from problems.nas.retrain import run_evaluation
from problems.nas.runner import run_search
from problems.nas.search import cross_entropy
from problems.nas.summary import genotype_rows

# --------------------------------------------------------------- 1. a search, as it ships


def search(out: Path, steps: int, wire=wire_search, **explanation) -> object:
    """A LeaSE search on digits: 3 cells of 4 channels, ``steps`` architecture updates,
    2-step explanations (``explanation`` adds to them), levels wired by ``wire``."""
    config = LeaseRun(
        dataset="digits",
        out=out,
        layers=3,
        init_channels=4,
        batch_size=16,
        max_steps=steps,
        epochs=1,
        workers=0,
        progress=False,
        overwrite=True,
        lease={"audience": {"arch": "resnet_tiny"}, "explanation": {"steps": 2, **explanation}},
    )
    return run_search(config, wire, title="LeaSE")


# ------------------------------------------- 2. your own explanation method, by name


@register_explanation("gradient_x_input")
def gradient_x_input(forward, x, y, start, config, pixel_std):
    """``|x ⊙ ∇_x ℓ|``, normalised to a maximum of 1 per example: what each pixel
    contributed to the loss. Differentiable through the double backward, so that the
    audience's loss reaches the architecture."""
    graph = config.differentiable and torch.is_grad_enabled()
    with torch.enable_grad():
        inputs = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(cross_entropy(forward(inputs), y), inputs, create_graph=graph)
    contribution = (x * grad).abs()
    mask = contribution / (contribution.amax(dim=(1, 2, 3), keepdim=True) + 1e-12)
    return mask if graph else mask.detach()


# --------------------------------------------------------- 3. your own audience network


class SmallCNN(nn.Module):
    """An audience that is not a ResNet: two convolutions and a linear read-out."""

    def __init__(self, channels: int = 1, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def report(title: str, result, out: Path) -> None:
    """The derived cells, one intermediate node a line, named as ``cells.png`` names them
    (``c_{k-2}``, ``c_{k-1}``: the two previous cells' outputs; ``node 0``–``node 3``)."""
    print(title)
    for name, row in genotype_rows(result.genotype).items():
        for i, node in enumerate(row.split("; ")):
            print(f"  {name if i == 0 else '':<15} {node}")
    pictures = [result.files[n].relative_to(out).as_posix() for n in ("cells", "alphas")]
    print(f"  {'pictures':<15} {', '.join(pictures)}")


def main(out: Path = Path("runs/tutorial_lease"), steps: int = 4) -> dict[str, object]:
    # 1. The search as it ships: differentiable PGD explanations, a ResNet audience.
    shipped = search(out / "pgd", steps)
    report("search as it ships (differentiable PGD, ResNet audience):", shipped, out)

    # 2 and 3. The same search with the new explanation method and the new audience.
    extended = search(
        out / "extended",
        steps,
        wire=partial(wire_search, audience=SmallCNN()),
        method="gradient_x_input",
    )
    report("search extended (gradient × input, small CNN audience):", extended, out)

    # 4. Evaluate the searched cell: retrain it from scratch, report the test error.
    evaluation = run_evaluation(
        EvalRun(
            dataset="digits",
            genotype=str(shipped.files["genotype"]),
            out=out / "evaluate",
            epochs=1,
            max_steps=steps * 5,
            layers=3,
            init_channels=8,
            batch_size=32,
            workers=0,
            progress=False,
            overwrite=True,
            auxiliary_weight=0.0,
            cutout=0,
        )
    )
    print(
        f"test error of the retrained cell ({steps * 5} steps): {100 * evaluation.test_error:.1f} %"
    )
    return {"shipped": shipped, "extended": extended, "evaluation": evaluation}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/tutorial_lease"))
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    main(args.out, args.steps)
