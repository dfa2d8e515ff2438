"""A two-level run that checkpoints every tick, for the SIGKILL resume test.

python -m tests.mlo.sigkill_worker CHECKPOINT_DIR RESULT_FILE STEPS [--resume]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import mlo


class Inner(mlo.Problem):
    def training_step(self, batch):
        x, y = batch
        scale = self.outer.module.weight.exp().squeeze(-1)
        return F.mse_loss(self.module(x * scale), y)


class Outer(mlo.Problem):
    def training_step(self, batch):
        time.sleep(0.05)  # slow enough that a kill lands inside the run
        x, y = batch
        return F.mse_loss(self.inner.module(x), y)


def build(checkpoint_dir: Path, steps: int, resume: Path | None) -> mlo.Engine:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 5, generator=gen), torch.randn(64, 1, generator=gen)
    train = DataLoader(
        TensorDataset(x[:40], y[:40]),
        batch_size=8,
        shuffle=True,
        generator=torch.Generator().manual_seed(2),
    )
    val = DataLoader(
        TensorDataset(x[40:], y[40:]),
        batch_size=8,
        shuffle=True,
        generator=torch.Generator().manual_seed(3),
    )
    net = nn.Sequential(nn.Linear(5, 16), nn.Dropout(0.1), nn.ReLU(), nn.Linear(16, 1))
    scale = nn.Linear(1, 5, bias=False)
    inner = Inner(
        "inner",
        net,
        torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9),
        data=train,
        config=mlo.ProblemConfig(solver="unroll", unroll_steps=3),
    )
    outer = Outer("outer", scale, torch.optim.Adam(scale.parameters(), lr=0.01), data=val)
    config = mlo.EngineConfig(
        steps=steps, progress=False, checkpoint_every=1, checkpoint_dir=checkpoint_dir, keep_last=2
    )
    return mlo.Engine([outer, inner], {"outer": ["inner"]}, config, resume=resume)


def main() -> None:
    checkpoint_dir, result, steps = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    resume = None
    if "--resume" in sys.argv:
        resume = sorted(checkpoint_dir.glob("step_*.pt"))[-1]
    engine = build(checkpoint_dir, steps, resume)
    engine.run()
    torch.save(
        {
            name: {"module": p.module.state_dict(), "optimizer": p.optimizer.state_dict()}
            for name, p in engine.problems.items()
        },
        result,
    )


if __name__ == "__main__":
    main()
