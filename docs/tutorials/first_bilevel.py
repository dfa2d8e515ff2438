"""Tutorial 1: a first bilevel problem — one L2 penalty weight per pixel, tuned by
hypergradient on scikit-learn's digits (real images, no download)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

import mlo

# --- data: 8×8 digits, split into train / validation --------------------------------
digits = load_digits()
x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
y = torch.tensor(digits.target)
generator = torch.Generator().manual_seed(0)
order = torch.randperm(len(x), generator=generator)
train, val = order[:900], order[900:1400]
train_batches = [(x[train], y[train])]  # full-batch: one batch, cycled
val_batches = [(x[val], y[val])]


# --- the two levels -----------------------------------------------------------------
class Classifier(mlo.Problem):
    """Lower level: W*(λ) = argmin_W CE(W; train) + Σ_j exp(λ_j) ‖W[:, j]‖²."""

    def training_step(self, batch):
        images, labels = batch
        weight = self.module.weight
        penalty = (self.penalty.module.log_weight.exp() * (weight**2).sum(0)).sum()
        return F.cross_entropy(self.module(images), labels) + 1e-3 * penalty


class Penalty(mlo.Problem):
    """Upper level: min_λ CE(W*(λ); validation) — it reads the classifier's weights."""

    def training_step(self, batch):
        images, labels = batch
        return F.cross_entropy(self.classifier.module(images), labels)


class LogWeights(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.log_weight = nn.Parameter(torch.zeros(n))


def train(steps: int, tune: bool, show: bool = False) -> list[float]:
    """The validation loss after each of ``steps`` ticks, with the penalty weights tuned
    by hypergradient (``tune``), or held at their start (learning rate 0: the same
    classifier training, the same schedule, nothing learned above it)."""
    torch.manual_seed(0)
    model, penalty = nn.Linear(64, 10), LogWeights(64)
    classifier = Classifier(
        "classifier",
        model,
        torch.optim.SGD(model.parameters(), lr=0.5),
        data=train_batches,
        config=mlo.ProblemConfig(solver=mlo.solvers.CG(iterations=10), unroll_steps=20),
    )
    lr = 0.1 if tune else 0.0
    upper = Penalty(
        "penalty", penalty, torch.optim.Adam(penalty.parameters(), lr=lr), data=val_batches
    )
    engine = mlo.Engine(
        [upper, classifier], {"penalty": ["classifier"]}, mlo.EngineConfig(progress=False)
    )
    if show:
        engine.describe()  # prints the graph, the solvers, the update order of a tick
    losses = []
    for _ in range(steps):
        engine.step()  # 20 classifier steps, then one penalty step with the hypergradient
        losses.append(float(engine.losses()["penalty"]))
    return losses


def main(out: Path, steps: int = 60) -> dict[str, float]:
    tuned = train(steps, tune=True, show=True)
    fixed = train(steps, tune=False)
    for tick in range(0, steps, max(1, steps // 6)):
        print(f"tick {tick + 1:3d}: validation CE {tuned[tick]:.4f} tuned, {fixed[tick]:.4f} fixed")
    print(f"tick {steps:3d}: validation CE {tuned[-1]:.4f} tuned, {fixed[-1]:.4f} fixed")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(range(1, steps + 1), tuned, label="penalty tuned by hypergradient")
    ax.plot(range(1, steps + 1), fixed, "--", label="penalty fixed at its start")
    ax.set_xlabel("engine tick (20 classifier steps, one penalty update)")
    ax.set_ylabel("validation cross-entropy")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "validation_loss.png", dpi=120)
    plt.close(fig)
    return {"first": tuned[0], "last": tuned[-1], "fixed_last": fixed[-1]}


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("."))
