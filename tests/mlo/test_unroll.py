"""The unroll solver against closed forms of K optimizer steps and explicit autograd."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mlo

from .quadratic import DTYPE, Vector, spd
from .saved_bytes import SavedBytes

N_INNER, N_OUTER = 5, 3


def quadratic_pair(optimizer_factory, k: int, seed: int = 0, checkpoint: bool | str = False):
    """Inner f(x, y) = ½xᵀAx + xᵀBy + cᵀx; outer F(y, x) = ½‖x − t‖² + ½ρ‖y‖²."""
    gen = torch.Generator().manual_seed(seed)
    A = spd(N_INNER, gen)
    B = torch.randn(N_INNER, N_OUTER, generator=gen, dtype=DTYPE)
    c = torch.randn(N_INNER, generator=gen, dtype=DTYPE)
    t = torch.randn(N_INNER, generator=gen, dtype=DTYPE)
    rho = 0.3
    x0 = torch.randn(N_INNER, generator=gen, dtype=DTYPE)
    y0 = torch.randn(N_OUTER, generator=gen, dtype=DTYPE)

    class Inner(mlo.Problem):
        def training_step(self, batch):
            x, y = self.module.x, self.outer.module.x
            return 0.5 * x @ A @ x + x @ B @ y + c @ x

    class Outer(mlo.Problem):
        def training_step(self, batch):
            x, y = self.inner.module.x, self.module.x
            return 0.5 * (x - t) @ (x - t) + 0.5 * rho * y @ y

    xm, ym = Vector(x0), Vector(y0)
    inner = Inner(
        "inner",
        xm,
        optimizer_factory(xm.parameters()),
        config=unroll_config(checkpoint, k),
    )
    # lr = 0 keeps y fixed, so that the closed form can use y0 after engine.step().
    outer = Outer("outer", ym, torch.optim.SGD(ym.parameters(), lr=0.0))
    engine = mlo.Engine([outer, inner], {"outer": ["inner"]}, mlo.EngineConfig(progress=False))
    return engine, dict(A=A, B=B, c=c, t=t, rho=rho, x0=x0, y0=y0)


CHECKPOINT = pytest.mark.parametrize(
    "checkpoint", [False, True, "forward"], ids=["one_graph", "checkpoint", "forward"]
)


def unroll_config(checkpoint: bool | str, k: int) -> mlo.ProblemConfig:
    """``unroll`` over K steps: with one graph, checkpointed, or checkpointed with each
    step's second-order products by forward-over-reverse (``hvp="forward"``)."""
    forward = checkpoint == "forward"
    solver = mlo.solvers.Unroll(checkpoint=True if forward else checkpoint)
    return mlo.ProblemConfig(solver=solver, unroll_steps=k, hvp="forward" if forward else "auto")


@CHECKPOINT
@pytest.mark.parametrize("k", [1, 3, 7])
def test_unroll_matches_closed_form_of_k_gradient_descent_steps(k, checkpoint):
    lr = 0.2
    engine, q = quadratic_pair(lambda p: torch.optim.SGD(p, lr=lr), k, checkpoint=checkpoint)
    engine.step()
    A, B, y = q["A"], q["B"], q["y0"]
    eye = torch.eye(N_INNER, dtype=DTYPE)
    # x_K = (I − ηA)^K x_0 − η Σ_{j<K} (I − ηA)^j (B y + c)  ⇒  dx_K/dy = −η Σ_j (I − ηA)^j B
    M = eye - lr * A
    jac = -lr * sum(torch.linalg.matrix_power(M, j) for j in range(k)) @ B
    x_k = torch.linalg.matrix_power(M, k) @ q["x0"] - lr * sum(
        torch.linalg.matrix_power(M, j) for j in range(k)
    ) @ (B @ y + q["c"])
    assert torch.allclose(engine.problems["inner"].module.x.detach(), x_k, rtol=0, atol=1e-12)
    truth = q["rho"] * y + jac.T @ (x_k - q["t"])
    got = engine.hypergradient("outer")["x"]
    assert float((got - truth).norm() / truth.norm()) < 1e-10


@CHECKPOINT
@pytest.mark.parametrize("k", [1, 4])
def test_unroll_matches_closed_form_of_sgd_with_momentum_and_weight_decay(k, checkpoint):
    lr, mu, wd = 0.1, 0.9, 0.05
    engine, q = quadratic_pair(
        lambda p: torch.optim.SGD(p, lr=lr, momentum=mu, weight_decay=wd), k, checkpoint=checkpoint
    )
    # Two ticks: the second window starts from a non-empty momentum buffer.
    engine.step()
    state_x = engine.problems["inner"].module.x.detach().clone()
    buf = (
        engine.problems["inner"]
        .optimizer.state[engine.problems["inner"].module.x]["momentum_buffer"]
        .clone()
    )
    engine.step()
    A, B, c, y = q["A"], q["B"], q["c"], q["y0"]
    Aw = A + wd * torch.eye(N_INNER, dtype=DTYPE)
    # Linear recurrence: g_j = Aw x_j + B y + c; b_j = μ b_{j−1} + g_j; x_{j+1} = x_j − η b_j.
    x, b = state_x, buf
    Dx = torch.zeros(N_INNER, N_OUTER, dtype=DTYPE)
    Db = torch.zeros(N_INNER, N_OUTER, dtype=DTYPE)  # the starting buffer is a constant
    for _ in range(k):
        g = Aw @ x + B @ y + c
        b = mu * b + g
        Db = mu * Db + Aw @ Dx + B
        x = x - lr * b
        Dx = Dx - lr * Db
    assert torch.allclose(engine.problems["inner"].module.x.detach(), x, rtol=0, atol=1e-12)
    truth = q["rho"] * y + Dx.T @ (x - q["t"])
    got = engine.hypergradient("outer")["x"]
    assert float((got - truth).norm() / truth.norm()) < 1e-10


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))

    def forward(self, x):
        return self.net(x)


class FeatureScale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(4))


class Inner(mlo.Problem):
    """An MLP's squared error on inputs scaled by the outer level's feature scales."""

    def training_step(self, batch):
        x, y = batch
        return ((self.module(x * self.outer.module.log_scale.exp()) - y) ** 2).mean()


class Outer(mlo.Problem):
    """The inner MLP's squared error on the outer level's (validation) batches."""

    def training_step(self, batch):
        x, y = batch
        return ((self.inner.module(x) - y) ** 2).mean()


@pytest.mark.parametrize(
    "optimizer",
    [
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3, nesterov=True),
        lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=1e-3),
        lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
    ],
    ids=["sgd_nesterov", "adam", "adamw"],
)
@CHECKPOINT
def test_unroll_equals_autograd_through_explicit_loop_on_mlp(optimizer, checkpoint):
    """Inner: an MLP on scaled inputs; outer: the per-feature input scales, on other data."""
    torch.manual_seed(0)
    k = 3
    batches = [(torch.randn(16, 4, dtype=DTYPE), torch.randn(16, 1, dtype=DTYPE)) for _ in range(5)]
    val = (torch.randn(32, 4, dtype=DTYPE), torch.randn(32, 1, dtype=DTYPE))
    mlp, scale = MLP().double(), FeatureScale().double()
    start = {n: p.detach().clone() for n, p in mlp.named_parameters()}

    def inner_loss(params, log_scale, batch):
        x, y = batch
        pred = torch.func.functional_call(mlp, params, (x * log_scale.exp(),))
        return ((pred - y) ** 2).mean()

    inner = Inner(
        "inner",
        mlp,
        optimizer(mlp.parameters()),
        data=batches,
        config=unroll_config(checkpoint, k),
    )
    outer = Outer("outer", scale, torch.optim.SGD(scale.parameters(), lr=0.0), data=[val])
    engine = mlo.Engine([outer, inner], {"outer": ["inner"]}, mlo.EngineConfig(progress=False))
    engine.step()
    got = engine.hypergradient("outer")["log_scale"]

    # The same K steps written out with torch.optim's update rules, by hand.
    ref_opt = optimizer([torch.zeros(1)])  # only for its hyperparameters
    group = ref_opt.param_groups[0]
    log_scale = scale.log_scale.detach().clone().requires_grad_(True)
    params = {n: v.clone().requires_grad_(True) for n, v in start.items()}
    state = {n: {} for n in params}
    for step, batch in enumerate(batches[:k], start=1):
        grads = torch.autograd.grad(
            inner_loss(params, log_scale, batch), list(params.values()), create_graph=True
        )
        new = {}
        for (n, p), g in zip(params.items(), grads):
            s = state[n]
            if isinstance(ref_opt, torch.optim.SGD):
                d = g + group["weight_decay"] * p
                s["buf"] = d if "buf" not in s else group["momentum"] * s["buf"] + d
                d = d + group["momentum"] * s["buf"]
                new[n] = p - group["lr"] * d
            else:
                b1, b2 = group["betas"]
                if isinstance(ref_opt, torch.optim.AdamW):
                    p = p * (1 - group["lr"] * group["weight_decay"])
                else:
                    g = g + group["weight_decay"] * p
                s["m"] = b1 * s.get("m", 0) + (1 - b1) * g
                s["v"] = b2 * s.get("v", 0) + (1 - b2) * g * g
                m_hat = s["m"] / (1 - b1**step)
                v_hat = s["v"] / (1 - b2**step)
                new[n] = p - group["lr"] * m_hat / (v_hat.sqrt() + group["eps"])
        params = new
    for n, p in mlp.named_parameters():
        assert torch.allclose(params[n].detach(), p.detach(), rtol=0, atol=1e-12), n
    x, y = val
    f_outer = ((torch.func.functional_call(mlp, params, (x,)) - y) ** 2).mean()
    truth = torch.autograd.grad(f_outer, log_scale)[0]
    assert float((got - truth).norm() / truth.norm()) < 1e-10


def test_unroll_through_three_levels_equals_edgewise_autograd():
    """At three levels, unroll applies each edge's replay in turn (adjoint propagation)."""
    from .quadratic import QuadraticSpec

    spec = QuadraticSpec({"a": 2, "b": 3, "c": 4}, {"a": ["b"], "b": ["c"]}, seed=3)
    gen = torch.Generator().manual_seed(7)
    init = {n: torch.randn(d, generator=gen, dtype=DTYPE) for n, d in spec.dims.items()}
    lr = 0.1
    engine = spec.build("unroll", init, lr=lr)
    for name in ("a",):
        engine.problems[name].optimizer.param_groups[0]["lr"] = 0.0
    engine.step()
    values = {n: engine.problems[n].module.x.detach() for n in spec.dims}
    # One GD step of c from its recorded start, as a function of b; one of b as a function of a.
    traj_c = engine.trajectories["c"].records[-1].params[0]
    traj_b = engine.trajectories["b"].records[-1].params[0]
    a = values["a"].clone().requires_grad_(True)

    def step(name, start, live):
        x = start.clone().requires_grad_(True)
        env = {**values, **live, name: x}
        g = torch.autograd.grad(spec.objective(name, env), x, create_graph=True)[0]
        return x - lr * g

    b = step("b", traj_b, {"a": a})
    b_value = b.detach()
    b_live = b_value + (b - b.detach())
    c = step("c", traj_c, {"b": b_live})
    c_live = values["c"] + (c - c.detach())
    b_live = values["b"] + (b - b.detach())
    truth = torch.autograd.grad(spec.objective("a", {"a": a, "b": b_live, "c": c_live}), a)[0]
    got = engine.hypergradient("a")["x"]
    assert float((got - truth).norm() / truth.norm()) < 1e-10


def test_unroll_refuses_unsupported_optimizer_with_a_clear_message():
    engine, _ = quadratic_pair(lambda p: torch.optim.RMSprop(p, lr=0.1), 1)
    with pytest.raises(TypeError, match="RMSprop is not supported"):
        engine.step()


def _replay_saved_bytes(k: int, checkpoint: bool | None) -> int:
    """The most bytes autograd holds while ``unroll`` replays k steps of an MLP's Adam."""
    torch.manual_seed(0)
    batches = [(torch.randn(64, 4, dtype=DTYPE), torch.randn(64, 1, dtype=DTYPE)) for _ in range(k)]
    mlp, scale = MLP().double(), FeatureScale().double()

    solver = mlo.solvers.Unroll(checkpoint=checkpoint)
    inner = Inner(
        "inner",
        mlp,
        torch.optim.Adam(mlp.parameters(), lr=0.01),
        data=batches,
        config=mlo.ProblemConfig(solver=solver, unroll_steps=k),
    )
    outer = Outer("outer", scale, torch.optim.SGD(scale.parameters(), lr=0.0), data=batches[:1])
    engine = mlo.Engine([outer, inner], {"outer": ["inner"]}, mlo.EngineConfig(progress=False))
    for _ in range(k):  # fill the window
        engine.step()
    with SavedBytes() as saved:
        engine.hypergradient("outer")
    return saved.peak


def test_checkpointed_unroll_holds_one_steps_graph_whatever_k():
    """Reverse mode through K steps holds K steps' graphs; the checkpointed replay one."""
    one_graph = {k: _replay_saved_bytes(k, checkpoint=False) for k in (1, 8)}
    checkpointed = {k: _replay_saved_bytes(k, checkpoint=True) for k in (1, 8)}
    assert one_graph[8] > 6 * one_graph[1]
    assert checkpointed[8] < 1.2 * checkpointed[1]
    assert checkpointed[1] < 1.2 * one_graph[1]
    # The default checkpoints from K = 4 on.
    assert _replay_saved_bytes(8, checkpoint=None) < 1.2 * checkpointed[1]
    assert _replay_saved_bytes(3, checkpoint=None) > 2.5 * one_graph[1]
    assert mlo.solvers.Unroll().products(3) == 4 and mlo.solvers.Unroll().products(4) == 12


def _dropout_hypergradient(checkpoint: bool | str) -> tuple[torch.Tensor, torch.Tensor]:
    """The outer hypergradient through 4 replayed Adam steps of an MLP with dropout, and
    the next random numbers after it."""
    torch.manual_seed(0)
    batches = [(torch.randn(16, 4, dtype=DTYPE), torch.randn(16, 1, dtype=DTYPE)) for _ in range(4)]
    mlp, scale = MLP().double(), FeatureScale().double()
    mlp.net.insert(2, nn.Dropout(0.3))
    inner = Inner(
        "inner",
        mlp,
        torch.optim.Adam(mlp.parameters(), lr=0.01),
        data=batches,
        config=unroll_config(checkpoint, 4),
    )
    outer = Outer("outer", scale, torch.optim.SGD(scale.parameters(), lr=0.0), data=batches[:1])
    engine = mlo.Engine([outer, inner], {"outer": ["inner"]}, mlo.EngineConfig(progress=False))
    for _ in range(4):
        engine.step()
    torch.manual_seed(7)
    problem = engine.hypergradients.level("inner", ["outer"])
    result = engine.problems["inner"].config.solver.vjp(
        problem,
        [torch.ones_like(p) for p in problem.params],
        [engine.problems["outer"].params.tensors],
    )
    return result.vjps[0][0].detach(), torch.rand(2)


def test_a_checkpointed_replay_draws_the_dropout_masks_of_the_one_graph_replay():
    """Each step is evaluated again on the way back: from the random state it first drew
    from, so that its masks, and the numbers the replay consumes, are the one graph's."""
    truth, after = _dropout_hypergradient(False)
    assert float(truth.abs().max()) > 1e-6
    for variant in (True, "forward"):
        got, next_numbers = _dropout_hypergradient(variant)
        assert torch.allclose(got, truth, rtol=1e-12, atol=1e-15), variant
        assert torch.equal(next_numbers, after), variant


def test_describe_shows_an_unroll_levels_products_only_when_asked_for():
    engine, _ = quadratic_pair(lambda p: torch.optim.SGD(p, lr=0.1), 4, checkpoint="forward")
    assert "hvp=forward" in engine.describe()
    engine, _ = quadratic_pair(lambda p: torch.optim.SGD(p, lr=0.1), 4, checkpoint=True)
    assert "hvp=" not in engine.describe()  # "auto" keeps unroll in reverse mode
