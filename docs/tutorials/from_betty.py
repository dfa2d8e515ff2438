"""Tutorial 5: a Betty program, run by Betty and then by mlo with one added line.

Per-feature weight decay for a logistic regression on two classes of scikit-learn's
digits, written as Betty's README writes its examples (betty-ml 0.1.1). ``build()`` is
plain Betty code; ``main()`` trains one copy with Betty's engine and an identical copy
with ``mlo.from_betty(engine).run()``, and compares the two. In float64 they agree to
rounding: the Neumann solver is the same math in both libraries.

    pip install -e ".[betty,examples]"
    python docs/tutorials/from_betty.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from betty.configs import Config, EngineConfig
from betty.engine import Engine
from betty.problems import ImplicitProblem
from sklearn.datasets import load_digits
from torch import nn

import mlo

# ----------------------------------------------------------------- the Betty program


class Classifier(ImplicitProblem):
    def training_step(self, batch):
        x, y = batch
        logits = self.module(x).squeeze(-1)
        decay = 0.5 * (self.hyper() * self.module.weight.squeeze(0) ** 2).sum()
        return F.binary_cross_entropy_with_logits(logits, y) + decay


class Hyper(ImplicitProblem):
    def training_step(self, batch):
        x, y = batch
        return F.binary_cross_entropy_with_logits(self.classifier(x).squeeze(-1), y)


class LogDecay(nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.log_decay = nn.Parameter(torch.full((features,), -3.0, dtype=torch.float64))

    def forward(self) -> torch.Tensor:
        return self.log_decay.exp()


class HPOEngine(Engine):
    def validation(self):
        batches = self.hyper.train_data_loader[0]
        x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
        with torch.no_grad():
            predicted = (self.classifier(x).squeeze(-1) > 0).double()
        return {"val_accuracy": float((predicted == y).double().mean())}


def build(iterations: int, valid_step: int) -> Engine:
    torch.manual_seed(0)
    digits = load_digits(n_class=2)
    x = torch.tensor(digits.data, dtype=torch.float64) / 16.0
    y = torch.tensor(digits.target, dtype=torch.float64)
    train = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 192, 32)]
    val = [(x[i : i + 32], y[i : i + 32]) for i in range(192, 320, 32)]
    net, decay = nn.Linear(64, 1).double(), LogDecay(64)
    classifier = Classifier(
        name="classifier",
        module=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.5),
        train_data_loader=train,
        config=Config(type="neumann", neumann_iterations=5, neumann_alpha=0.5, unroll_steps=5),
        device="cpu",
    )
    hyper = Hyper(
        name="hyper",
        module=decay,
        optimizer=torch.optim.Adam(decay.parameters(), lr=0.05),
        train_data_loader=val,
        config=Config(),
        device="cpu",
    )
    return HPOEngine(
        problems=[hyper, classifier],
        config=EngineConfig(train_iters=iterations, valid_step=valid_step),
        dependencies={"u2l": {hyper: [classifier]}, "l2u": {classifier: [hyper]}},
    )


# ---------------------------------------------------------------- Betty, then mlo


def main(iterations: int = 100, valid_step: int = 50) -> dict[str, float]:
    with_betty = build(iterations, valid_step)
    with_betty.run()

    program = mlo.from_betty(build(iterations, valid_step), progress=False)  # the migration
    program.describe()
    program.run()

    theirs = dict(with_betty.problems[0].module.named_parameters())
    ours = dict(program.problems["hyper"].module.named_parameters())
    difference = float((theirs["log_decay"] - ours["log_decay"]).detach().abs().max())
    tick, stats = program.validations[-1]
    print(f"{program.tick} hyper updates, {program.updates['classifier']} classifier updates")
    print(f"validation at tick {tick}: {stats}")
    print(f"largest difference from Betty's log decay: {difference:.2e}")
    return {"difference": difference, "ticks": program.tick, **stats}


if __name__ == "__main__":
    main()
