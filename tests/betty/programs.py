"""Betty 0.2 programs written as Betty's repository examples write them, importing
``mlo.betty`` where they imported ``betty``: ``ImplicitProblem`` subclasses with a
``training_step`` reaching the other levels by name, a ``Config`` per level, an
``EngineConfig``, ``u2l``/``l2u`` dependencies, and the 0.2 features the examples use
(``param_callback``, ``gradient_accumulation``, an ``Env`` stepped by a ``train_step``
override, ``on_inner_loop_start``, ``roll_back``, an ``l2u``-only edge). Small vectors in
float64 on scikit-learn's digits, so that every step can be recomputed by hand."""

from __future__ import annotations

import torch
from torch import nn

from mlo.betty.configs import Config, EngineConfig
from mlo.betty.engine import Engine
from mlo.betty.envs import Env
from mlo.betty.problems import ImplicitProblem

DTYPE = torch.float64
FEATURES = 8


def digits(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images of scikit-learn's digits 0–9, reduced to ``FEATURES`` features (the
    mean of each pixel row), with a regression target (the digit / 9)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    rows = data.data.reshape(-1, 8, 8).mean(axis=2)
    x = torch.tensor(rows, dtype=DTYPE) / 16.0
    y = torch.tensor(data.target, dtype=DTYPE) / 9.0
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
    return x[order], y[order]


def batches(x: torch.Tensor, y: torch.Tensor, size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


class Vector(nn.Module):
    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(value.clone())

    def forward(self, x: torch.Tensor | None = None) -> torch.Tensor:
        return self.w if x is None else x @ self.w


def squared_error(w: torch.Tensor, batch) -> torch.Tensor:
    x, y = batch
    return ((x @ w - y) ** 2).mean()


# ----------------------------------------------------------- learning by ignoring (3 levels)

LAM = 0.3


class Pretrain(ImplicitProblem):
    """Source training, each example weighted by the reweighting level."""

    def training_step(self, batch):
        x, y = batch
        weight = torch.sigmoid(x @ self.reweight.module.w)
        return (weight * (x @ self.module.w - y) ** 2).mean() + 0.05 * self.module.w.pow(2).sum()


class Finetune(ImplicitProblem):
    """Target training, pulled towards the pretrained parameters."""

    def training_step(self, batch):
        return (
            squared_error(self.module.w, batch)
            + LAM * (self.module.w - self.pretrain.module.w).pow(2).sum()
        )


class Reweight(ImplicitProblem):
    """Validation error of the finetuned model, with the same pull."""

    def training_step(self, batch):
        return (
            squared_error(self.finetune.module.w, batch)
            + LAM * (self.finetune.module.w - self.pretrain.module.w).pow(2).sum()
        )


def learning_by_ignoring(iterations: int = 3, seed: int = 0, **engine) -> Engine:
    """Betty's learning-by-ignoring structure: ``u2l = {reweight: [pretrain]}``,
    ``l2u = {pretrain: [finetune, reweight], finetune: [reweight]}``; finetune is an upper
    of pretrain through ``l2u`` only."""
    x, y = digits(seed, 96)
    gen = torch.Generator().manual_seed(seed)
    start = {n: 0.3 * torch.randn(FEATURES, generator=gen, dtype=DTYPE) for n in ("p", "f", "r")}
    config = Config(type="darts", darts_alpha=0.01)
    problems = {}
    for name, cls, part, value in [
        ("pretrain", Pretrain, slice(0, 32), start["p"]),
        ("finetune", Finetune, slice(32, 64), start["f"]),
        ("reweight", Reweight, slice(64, 96), start["r"]),
    ]:
        module = Vector(value)
        problems[name] = cls(
            name=name,
            module=module,
            optimizer=torch.optim.SGD(module.parameters(), lr=0.1),
            train_data_loader=batches(x[part], y[part], 8),
            config=config,
        )
    pre, fine, rew = problems["pretrain"], problems["finetune"], problems["reweight"]
    return Engine(
        problems=[rew, fine, pre],
        config=EngineConfig(train_iters=iterations, strategy="cpu", **engine),
        dependencies={"u2l": {rew: [pre]}, "l2u": {pre: [fine, rew], fine: [rew]}},
    )


# ------------------------------------------------------------ implicit MAML (an Env, accumulation)

REG = 0.5


class TaskEnv(Env):
    """Samples a task (a random slice of the digits) each outer step, as the iMAML
    example's environment does."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, seed: int) -> None:
        super().__init__()
        self.x, self.y = x, y
        self.generator = torch.Generator().manual_seed(seed)
        self.batch = {"train": None, "test": None}
        self.steps = 0

    def step(self):
        self.steps += 1
        idx = torch.randperm(len(self.x), generator=self.generator)[:16]
        x, y = self.x[idx].to(self.device), self.y[idx].to(self.device)
        self.batch = {"train": (x[:8], y[:8]), "test": (x[8:], y[8:])}


class MetaLearner(ImplicitProblem):
    def training_step(self, batch):
        return squared_error(self.inner.module.w, batch)

    def get_batch(self):
        return self.env.batch["test"]


class Adapter(ImplicitProblem):
    def training_step(self, batch):
        reg = sum(((p - q) ** 2).sum() for p, q in zip(self.parameters(), self.outer.parameters()))
        return squared_error(self.module.w, batch) + REG * reg

    def get_batch(self):
        return self.env.batch["train"]

    def on_inner_loop_start(self):
        self.module.load_state_dict(self.outer.module.state_dict())


INNER_STEPS = 2


class MAMLEngine(Engine):
    def train_step(self):
        if self.global_step % INNER_STEPS == 1 or INNER_STEPS == 1:
            self.env.step()
        for leaf in self.leaves:
            leaf.step(global_step=self.global_step)


def implicit_maml(iterations: int = 12, meta_batch: int = 3, seed: int = 0) -> MAMLEngine:
    """The iMAML example's structure: an environment samples a task every
    ``INNER_STEPS`` iterations, the inner level restarts from the outer parameters, its
    Jacobian is solved by cg, and the outer level accumulates ``meta_batch`` tasks'
    hypergradients per step."""
    x, y = digits(seed, 200)
    gen = torch.Generator().manual_seed(seed + 1)
    outer_module = Vector(0.3 * torch.randn(FEATURES, generator=gen, dtype=DTYPE))
    inner_module = Vector(torch.zeros(FEATURES, dtype=DTYPE))
    outer = MetaLearner(
        name="outer",
        module=outer_module,
        optimizer=torch.optim.SGD(outer_module.parameters(), lr=0.2),
        config=Config(gradient_accumulation=meta_batch, retain_graph=True),
    )
    inner = Adapter(
        name="inner",
        module=inner_module,
        optimizer=torch.optim.SGD(inner_module.parameters(), lr=0.1),
        config=Config(type="cg", cg_iterations=FEATURES, unroll_steps=INNER_STEPS),
    )
    return MAMLEngine(
        problems=[outer, inner],
        config=EngineConfig(train_iters=iterations, valid_step=iterations + 1, strategy="cpu"),
        dependencies={"u2l": {outer: [inner]}, "l2u": {inner: [outer]}},
        env=TaskEnv(x, y, seed),
    )


# ------------------------------------------------------------ hyperparameter optimization


class Ridge(ImplicitProblem):
    def training_step(self, batch):
        return squared_error(self.module.w, batch) + 0.5 * (self.outer() * self.module.w**2).sum()


class Penalty(ImplicitProblem):
    def training_step(self, batch):
        return {"loss": squared_error(self.inner.module.w, batch), "size": self.module.w.sum()}

    def param_callback(self):
        for p in self.trainable_parameters():
            p.data.clamp_(min=1e-8)


class ValidatedEngine(Engine):
    """Records the global step and the inner level's validation error at each validation."""

    def validation(self):
        x = torch.cat([b[0] for b in self.outer.train_data_loader[0]])
        y = torch.cat([b[1] for b in self.outer.train_data_loader[0]])
        self.seen = [*getattr(self, "seen", []), self.global_step]
        with torch.no_grad():
            return {"error": float(((self.inner(x) - y) ** 2).mean())}


def ridge_hpo(
    iterations: int = 8,
    seed: int = 0,
    roll_back: bool = False,
    unroll_steps: int = 1,
    outer_lr: float = 0.5,
    **engine,
) -> ValidatedEngine:
    """Betty's logistic-regression HPO example's structure on a ridge regression: a
    per-feature penalty kept positive by a ``param_callback``."""
    x, y = digits(seed, 160)
    inner_module = Vector(torch.zeros(FEATURES, dtype=DTYPE))
    outer_module = Vector(torch.full((FEATURES,), 0.5, dtype=DTYPE))
    inner = Ridge(
        name="inner",
        module=inner_module,
        optimizer=torch.optim.SGD(inner_module.parameters(), lr=0.1, momentum=0.5),
        train_data_loader=batches(x[:96], y[:96], 12),
        config=Config(type="cg", cg_iterations=FEATURES, unroll_steps=unroll_steps),
    )
    outer = Penalty(
        name="outer",
        module=outer_module,
        optimizer=torch.optim.SGD(outer_module.parameters(), lr=outer_lr),
        train_data_loader=batches(x[96:], y[96:], 16),
        config=Config(log_step=2),
    )
    settings = {"train_iters": iterations, "valid_step": 4, "strategy": "cpu", **engine}
    return ValidatedEngine(
        problems=[outer, inner],
        config=EngineConfig(roll_back=roll_back, **settings),
        dependencies={"u2l": {outer: [inner]}, "l2u": {inner: [outer]}},
    )
