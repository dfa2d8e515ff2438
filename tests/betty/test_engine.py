"""``mlo.betty`` (issue 31) against Betty's semantics written out by hand in float64: the
schedule of an ``l2u``-only edge and its hypergradient along Betty's paths, gradient
accumulation with an environment and a ``train_step`` override, ``roll_back``,
``param_callback``, ``global_step`` and ``validation``. No Betty is imported."""

from __future__ import annotations

import logging

import pytest
import torch
from torch.autograd import grad

from mlo.betty.configs import Config, EngineConfig
from mlo.betty.engine import Engine
from mlo.betty.problems import ImplicitProblem
from mlo.errors import SetupError

from . import programs as P


def state(engine) -> dict[str, torch.Tensor]:
    return {p.name: p.module.w.detach().clone() for p in engine.problems}


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-10) -> bool:
    return float((a - b).abs().max()) <= tol * max(1.0, float(b.abs().max()))


def run(engine, iterations: int) -> None:
    engine.train()
    for _ in range(iterations):
        engine.global_step += 1
        engine.train_step()


# ------------------------------------------------------------ learning by ignoring


def lbi_by_hand(engine, iterations: int) -> list[dict[str, torch.Tensor]]:
    """Betty's order (pretrain, finetune, reweight) and Betty's two paths for reweight,
    ``[reweight, finetune, pretrain, reweight]`` and ``[reweight, pretrain, reweight]``,
    each Jacobian applied as darts does, ``-∂²f_L/∂θ_U∂θ_L v``, here exactly."""
    start = state(engine)
    p, f, r = (start[n].clone().requires_grad_() for n in ("pretrain", "finetune", "reweight"))
    data = {n: engine.mlo.problems[n].problem.train_data_loader[0] for n in start}

    def f_pre(p, r, b):
        x, y = b
        return (torch.sigmoid(x @ r) * (x @ p - y) ** 2).mean() + 0.05 * p.pow(2).sum()

    def f_fine(f, p, b):
        return P.squared_error(f, b) + P.LAM * (f - p).pow(2).sum()

    out = []
    for it in range(iterations):
        bp, bf, br = (data[n][it % len(data[n])] for n in ("pretrain", "finetune", "reweight"))
        p = (p - 0.1 * grad(f_pre(p, r, bp), p)[0]).detach().requires_grad_()
        f = (f - 0.1 * grad(f_fine(f, p, bf), f)[0]).detach().requires_grad_()
        v_f, v_p = grad(f_fine(f, p, br), [f, p])  # reweight's loss has finetune's form
        g_f = grad(f_fine(f, p, bf), f, create_graph=True)[0]
        w = v_p - grad(g_f, p, v_f)[0]
        g_p = grad(f_pre(p, r, bp), p, create_graph=True)[0]
        g_r = -grad(g_p, r, w)[0]
        r = (r - 0.1 * g_r).detach().requires_grad_()
        out.append({"pretrain": p.detach(), "finetune": f.detach(), "reweight": r.detach()})
    return out


def test_an_l2u_only_edge_gets_bettys_order_and_paths():
    reference = lbi_by_hand(P.learning_by_ignoring(), 3)
    engine = P.learning_by_ignoring()
    assert [p.name for p in engine.leaves] == ["pretrain"]
    assert [[n.name for n in path] for path in engine.reweight.paths] == [
        ["reweight", "finetune", "pretrain", "reweight"],
        ["reweight", "pretrain", "reweight"],
    ]
    # mlo's Jacobian graph: pretrain's solution is a function of reweight, finetune's of
    # pretrain (it reads it); no level depends on finetune.
    assert engine.mlo.graph.children["reweight"] == ["pretrain"]
    assert engine.mlo.graph.children["pretrain"] == ["finetune"]
    start = state(engine)
    for it, expected in enumerate(reference):
        run(engine, 1)
        now = state(engine)
        for name in now:
            assert close(now[name], expected[name], 1e-9), (it, name)
    assert float((now["reweight"] - start["reweight"]).abs().max()) > 1e-4


# ------------------------------------------------------------ iMAML: env, accumulation


def imaml_by_hand(engine, iterations: int, meta_batch: int) -> torch.Tensor:
    env = engine.env
    gen = torch.Generator().manual_seed(0)
    gen.set_state(env.generator.get_state())
    o = engine.outer.module.w.detach().clone()
    i = None
    acc = torch.zeros_like(o)
    count = micro = 0
    task = None

    def f_in(i, o, b):
        return P.squared_error(i, b) + P.REG * ((i - o) ** 2).sum()

    for step in range(1, iterations + 1):
        if step % P.INNER_STEPS == 1:
            idx = torch.randperm(len(env.x), generator=gen)[:16]
            x, y = env.x[idx], env.y[idx]
            task = {"train": (x[:8], y[:8]), "test": (x[8:], y[8:])}
        if count % P.INNER_STEPS == 0:
            i = o.clone()  # on_inner_loop_start
        count += 1  # noqa: SIM113 (Betty's step count, as the engine keeps it)
        i = i.requires_grad_()
        i = (i - 0.1 * grad(f_in(i, o, task["train"]), i)[0]).detach()
        if count % P.INNER_STEPS == 0:
            micro += 1
            iv, ov = i.clone().requires_grad_(), o.clone().requires_grad_()
            v = grad(P.squared_error(iv, task["test"]), iv)[0]
            train = task["train"]
            hessian = torch.autograd.functional.hessian(lambda t, o=o, b=train: f_in(t, o, b), i)
            u = torch.linalg.solve(hessian, v)
            g_i = grad(f_in(iv, ov, task["train"]), iv, create_graph=True)[0]
            acc += -grad(g_i, ov, u)[0] / meta_batch
            if micro % meta_batch == 0:
                o = o - 0.2 * acc
                acc = torch.zeros_like(o)
    return o


def test_gradient_accumulation_with_an_env_and_a_train_step_override():
    iterations, meta_batch = 12, 3  # two outer steps of three tasks each
    reference = imaml_by_hand(P.implicit_maml(iterations, meta_batch), iterations, meta_batch)
    engine = P.implicit_maml(iterations, meta_batch)
    start = state(engine)["outer"]
    engine.run()
    assert engine.env.steps == iterations // P.INNER_STEPS
    assert engine.outer.count == iterations // P.INNER_STEPS  # micro-steps
    assert engine.mlo.updates["outer"] == iterations // P.INNER_STEPS // meta_batch
    assert close(engine.outer.module.w.detach(), reference, 1e-9)
    assert float((reference - start).abs().max()) > 1e-4


def test_an_accumulating_level_does_not_step_between_boundaries():
    engine = P.implicit_maml(iterations=4, meta_batch=3)
    start = state(engine)["outer"]
    engine.run()  # two micro-steps: no optimizer step yet
    assert engine.outer.count == 2
    assert torch.equal(engine.outer.module.w.detach(), start)
    assert all(p.grad is not None for p in engine.outer.trainable_parameters())


# ------------------------------------------------------------ roll_back, param_callback


def ridge_by_hand(engine, iterations: int, roll_back: bool, unroll: int, lr: float):
    inner_data = engine.inner.train_data_loader[0]
    outer_data = engine.outer.train_data_loader[0]
    i = engine.inner.module.w.detach().clone()
    o = engine.outer.module.w.detach().clone()
    buf = None
    cache = None
    count = outer_count = 0

    def f_in(i, o, b):
        return P.squared_error(i, b) + 0.5 * (o * i**2).sum()

    def sgd(i, buf, o, b):
        iv = i.clone().requires_grad_()
        g = grad(f_in(iv, o, b), iv)[0]
        buf = g.clone() if buf is None else 0.5 * buf + g
        return i - 0.1 * buf, buf

    start = True
    for _ in range(iterations):
        if start:
            cache = (i.clone(), None if buf is None else buf.clone())
            start = False
        count += 1  # noqa: SIM113
        b = inner_data[(count - 1) % len(inner_data)]
        i, buf = sgd(i, buf, o, b)
        if count % unroll == 0:
            bo = outer_data[outer_count % len(outer_data)]
            outer_count += 1
            iv, ov = i.clone().requires_grad_(), o.clone().requires_grad_()
            v = grad(P.squared_error(iv, bo), iv)[0]
            hessian = torch.autograd.functional.hessian(lambda t, o=o, b=b: f_in(t, o, b), i)
            g_i = grad(f_in(iv, ov, b), iv, create_graph=True)[0]
            g_o = -grad(g_i, ov, torch.linalg.solve(hessian, v))[0]
            o = (o - lr * g_o).clamp(min=1e-8)  # param_callback
            start = True
            if roll_back:
                i, buf = cache[0].clone(), None if cache[1] is None else cache[1].clone()
                i, buf = sgd(i, buf, o, b)
    return i, o


@pytest.mark.parametrize("roll_back", [False, True], ids=["plain", "roll-back"])
def test_roll_back_and_param_callback_follow_betty(roll_back):
    iterations, unroll, lr = 8, 2, 20.0  # a large outer rate, so the callback clamps
    engine = P.ridge_hpo(iterations, roll_back=roll_back, unroll_steps=unroll, outer_lr=lr)
    i_ref, o_ref = ridge_by_hand(engine, iterations, roll_back, unroll, lr)
    engine.run()
    assert close(engine.inner.module.w.detach(), i_ref, 1e-9)
    assert close(engine.outer.module.w.detach(), o_ref, 1e-9)
    assert bool((o_ref == 1e-8).any()), "the callback clamped an entry"
    assert engine.inner._roll_back is roll_back and engine.outer._roll_back is False


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_global_step_advances_and_validation_runs_every_valid_step():
    engine = P.ridge_hpo(iterations=9)
    lines = Lines()
    logging.getLogger("mlo.betty").addHandler(lines)
    try:
        engine.run()
    finally:
        logging.getLogger("mlo.betty").removeHandler(lines)
    assert engine.global_step == 9
    assert engine.seen == [4, 8]
    assert engine.outer.count == 9 and engine.inner.count == 9
    text = "\n".join(lines.lines)
    assert "[Validation] [Global Step 8] error:" in text
    assert '[Problem "outer"] [Global Step 2] [Local Step 2] loss:' in text
    assert "size:" in text  # a training_step dict's other entries are logged


def test_early_stopping_stops_on_the_validation_metric():
    class Worsening(P.ValidatedEngine):
        def validation(self):
            self.seen = [*getattr(self, "seen", []), self.global_step]
            return {"error": float(self.global_step)}  # never improves

    engine = _rebuilt(
        Worsening,
        early_stopping=True,
        early_stopping_metric="error",
        early_stopping_tolerance=3,
        valid_step=2,
    )
    engine.run()
    assert engine.seen == [2, 4, 6, 8]  # the first sets the best, three more without gain
    assert engine.global_step == 8


def _rebuilt(cls, **config):
    """``ridge_hpo``'s program under another engine class and engine settings."""
    made = P.ridge_hpo(iterations=40)
    problems = [_fresh(p) for p in made.problems]
    by = {p.name: p for p in problems}
    settings = {"train_iters": 40, "strategy": "cpu", **config}
    return cls(
        problems=problems,
        config=EngineConfig(**settings),
        dependencies={"u2l": {by["outer"]: [by["inner"]]}, "l2u": {by["inner"]: [by["outer"]]}},
    )


def _fresh(problem):
    return type(problem)(
        name=problem.name,
        module=problem.module,
        optimizer=problem.optimizer,
        train_data_loader=problem.train_data_loader[0],
        config=problem.config,
    )


# ------------------------------------------------------------ refusals


class Plain(ImplicitProblem):
    def training_step(self, batch):
        return P.squared_error(self.module.w, batch)


def _plain(name: str, **config) -> Plain:
    module = P.Vector(torch.zeros(P.FEATURES, dtype=P.DTYPE))
    x, y = P.digits(0, 16)
    return Plain(
        name=name,
        module=module,
        optimizer=torch.optim.SGD(module.parameters(), lr=0.1),
        train_data_loader=P.batches(x, y, 8),
        config=Config(**config),
    )


@pytest.mark.parametrize(
    "engine_config, problem_config, named",
    [
        ({"strategy": "zero"}, {}, "strategy='zero'"),
        ({"logger_type": "mlflow"}, {}, "logger_type='mlflow'"),
        ({}, {"type": "reinforce"}, "type='reinforce'"),
        ({}, {"precision": "fp8"}, "precision='fp8'"),
        ({}, {"gradient_accumulation": 0}, "gradient_accumulation=0"),
        ({"running_stats": "sometimes"}, {}, "running_stats='sometimes'"),
    ],
)
def test_what_mlo_cannot_honour_is_refused_by_name(engine_config, problem_config, named):
    upper, lower = _plain("upper"), _plain("lower", **problem_config)
    with pytest.raises(SetupError, match=named.replace("(", r"\(")):
        Engine(
            problems=[upper, lower],
            config=EngineConfig(**engine_config),
            dependencies={"u2l": {upper: [lower]}, "l2u": {lower: [upper]}},
        )


def test_a_dependency_outside_the_problems_and_a_missing_path_are_refused():
    upper, lower, stranger = _plain("upper"), _plain("lower"), _plain("stranger")
    with pytest.raises(SetupError, match="'stranger', which is not one of the engine's problems"):
        Engine(problems=[upper, lower], dependencies={"u2l": {upper: [stranger]}, "l2u": {}})
    with pytest.raises(SetupError, match="no l2u path leads from 'lower' up to 'upper'"):
        Engine(problems=[upper, lower], dependencies={"u2l": {upper: [lower]}, "l2u": {}})
