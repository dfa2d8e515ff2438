"""Tutorial 2: three levels, the schedule, and reading hypergradients — on a problem
small enough to check by hand."""

from __future__ import annotations

import torch
from torch import nn

import mlo


class Scalar(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.x = nn.Parameter(torch.tensor([value], dtype=torch.float64))


class C(mlo.Problem):  # f_c = ½c² − b·c, so c*(b) = b
    def training_step(self, batch):
        c, b = self.module.x[0], self.b.module.x[0]
        return 0.5 * c * c - b * c


class B(mlo.Problem):  # f_b = ½b² − a·b + ½(c − 1)²: b reads its own lower level c
    def training_step(self, batch):
        b, a, c = self.module.x[0], self.a.module.x[0], self.c.module.x[0]
        return 0.5 * b * b - a * b + 0.5 * (c - 1) ** 2


class A(mlo.Problem):  # f_a = ½(c − 2)² + ½a²: a reads c, two levels down
    def training_step(self, batch):
        a, c = self.module.x[0], self.c.module.x[0]
        return 0.5 * (c - 2) ** 2 + 0.5 * a * a


def engine(jacobian: str | None = None, unroll_steps: int = 1) -> mlo.Engine:
    problems = []
    for cls, name, value in ((A, "a", 0.0), (B, "b", 0.5), (C, "c", 0.5)):
        module = Scalar(value)
        config = mlo.ProblemConfig(
            solver=mlo.solvers.CG(iterations=3), jacobian=jacobian, unroll_steps=unroll_steps
        )
        problems.append(
            cls(name, module, torch.optim.SGD(module.parameters(), lr=0.1), config=config)
        )
    return mlo.Engine(problems, {"a": ["b"], "b": ["c"]}, mlo.EngineConfig(progress=False))


def main() -> dict[str, float]:
    # The graph, each level's solver and Jacobian, and the update order of two ticks.
    engine(unroll_steps=2).describe(ticks=2)  # prints, and returns the text
    # At a = 0 the levels below sit at their nested solution b = c = ½; b*(a) = (a + 1)/2,
    # so the total derivative of f_a is a + (c − 2)/2 = −0.75.
    total = float(engine().hypergradient("a")["x"])
    partial = float(engine("partial").hypergradient("a")["x"])
    print(f"dF_a/da: {total:.6f} (exact, jacobian='total'); {partial:.6f} with c held fixed")
    return {"total": total, "partial": partial}


if __name__ == "__main__":
    main()
