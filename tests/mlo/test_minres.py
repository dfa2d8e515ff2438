"""MINRES against a dense solve: symmetric indefinite systems, in float64, exact after
as many steps as the dimension; extra steps change nothing."""

from __future__ import annotations

import pytest
import torch

from mlo.autodiff.minres import minres

DTYPE = torch.float64


def system(n: int, seed: int, indefinite: bool) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=DTYPE))
    eig = torch.linspace(0.5, 4.0, n, dtype=DTYPE)
    if indefinite:
        eig[::2] = -eig[::2]
    return q @ torch.diag(eig) @ q.T, torch.randn(n, generator=gen, dtype=DTYPE)


@pytest.mark.parametrize("indefinite", [False, True], ids=["definite", "indefinite"])
@pytest.mark.parametrize("n", [1, 5, 23])
def test_minres_solves_a_symmetric_system_in_n_steps(n, indefinite):
    a, b = system(n, n, indefinite)
    truth = torch.linalg.solve(a, b)
    # The vector split in two tensors, as a level's parameters are.
    parts = [b[: n // 2], b[n // 2 :]]

    def matvec(x):
        y = a @ torch.cat(x)
        return [y[: n // 2], y[n // 2 :]]

    for steps in (n, 3 * n):  # exact at n; more steps leave it
        got = torch.cat(minres(matvec, parts, steps))
        assert float((got - truth).norm() / truth.norm()) < 1e-9, steps


def test_minres_makes_progress_before_n_steps():
    a, b = system(40, 0, True)
    truth = torch.linalg.solve(a, b)
    errors = [float((minres(lambda x: [a @ x[0]], [b], k)[0] - truth).norm()) for k in (5, 20, 40)]
    residuals = [float((a @ minres(lambda x: [a @ x[0]], [b], k)[0] - b).norm()) for k in (5, 20)]
    assert residuals[1] < residuals[0]  # MINRES: the residual never grows
    assert errors[2] < 1e-8
