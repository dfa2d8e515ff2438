"""Learning by teaching: the teacher's gates' hypergradient reaches them through the
student level, checked against autograd through the same steps written out (float64,
``unroll`` with K = 1); and a few steps move the gates."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

import mlo
from problems.teaching import build

from ..reference import pinned, sgd_step


def data(seed: int, n: int = 6, features: int = 5):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=gen, dtype=torch.float64)
    return x, torch.randint(0, 3, (n,), generator=gen)


def tiny(solver: str = "unroll", lam: float = 1.0):
    torch.manual_seed(0)
    labelled = [data(1), data(2)]
    unlabelled = [(data(3)[0],), (data(4)[0],)]
    validation = [data(5)]
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        problems, deps = build(
            5, 3, labelled, unlabelled, validation, solver=solver, gate_lr=0.1, lam=lam
        )
    finally:
        torch.set_default_dtype(previous)
    return mlo.Engine(problems, deps, mlo.EngineConfig(progress=False))


def test_gate_hypergradient_through_teacher_and_student_equals_explicit_autograd():
    engine = tiny()
    for _ in range(3):
        engine.step()
    got = engine.hypergradient("relearn")["logits"]

    teacher, student, relearn = (engine.problems[n] for n in ("teacher", "student", "relearn"))
    gates = relearn.module.logits.detach().clone().requires_grad_(True)
    t_names, s_names = teacher.params.names, student.params.names

    def teacher_logits(w, x):
        return functional_call(teacher.module, dict(zip(t_names, w)), (x * torch.sigmoid(gates),))

    def student_logits(w, x):
        return functional_call(student.module, dict(zip(s_names, w)), (x,))

    record = engine.trajectories["teacher"].records[-1]
    w0 = [p.clone().requires_grad_(True) for p in record.params]
    x, y = record.batch
    g = torch.autograd.grad(F.cross_entropy(teacher_logits(w0, x), y), w0, create_graph=True)
    w_t = pinned(teacher.params.tensors, sgd_step(w0, g, record))

    record = engine.trajectories["student"].records[-1]
    s0 = [p.clone().requires_grad_(True) for p in record.params]
    (xu,) = record.batch
    targets = F.softmax(teacher_logits(w_t, xu) / student.temperature, dim=-1)
    loss = F.kl_div(F.log_softmax(student_logits(s0, xu), dim=-1), targets, reduction="batchmean")
    g = torch.autograd.grad(loss, s0, create_graph=True)
    w_s = pinned(student.params.tensors, sgd_step(s0, g, record))

    xv, yv = relearn.batch
    f = F.cross_entropy(student_logits(w_s, xv), yv) + relearn.lam * F.cross_entropy(
        teacher_logits(w_t, xv), yv
    )
    (truth,) = torch.autograd.grad(f, gates)
    assert float((got - truth).norm() / truth.norm()) < 1e-10

    # the student path alone (λ = 0) still reaches the gates: through the teacher's labels
    only_student = tiny(lam=0.0)
    for _ in range(3):
        only_student.step()
    assert only_student.hypergradient("relearn")["logits"].abs().max() > 1e-8


@pytest.mark.parametrize("solver", ["unroll", "darts"])
def test_a_few_steps_move_the_gates(solver):
    engine = tiny(solver)
    before = engine.problems["relearn"].module.logits.detach().clone()
    for _ in range(3):
        engine.step()
    after = engine.problems["relearn"].module.logits.detach()
    assert torch.isfinite(after).all() and not torch.equal(before, after)
