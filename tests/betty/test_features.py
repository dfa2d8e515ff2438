"""``mlo.betty``'s other Betty 0.2 features, each against its definition: an
``IterativeProblem`` differentiated through its unrolled steps (autograd through the same
steps written out), ``bf16``/``fp16`` precision (autocast; the loss scaler's scaled
gradient unscaled to the plain one, and its skip of an overflowing step), running
statistics in both modes, and the loggers."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn
from torch.autograd import grad

from mlo.betty.configs import Config, EngineConfig
from mlo.betty.engine import Engine
from mlo.betty.problems import HigherIterativeProblem, ImplicitProblem

from . import programs as P

# ------------------------------------------------------------ an iterative problem


class Unrolled(HigherIterativeProblem):
    def training_step(self, batch):
        return P.squared_error(self.module.w, batch) + 0.5 * (self.outer() * self.module.w**2).sum()

    def on_inner_loop_start(self):
        self.module.w.data.zero_()


class Outer(ImplicitProblem):
    def training_step(self, batch):
        return P.squared_error(self.inner.module.w, batch)


def iterative_hpo(unroll: int):
    """Betty's iterative logistic-regression example's structure (``first_order=False``
    on the upper, the inner level restarted at zero every inner loop)."""
    x, y = P.digits(0, 120)
    inner_module = P.Vector(torch.zeros(P.FEATURES, dtype=P.DTYPE))
    outer_module = P.Vector(torch.full((P.FEATURES,), 0.5, dtype=P.DTYPE))
    inner = Unrolled(
        name="inner",
        module=inner_module,
        optimizer=torch.optim.SGD(inner_module.parameters(), lr=0.3),
        train_data_loader=P.batches(x[:60], y[:60], 10),
        config=Config(unroll_steps=unroll),
    )
    outer = Outer(
        name="outer",
        module=outer_module,
        optimizer=torch.optim.SGD(outer_module.parameters(), lr=2.0),
        train_data_loader=P.batches(x[60:], y[60:], 20),
        config=Config(first_order=False, retain_graph=True),
    )
    return Engine(
        problems=[outer, inner],
        config=EngineConfig(train_iters=2 * unroll, strategy="cpu"),
        dependencies={"u2l": {outer: [inner]}, "l2u": {inner: [outer]}},
    )


def test_an_iterative_problem_is_differentiated_through_its_unrolled_steps():
    unroll = 3
    engine = iterative_hpo(unroll)
    inner_data = engine.inner.train_data_loader[0]
    outer_data = engine.outer.train_data_loader[0]
    o = engine.outer.module.w.detach().clone()
    count = 0
    for k in range(2):  # two inner loops, each ending in an outer step
        ov = o.clone().requires_grad_()
        w = torch.zeros_like(o).requires_grad_()
        for _ in range(unroll):
            b = inner_data[count % len(inner_data)]
            count += 1
            loss = P.squared_error(w, b) + 0.5 * (ov * w**2).sum()
            w = w - 0.3 * grad(loss, w, create_graph=True)[0]
        g = grad(P.squared_error(w, outer_data[k % len(outer_data)]), ov)[0]
        o = o - 2.0 * g
    assert engine.mlo.problems["inner"].config.solver.name == "unroll"
    engine.run()
    assert float((engine.outer.module.w.detach() - o).abs().max()) < 1e-10
    assert float(g.abs().max()) > 1e-4


# ------------------------------------------------------------ precision


class Linear(ImplicitProblem):
    def training_step(self, batch):
        x, y = batch
        self.seen = (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))
        return ((self.module(x).squeeze(-1) - y) ** 2).mean() * self.cfg


def one_level(precision: str, scale: float = 4096.0, loss_factor: float = 1.0):
    x, y = P.digits(0, 32)
    torch.manual_seed(0)
    net = nn.Linear(P.FEATURES, 1)  # float32: autocast lowers its matmul
    problem = Linear(
        name="net",
        module=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        train_data_loader=P.batches(x.float(), y.float(), 8),
        config=Config(precision=precision, initial_dynamic_scale=scale),
        extra_config=loss_factor,
    )
    engine = Engine(problems=[problem], config=EngineConfig(train_iters=3, strategy="cpu"))
    return engine, problem


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_precision_runs_the_step_under_autocast_and_unscales_the_gradient(precision, dtype):
    engine, problem = one_level(precision)
    data = problem.train_data_loader[0]
    reference = {k: v.detach().clone() for k, v in problem.module.named_parameters()}
    engine.run()
    assert problem.seen == (True, dtype)
    # The same steps by hand: under autocast, the gradient of the (scaled) loss, unscaled.
    net = nn.Linear(P.FEATURES, 1)
    net.load_state_dict(reference)
    scale = 4096.0 if precision == "fp16" else 1.0
    for b in data[:3]:
        with torch.autocast("cpu", dtype=dtype):
            loss = ((net(b[0]).squeeze(-1) - b[1]) ** 2).mean()
        grads = grad(loss.float() * scale, list(net.parameters()))
        with torch.no_grad():
            for p, g in zip(net.parameters(), grads):
                p -= 0.1 * g / scale
    for name, p in net.named_parameters():
        ours = dict(problem.module.named_parameters())[name]
        assert torch.allclose(ours, p, rtol=1e-6, atol=1e-7)
    if precision == "fp16":
        assert problem.scaler.get_scale() == 4096.0  # no overflow, no growth yet


def test_the_fp16_scaler_skips_an_overflowing_step_instead_of_failing():
    engine, problem = one_level("fp16", scale=2.0**40)
    before = {k: v.detach().clone() for k, v in problem.module.named_parameters()}
    engine.train()
    engine.global_step += 1
    engine.train_step()  # the scaled fp16 backward overflows
    after = dict(problem.module.named_parameters())
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert problem.scaler.get_scale() == 2.0**39


# ------------------------------------------------------------ running statistics


class Normalised(ImplicitProblem):
    def training_step(self, batch):
        x, y = batch
        penalty = 0.5 * (self.outer() * self.module[1].weight.squeeze(0) ** 2).sum()
        return ((self.module(x).squeeze(-1) - y) ** 2).mean() + penalty


class Validated(ImplicitProblem):
    def training_step(self, batch):
        x, y = batch
        return ((self.inner(x).squeeze(-1) - y) ** 2).mean()


def forwards_counted(mode: str) -> int:
    """Train-mode forwards of a BatchNorm in the inner model (they change its running
    statistics) in 4 iterations of a two-level program."""
    x, y = P.digits(0, 64)
    torch.manual_seed(0)
    net = nn.Sequential(nn.BatchNorm1d(P.FEATURES), nn.Linear(P.FEATURES, 1)).to(P.DTYPE)
    penalty = P.Vector(torch.full((P.FEATURES,), 0.1, dtype=P.DTYPE))
    inner = Normalised(
        name="inner",
        module=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        train_data_loader=P.batches(x[:32], y[:32], 8),
        config=Config(type="darts"),
    )
    outer = Validated(
        name="outer",
        module=penalty,
        optimizer=torch.optim.SGD(penalty.parameters(), lr=0.1),
        train_data_loader=P.batches(x[32:], y[32:], 8),
    )
    engine = Engine(
        problems=[outer, inner],
        config=EngineConfig(train_iters=4, strategy="cpu", running_stats=mode),
        dependencies={"u2l": {outer: [inner]}, "l2u": {inner: [outer]}},
    )
    engine.run()
    return int(net[0].num_batches_tracked)


def test_running_statistics_update_in_every_forward_or_only_in_the_updates():
    # Per iteration: the inner update's forward and the outer update's forward through
    # the inner model count in both modes; Betty's behaviour adds darts' two
    # re-evaluations of the inner objective (tests/compat compares the statistics with
    # Betty's own), mlo's keeps those from changing them.
    assert forwards_counted("preserve") == 4 * 2
    assert forwards_counted("update") == 4 * (2 + 2)


# ------------------------------------------------------------ loggers


def test_the_tensorboard_logger_writes_losses_and_validation(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(tmp_path)
    engine = P.ridge_hpo(iterations=8, logger_type="tensorboard")
    engine.run()
    folders = list((tmp_path / "runs").iterdir())
    assert len(folders) == 1
    events = EventAccumulator(str(folders[0]))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"outer/loss", "outer/size", "validation/error"} <= tags
    steps = [e.step for e in events.Scalars("validation/error")]
    assert steps == [4, 8]


@pytest.fixture
def no_wandb(monkeypatch):
    """An environment where ``import wandb`` fails, as where it is not installed."""
    import builtins

    real_import = builtins.__import__

    def fail_on_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError("No module named 'wandb'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fail_on_wandb)


@pytest.mark.usefixtures("no_wandb")
def test_a_missing_wandb_falls_back_with_a_warning_as_betty_does():
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    keep = Keep()
    logging.getLogger("mlo.betty").addHandler(keep)
    try:
        engine = P.ridge_hpo(iterations=2, logger_type="wandb")
    finally:
        logging.getLogger("mlo.betty").removeHandler(keep)
    assert type(engine.logger).__name__ == "Logger"
    assert any('pip install "mlo[wandb]"' in r for r in records)


def test_mlos_own_engine_logs_losses_and_diagnostics_to_tensorboard(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import mlo

    x, y = P.digits(0, 32)

    class Inner(mlo.Problem):
        def training_step(self, batch):
            w = self.module.w
            return P.squared_error(w, batch) + (self.outer.module.w * w**2).sum()

    class Upper(mlo.Problem):
        def training_step(self, batch):
            return P.squared_error(self.inner.module.w, batch)

    def level(cls, name, value, config):
        module = P.Vector(torch.full((P.FEATURES,), value, dtype=P.DTYPE))
        optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
        return cls(name, module, optimizer, P.batches(x, y, 8), config)

    inner = level(Inner, "inner", 0.0, mlo.ProblemConfig(solver="cg"))
    upper = level(Upper, "outer", 0.5, None)
    config = mlo.EngineConfig(
        steps=4, log_every=2, progress=False, logger="tensorboard", log_dir=tmp_path / "tb"
    )
    mlo.Engine([upper, inner], {"outer": ["inner"]}, config).run()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/outer", "loss/inner"} <= tags
    assert any(t.startswith("inner/") for t in tags)  # cg's diagnostics
    assert [e.step for e in events.Scalars("loss/outer")] == [2, 4]


@pytest.mark.usefixtures("no_wandb")
def test_a_missing_logger_package_is_a_setup_error_in_mlos_own_engine():
    import mlo
    from mlo.loggers import make_logger

    with pytest.raises(mlo.SetupError, match=r'pip install "mlo\[wandb\]"'):
        make_logger("wandb")
    with pytest.raises(mlo.SetupError, match="logger"):
        mlo.EngineConfig(logger="mlflow")


# ------------------------------------------------------------ strategy="distributed"


@pytest.mark.slow
def test_two_ranks_train_as_one_process_with_the_doubled_batch(tmp_path):
    from ..scripts import run_child, torchrun_command
    from . import distributed_worker as worker

    out = tmp_path / "rank0.pt"
    command = [*torchrun_command(2), "-m", "tests.betty.distributed_worker", str(out)]
    done = run_child(command, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = torch.load(out)
    one = worker.build(batch=16, strategy="cpu")
    start = worker.parameters(one)
    one.run()
    single = worker.parameters(one)
    for name in single:
        assert torch.allclose(ranks[name], single[name], rtol=1e-12, atol=1e-13), name
    assert float((single["outer"] - start["outer"]).abs().max()) > 1e-4


@pytest.mark.slow
def test_the_wandb_logger_logs_losses_and_validation_offline(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb", reason="the wandb extra is not installed")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    engine = P.ridge_hpo(iterations=8, logger_type="wandb")
    assert type(engine.logger).__name__ == "WandbLogger"
    seen: list[tuple[dict, int]] = []
    log = wandb.log

    def recorded(values, step=None, **kwargs):
        seen.append((dict(values), step))
        return log(values, step=step, **kwargs)

    monkeypatch.setattr(wandb, "log", recorded)
    engine.run()
    assert wandb.run is None  # the engine's cleanup finished the run it started
    validations = [(v, s) for v, s in seen if "validation/error" in v]
    assert [s for _, s in validations] == [4, 8]
    assert any("outer/loss" in v and "outer/size" in v for v, _ in seen)
    assert list(tmp_path.rglob("*.wandb"))  # the offline run's file
