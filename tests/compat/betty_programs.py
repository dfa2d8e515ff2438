"""Betty programs written as Betty's README and examples write them (betty-ml 0.1.1):
``ImplicitProblem`` subclasses with a ``training_step`` that reaches the other levels
through ``self.<name>``, a ``Config`` per level, an ``EngineConfig`` and ``u2l``/``l2u``
dependencies. Each builder returns a freshly constructed ``betty.engine.Engine`` (two
calls give two identical, independent programs) in float64 on the CPU."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from betty.configs import Config, EngineConfig
from betty.engine import Engine
from betty.problems import ImplicitProblem
from torch import nn

DTYPE = torch.float64


def quiet() -> None:
    """Betty logs its set-up at INFO to stdout through its own logger; keep test output
    to warnings."""
    import logging

    from betty.logging.logger_base import get_logger

    get_logger().setLevel(logging.WARNING)


def _batches(x: torch.Tensor, y: torch.Tensor, size: int) -> list[tuple[torch.Tensor, ...]]:
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def _digits(seed: int, n: int, features: int = 16):
    """Two classes of scikit-learn's digits (0 and 1), reduced to ``features`` pixels."""
    from sklearn.datasets import load_digits

    data = load_digits(n_class=2)
    x = torch.tensor(data.data[:, :: 64 // features], dtype=DTYPE) / 16.0
    y = torch.tensor(data.target, dtype=DTYPE)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
    return x[order], y[order]


# ------------------------------------------------------------ hyperparameter optimization


class LogL2(nn.Module):
    """Betty's logistic-regression example: a log weight decay per feature."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.log_l2 = nn.Parameter(torch.full((features,), -2.0, dtype=DTYPE))

    def forward(self) -> torch.Tensor:
        return self.log_l2.exp()


class Classifier(ImplicitProblem):
    def training_step(self, batch):
        x, y = batch
        logits = self.module(x).squeeze(-1)
        penalty = 0.5 * (self.outer() * self.module.weight.squeeze(0) ** 2).sum()
        return F.binary_cross_entropy_with_logits(logits, y) + penalty


class Hyperparameters(ImplicitProblem):
    def training_step(self, batch):
        x, y = batch
        return F.binary_cross_entropy_with_logits(self.inner(x).squeeze(-1), y)


def logistic_hpo(
    solver: str = "neumann",
    iterations: int = 8,
    seed: int = 0,
    engine_class: type[Engine] = Engine,
    shuffled: bool = False,
    **inner_config,
) -> Engine:
    quiet()
    torch.manual_seed(seed)
    x, y = _digits(seed, 240)
    train, val = _batches(x[:160], y[:160], 20), _batches(x[160:], y[160:], 20)
    if shuffled:  # the classifier's batches from a shuffling DataLoader
        dataset = torch.utils.data.TensorDataset(x[:160], y[:160])
        train = torch.utils.data.DataLoader(dataset, batch_size=20, shuffle=True)
    net = nn.Linear(16, 1).to(DTYPE)
    hyper = LogL2(16)
    config = {"type": solver, "neumann_iterations": 5, "neumann_alpha": 0.1, **inner_config}
    inner = Classifier(
        name="inner",
        module=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        train_data_loader=train,
        config=Config(**config),
        device="cpu",
    )
    outer = Hyperparameters(
        name="outer",
        module=hyper,
        optimizer=torch.optim.Adam(hyper.parameters(), lr=0.05),
        train_data_loader=val,
        config=Config(),
        device="cpu",
    )
    return engine_class(
        problems=[outer, inner],
        config=EngineConfig(train_iters=iterations, valid_step=4),
        dependencies={"u2l": {outer: [inner]}, "l2u": {inner: [outer]}},
    )


class ValidatedEngine(Engine):
    """A Betty engine with a validation() that reads the trained levels: the
    classifier's accuracy on the outer level's (validation) batches."""

    def validation(self):
        batches = self.outer.train_data_loader[0]
        x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
        with torch.no_grad():
            logits = self.inner(x).squeeze(-1)
        return {"accuracy": float(((logits > 0).to(DTYPE) == y).to(DTYPE).mean())}


# ------------------------------------------------------------------- data reweighting


class WeightNet(nn.Module):
    """Meta-Weight-Net: the weight of an example from its (detached) loss."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 1)).to(DTYPE)

    def forward(self, losses: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.layers(losses.unsqueeze(-1))).squeeze(-1)


class Reweighted(ImplicitProblem):
    def training_step(self, batch):
        x, y = batch
        losses = F.binary_cross_entropy_with_logits(self.module(x).squeeze(-1), y, reduction="none")
        weights = self.meta(losses.detach())
        return (weights * losses).mean()


class Meta(ImplicitProblem):
    def training_step(self, batch):
        x, y = batch
        return F.binary_cross_entropy_with_logits(self.classifier(x).squeeze(-1), y)


def meta_weight_net(iterations: int = 6, seed: int = 0, batchnorm: bool = False) -> Engine:
    quiet()
    torch.manual_seed(seed)
    x, y = _digits(seed, 200)
    noisy = y[:160].clone()
    flip = torch.rand(160, generator=torch.Generator().manual_seed(seed)) < 0.3
    noisy[flip] = 1 - noisy[flip]  # 30 % label noise in the training half
    net = nn.Linear(16, 1).to(DTYPE)
    if batchnorm:  # running statistics, updated by every train-mode forward pass
        net = nn.Sequential(nn.BatchNorm1d(16), net).to(DTYPE)
    weigher = WeightNet()
    classifier = Reweighted(
        name="classifier",
        module=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.2, momentum=0.9),
        train_data_loader=_batches(x[:160], noisy, 16),
        config=Config(type="neumann", neumann_iterations=3, neumann_alpha=0.2),
        device="cpu",
    )
    meta = Meta(
        name="meta",
        module=weigher,
        optimizer=torch.optim.Adam(weigher.parameters(), lr=0.01),
        train_data_loader=_batches(x[160:], y[160:], 20),
        config=Config(),
        device="cpu",
    )
    return Engine(
        problems=[meta, classifier],
        config=EngineConfig(train_iters=iterations),
        dependencies={"u2l": {meta: [classifier]}, "l2u": {classifier: [meta]}},
    )


# ---------------------------------------------------------------------- DARTS search


class Architecture(nn.Module):
    """α over three candidate operations on each of two edges."""

    def __init__(self) -> None:
        super().__init__()
        self.alpha = nn.Parameter(1e-3 * torch.randn(2, 3, dtype=DTYPE))

    def forward(self) -> torch.Tensor:
        return F.softmax(self.alpha, dim=-1)


class Supernet(nn.Module):
    """Two mixed edges (linear, tanh-linear, identity) and a classifier."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.linear = nn.ModuleList(nn.Linear(width, width) for _ in range(2)).to(DTYPE)
        self.tanh = nn.ModuleList(nn.Linear(width, width) for _ in range(2)).to(DTYPE)
        self.head = nn.Linear(width, 1).to(DTYPE)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        for edge in range(2):
            w = weights[edge]
            x = w[0] * self.linear[edge](x) + w[1] * torch.tanh(self.tanh[edge](x)) + w[2] * x
        return self.head(x).squeeze(-1)


class SupernetProblem(ImplicitProblem):
    def training_step(self, batch):
        x, y = batch
        return F.binary_cross_entropy_with_logits(self.module(x, self.arch()), y)


class ArchProblem(ImplicitProblem):
    def training_step(self, batch):
        x, y = batch
        return F.binary_cross_entropy_with_logits(self.supernet(x, self.module()), y)


def darts_search(solver: str = "neumann", iterations: int = 4, seed: int = 0) -> Engine:
    quiet()
    torch.manual_seed(seed)
    x, y = _digits(seed, 160)
    net, arch = Supernet(), Architecture()
    supernet = SupernetProblem(
        name="supernet",
        module=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9),
        train_data_loader=_batches(x[:80], y[:80], 16),
        config=Config(type=solver, neumann_iterations=2, neumann_alpha=0.05, darts_alpha=0.01),
        device="cpu",
    )
    architecture = ArchProblem(
        name="arch",
        module=arch,
        optimizer=torch.optim.Adam(arch.parameters(), lr=3e-3, betas=(0.5, 0.999)),
        train_data_loader=_batches(x[80:], y[80:], 16),
        config=Config(retain_graph=True),  # its loss reads α directly and through the net
        device="cpu",
    )
    return Engine(
        problems=[architecture, supernet],
        config=EngineConfig(train_iters=iterations),
        dependencies={"u2l": {architecture: [supernet]}, "l2u": {supernet: [architecture]}},
    )


# --------------------------------------------------------------- quadratics (closed forms)


class Vector(nn.Module):
    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.x = nn.Parameter(value.clone())


def quadratic_bilevel(dim: int = 6, cg_iterations: int = 6, seed: int = 0):
    """Lower ``f = ½yᵀAy − yᵀBx``, upper ``F = ½‖y − t‖² + ½ρ‖x‖²`` with Betty's ``cg``;
    returns the engine and the closed-form hypergradient at its current state (lower at
    its best response ``y* = A⁻¹Bx``): ``ρx + BᵀA⁻¹(y* − t)``."""
    quiet()
    gen = torch.Generator().manual_seed(seed)
    m = torch.randn(dim, dim, generator=gen, dtype=DTYPE)
    a = m @ m.T / dim + 0.5 * torch.eye(dim, dtype=DTYPE)
    b = torch.randn(dim, dim, generator=gen, dtype=DTYPE)
    t = torch.randn(dim, generator=gen, dtype=DTYPE)
    rho = 0.1
    x0 = torch.randn(dim, generator=gen, dtype=DTYPE)
    y0 = torch.linalg.solve(a, b @ x0)

    class Lower(ImplicitProblem):
        def training_step(self, batch):
            y = self.module.x
            return 0.5 * y @ a @ y - y @ b @ self.upper.module.x

    class Upper(ImplicitProblem):
        def training_step(self, batch):
            y = self.lower.module.x
            return 0.5 * (y - t) @ (y - t) + 0.5 * rho * self.module.x @ self.module.x

    data = [(torch.zeros(1, dtype=DTYPE),)]
    low, up = Vector(y0), Vector(x0)
    lower = Lower(
        name="lower",
        module=low,
        optimizer=torch.optim.SGD(low.parameters(), lr=0.1),
        train_data_loader=data,
        config=Config(type="cg", cg_iterations=cg_iterations),
        device="cpu",
    )
    upper = Upper(
        name="upper",
        module=up,
        optimizer=torch.optim.SGD(up.parameters(), lr=0.1),
        train_data_loader=data,
        config=Config(),
        device="cpu",
    )
    engine = Engine(
        problems=[upper, lower],
        config=EngineConfig(train_iters=1),
        dependencies={"u2l": {upper: [lower]}, "l2u": {lower: [upper]}},
    )
    truth = rho * x0 + b.T @ torch.linalg.solve(a, y0 - t)
    return engine, truth


def nested_chain(spec, values: dict[str, torch.Tensor], cg_iterations: int = 3) -> Engine:
    """A three-level chain a → b → c of ``tests/mlo/nested_quadratic.py``'s coupled
    quadratics as a Betty program: every level reads the levels it is connected to, as
    Betty's attributes give them."""
    quiet()

    class Level(ImplicitProblem):
        def training_step(self, batch):
            reach = {n: getattr(self, n).module.x for n in spec.dims if hasattr(self, n)}
            return spec.objective(self.name, {**reach, self.name: self.module.x})

    data = [(torch.zeros(1, dtype=DTYPE),)]
    levels = {}
    for name in spec.dims:
        module = Vector(values[name])
        levels[name] = Level(
            name=name,
            module=module,
            optimizer=torch.optim.SGD(module.parameters(), lr=0.1),
            train_data_loader=data,
            config=Config(type="cg", cg_iterations=cg_iterations),
            device="cpu",
        )
    a, b, c = levels["a"], levels["b"], levels["c"]
    return Engine(
        problems=[a, b, c],
        config=EngineConfig(train_iters=1),
        dependencies={"u2l": {a: [b], b: [c]}, "l2u": {b: [a], c: [b, a]}},
    )


def learning_by_ignoring() -> Engine:
    """The dependency structure of Betty's learning-by-ignoring example on small vectors:
    ``pretrain`` reads ``reweight`` (``u2l``), ``finetune`` reads ``pretrain`` and
    ``reweight`` reads both (``l2u``), with no ``u2l`` chain from ``finetune`` or
    ``reweight`` down to what they read except ``reweight → pretrain``."""
    quiet()
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, generator=gen, dtype=DTYPE), torch.randn(8, generator=gen, dtype=DTYPE)
    data = [(x, y)]

    class Pretrain(ImplicitProblem):
        def training_step(self, batch):
            x, y = batch
            weight = torch.sigmoid(x @ self.reweight.module.x)
            return (weight * (x @ self.module.x - y) ** 2).mean()

    class Finetune(ImplicitProblem):
        def training_step(self, batch):
            x, y = batch
            pull = (self.module.x - self.pretrain.module.x).pow(2).sum()
            return ((x @ self.module.x - y) ** 2).mean() + 0.3 * pull

    class Reweight(ImplicitProblem):
        def training_step(self, batch):
            x, y = batch
            pull = (self.finetune.module.x - self.pretrain.module.x).pow(2).sum()
            return ((x @ self.finetune.module.x - y) ** 2).mean() + 0.3 * pull

    levels = {}
    for name, cls in (("pretrain", Pretrain), ("finetune", Finetune), ("reweight", Reweight)):
        module = Vector(torch.randn(3, generator=gen, dtype=DTYPE))
        levels[name] = cls(
            name=name,
            module=module,
            optimizer=torch.optim.SGD(module.parameters(), lr=0.1),
            train_data_loader=data,
            config=Config(type="darts"),
            device="cpu",
        )
    pre, fine, rew = levels["pretrain"], levels["finetune"], levels["reweight"]
    return Engine(
        problems=[rew, fine, pre],
        config=EngineConfig(train_iters=2),
        dependencies={"u2l": {rew: [pre]}, "l2u": {pre: [fine, rew], fine: [rew]}},
    )
