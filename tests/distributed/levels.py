"""Small multilevel problems built identically on one process and on N data-parallel ranks
(their data through mlo.durable.sampling.resumable_loader, sharded under torch.distributed)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import mlo
from mlo.durable.sampling import resumable_loader

FEATURES = 6


def datasets(dtype: torch.dtype):
    # The same examples in every dtype (drawn in float64, then rounded)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(96, FEATURES, generator=gen, dtype=torch.float64)
    w = torch.randn(FEATURES, 1, generator=gen, dtype=torch.float64)
    y = x @ w + 0.3 * torch.randn(96, 1, generator=gen, dtype=torch.float64)
    x, y = x.to(dtype), y.to(dtype)
    return TensorDataset(x[:48], y[:48]), TensorDataset(x[48:], y[48:])


class Scale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(FEATURES))


class Inner(mlo.Problem):
    """A linear model on features scaled by the outer level's exp(log_scale)."""

    def training_step(self, batch):
        x, y = batch
        # The mean squared error written out: F.mse_loss's backward has no working
        # forward-mode rule in torch 2.14, and the two-cg-forward case needs one.
        return ((self.module(x * self.outer.module.log_scale.exp()) - y) ** 2).mean()


class Outer(mlo.Problem):
    def training_step(self, batch):
        x, y = batch
        return F.mse_loss(self.inner.module(x), y)


def two_levels(
    solver: str,
    batch: int,
    distributed: str = "none",
    dtype: torch.dtype = torch.float64,
    wrap: bool = False,
    hidden: int | None = None,
    hvp: str = "auto",
) -> mlo.Engine:
    train, val = datasets(dtype)
    torch.manual_seed(1)
    if hidden is None:
        model: nn.Module = nn.Linear(FEATURES, 1)
    else:
        model = nn.Sequential(nn.Linear(FEATURES, hidden), nn.Tanh(), nn.Linear(hidden, 1))
    model, scale = model.to(dtype), Scale().to(dtype)
    if wrap and distributed == "ddp":  # the user's own DDP wrapper: mlo unwraps it
        model = nn.parallel.DistributedDataParallel(model)
    if wrap and distributed == "fsdp":  # the user's own FSDP2 sharding: mlo keeps it
        from torch.distributed.fsdp import fully_shard

        if hidden is not None:  # nested: the first layer its own FSDP unit, then the rest
            fully_shard(model[0])
        fully_shard(model)
    inner = Inner(
        "inner",
        model,
        torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
        data=resumable_loader(train, batch, seed=3),
        config=mlo.ProblemConfig(solver=solver, unroll_steps=2, hvp=hvp),
    )
    outer = Outer(
        "outer",
        scale,
        torch.optim.SGD(scale.parameters(), lr=0.1),
        data=resumable_loader(val, batch, seed=4),
    )
    return mlo.Engine(
        [outer, inner],
        {"outer": ["inner"]},
        mlo.EngineConfig(progress=False, distributed=distributed),
    )


class Bottom(mlo.Problem):
    def training_step(self, batch):
        x, y = batch
        return F.mse_loss(self.module(x * self.middle.module.log_scale.exp()), y)


class Middle(mlo.Problem):
    def training_step(self, batch):
        x, y = batch
        fit = F.mse_loss(self.bottom.module(x * self.module.log_scale.exp()), y)
        return fit + (self.top.module.log_scale.exp() * self.module.log_scale**2).sum()


class Top(mlo.Problem):
    def training_step(self, batch):
        x, y = batch
        return F.mse_loss(self.bottom.module(x), y)


def three_levels(
    batch: int,
    distributed: str = "none",
    dtype: torch.dtype = torch.float64,
    jacobian: str = "partial",
    solver: str = "cg",
) -> mlo.Engine:
    train, val = datasets(dtype)
    torch.manual_seed(2)
    model = nn.Linear(FEATURES, 1).to(dtype)
    middle_scale, top_scale = Scale().to(dtype), Scale().to(dtype)
    # The middle level reads the bottom one: with jacobian="total" its Jacobian is built
    # from its total gradient (nested products), with "partial" the bottom is held.
    cfg = mlo.ProblemConfig(solver=solver, jacobian=jacobian, unroll_steps=2)
    problems = [
        Top(
            "top",
            top_scale,
            torch.optim.SGD(top_scale.parameters(), lr=0.1),
            data=resumable_loader(val, batch, seed=5),
        ),
        Middle(
            "middle",
            middle_scale,
            torch.optim.SGD(middle_scale.parameters(), lr=0.1),
            data=resumable_loader(val, batch, seed=6),
            config=cfg,
        ),
        Bottom(
            "bottom",
            model,
            torch.optim.SGD(model.parameters(), lr=0.1),
            data=resumable_loader(train, batch, seed=7),
            config=cfg,
        ),
    ]
    return mlo.Engine(
        problems,
        {"top": ["middle", "bottom"], "middle": ["bottom"]},
        mlo.EngineConfig(progress=False, distributed=distributed),
    )


def parameters(engine: mlo.Engine) -> dict[str, torch.Tensor]:
    """Every level's parameters and buffers (under "fsdp", the gathered parameters)."""
    return {
        f"{name}.{key}": value.detach().clone()
        for name, p in engine.problems.items()
        for key, value in [*p.module.named_parameters(), *p.module.named_buffers()]
    }


def assert_close(a: dict, b: dict, atol: float) -> None:
    """The same keys, and every entry within ``atol`` of the other's, relative to its
    magnitude where that exceeds 1 (``atol·max(1, |b|)``): two sums in another order may
    differ by an ulp, and a float32 entry near 10 has an ulp of 9.5e-7."""
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=atol, atol=atol), (
            key,
            (a[key] - b[key]).abs().max(),
        )


def _two(solver: str):
    return lambda batch, distributed="none", dtype=torch.float64: two_levels(
        solver, batch, distributed, dtype
    )


CASES = {
    **{f"two-{s}": _two(s) for s in ["first_order", "darts", "neumann", "cg", "unroll"]},
    "three-cg": three_levels,
    **{
        f"three-{s}-total": lambda batch, distributed="none", dtype=torch.float64, s=s: (
            three_levels(batch, distributed, dtype, "total", s)
        )
        for s in ["cg", "darts", "unroll"]
    },
    "three-cg-one_system": lambda batch, distributed="none", dtype=torch.float64: three_levels(
        batch, distributed, dtype, "one_system", "cg"
    ),
    "two-cg-ddp-wrapped": lambda batch, distributed="none", dtype=torch.float64: two_levels(
        "cg", batch, distributed, dtype, wrap=True
    ),
    # Forward-over-reverse products (hvp="forward"): each Hessian-vector product averaged
    # over the ranks, as reverse mode's are.
    "two-cg-forward": lambda batch, distributed="none", dtype=torch.float64: two_levels(
        "cg", batch, distributed, dtype, hvp="forward"
    ),
    # Products from a graph built for each (hvp="recompute"), averaged the same way.
    "two-cg-recompute": lambda batch, distributed="none", dtype=torch.float64: two_levels(
        "cg", batch, distributed, dtype, hvp="recompute"
    ),
}
DTYPES = {"float64": torch.float64, "float32": torch.float32}


# distributed="fsdp": every case but unroll's (refused there: its replay needs the full
# optimizer state of every recorded step) and forward mode's (not tried with sharded
# parameters), one_system's included.
FSDP_CASES = {
    **{
        k: v
        for k, v in CASES.items()
        if "unroll" not in k and "wrapped" not in k and "forward" not in k
    },
    # The inner module sharded by the user (fully_shard, then its optimizer), as FSDP2's
    # documentation does it; the engine shards the others itself.
    "two-cg-sharded-by-the-user": lambda batch, distributed="none", dtype=torch.float64: two_levels(
        "cg", batch, distributed, dtype, wrap=True
    ),
    # ... with two FSDP units, nested (the first layer, then the rest of the model): an
    # MLP, whose Hessian is indefinite, so darts (CG amplifies rounding there, 3e-14 to
    # 4e-6 in five ticks, measured).
    "two-darts-nested-units": lambda batch, distributed="none", dtype=torch.float64: two_levels(
        "darts", batch, distributed, dtype, wrap=True, hidden=4
    ),
}
