"""A Betty program with ``strategy="distributed"`` under torchrun (gloo, CPU): each rank
reads its shard of every DataLoader; rank 0 writes the trained parameters to the file
named by the first argument. Also run on one process with twice the batch by the test."""

from __future__ import annotations

import sys

import torch

from mlo.betty.configs import Config, EngineConfig
from mlo.betty.engine import Engine

from . import programs as P

ITERATIONS = 4


def build(batch: int, strategy: str) -> Engine:
    x, y = P.digits(0, 128)
    loaders = {
        name: torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(x[part], y[part]), batch_size=batch
        )
        for name, part in (("inner", slice(0, 64)), ("outer", slice(64, 128)))
    }
    inner_module = P.Vector(torch.zeros(P.FEATURES, dtype=P.DTYPE))
    outer_module = P.Vector(torch.full((P.FEATURES,), 0.5, dtype=P.DTYPE))
    inner = P.Ridge(
        name="inner",
        module=inner_module,
        optimizer=torch.optim.SGD(inner_module.parameters(), lr=0.1, momentum=0.5),
        train_data_loader=loaders["inner"],
        config=Config(type="cg", cg_iterations=P.FEATURES),
    )
    outer = P.Penalty(
        name="outer",
        module=outer_module,
        optimizer=torch.optim.SGD(outer_module.parameters(), lr=0.5),
        train_data_loader=loaders["outer"],
    )
    return Engine(
        problems=[outer, inner],
        config=EngineConfig(train_iters=ITERATIONS, strategy=strategy, backend="gloo"),
        dependencies={"u2l": {outer: [inner]}, "l2u": {inner: [outer]}},
    )


def parameters(engine: Engine) -> dict[str, torch.Tensor]:
    return {p.name: p.module.w.detach().clone() for p in engine.problems}


if __name__ == "__main__":
    engine = build(batch=8, strategy="distributed")
    assert engine._world_size == 2
    engine.run()  # ends by destroying the process group, as Betty's does
    if engine._rank == 0:
        torch.save(parameters(engine), sys.argv[1])
