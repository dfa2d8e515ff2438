"""The one-system derivation of docs/concepts.md ("The one-system solve", issue 28)
checked against the nested truth before it is built into the engine.

For a chain ``top → l_1 → … → l_m`` of coupled nested quadratics, every level ``l_k``
with a lower level gets the Lagrangian ``L_k = f_k − λ_{k+1}ᵀ R_{k+1}`` over
``z_k = (θ_k, z_{k+1}, λ_{k+1})``, with ``R_{k+1} = ∇_{z_{k+1}} L_{k+1}`` (at the bottom
``R = ∇ f``) and ``λ_{k+1}`` the solution of ``(∂R_{k+1}/∂z_{k+1}) λ = ∇_{z_{k+1}} f_k``.
The top's hypergradient is then one linear solve with the subtree's matrix and one mixed
product: ``∂f_top/∂θ_top − (∂R_1/∂θ_top)ᵀ (∂R_1/∂z_1)⁻¹ ∇_{z_1} f_top``. Dense matrices,
float64: this is the definition, not an implementation."""

from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import jacobian

import mlo

from .nested_quadratic import NestedQuadraticSpec
from .quadratic import DTYPE
from .test_nested import nested_setup, relative_error


def chain(levels: int) -> tuple[NestedQuadraticSpec, list[str]]:
    names = [f"l{k}" for k in range(levels)]
    dims = {n: 2 + k % 2 for k, n in enumerate(names)}
    deps = {names[k]: [names[k + 1]] for k in range(levels - 1)}
    return NestedQuadraticSpec(dims, deps, seed=levels), names


class Subtree:
    """The stacked unknowns and residuals of the levels from ``names[k]`` down."""

    def __init__(self, spec: NestedQuadraticSpec, names: list[str]) -> None:
        self.spec, self.names = spec, names

    def size(self, k: int) -> int:
        """Entries of ``z_k``: θ_k, then z_{k+1} and λ_{k+1} (both of z_{k+1}'s size)."""
        own = self.spec.dims[self.names[k]]
        return own if k == len(self.names) - 1 else own + 2 * self.size(k + 1)

    def split(self, k: int, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        own = self.spec.dims[self.names[k]]
        below = self.size(k + 1)
        return z[:own], z[own : own + below], z[own + below :]

    def thetas(self, k: int, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """The parameters held in ``z_k``: θ_k and every θ below."""
        if k == len(self.names) - 1:
            return {self.names[k]: z}
        theta, below, _ = self.split(k, z)
        return {self.names[k]: theta, **self.thetas(k + 1, below)}

    def residual(self, k: int, z: torch.Tensor, above: dict[str, torch.Tensor]) -> torch.Tensor:
        """``R_k = ∇_{z_k} L_k`` with the levels above ``k`` at ``above``."""

        def lagrangian(z: torch.Tensor) -> torch.Tensor:
            values = {**above, **self.thetas(k, z)}
            f = self.spec.objective(self.names[k], values)
            if k == len(self.names) - 1:
                return f
            theta, below, lam = self.split(k, z)
            context = {**above, self.names[k]: theta}
            return f - lam @ self.residual(k + 1, below, context)

        z = z if z.requires_grad else z.clone().requires_grad_(True)
        return torch.autograd.grad(lagrangian(z), z, create_graph=True)[0]

    def point(self, k: int, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """``z_k`` at the nested solution ``values``, each λ from its linear system."""
        theta = values[self.names[k]]
        if k == len(self.names) - 1:
            return theta
        below = self.point(k + 1, values)
        above = {n: values[n] for n in self.names[: k + 1]}
        matrix = jacobian(lambda z: self.residual(k + 1, z, above), below)
        rhs = self.gradient(self.names[k], k + 1, below, above)
        lam = torch.linalg.solve(matrix.T, rhs)
        return torch.cat([theta, below, lam])

    def gradient(self, name: str, k: int, z: torch.Tensor, above: dict) -> torch.Tensor:
        """``∇_{z_k} f_name`` (zero in the λ entries: no objective reads them)."""
        z = z.clone().requires_grad_(True)
        f = self.spec.objective(name, {**above, **self.thetas(k, z)})
        return torch.autograd.grad(f, z, allow_unused=True)[0]


@pytest.mark.parametrize("levels", [3, 4, 5, 6])
def test_one_solve_over_the_subtree_gives_the_nested_hypergradient(levels):
    spec, names = chain(levels)
    gen = torch.Generator().manual_seed(levels)
    init = {n: torch.randn(d, generator=gen, dtype=DTYPE) for n, d in spec.dims.items()}
    values = spec.solve_lowers(init)
    tree = Subtree(spec, names)
    top = names[0]
    z1 = tree.point(1, values).detach()
    theta_top = values[top].clone().requires_grad_(True)
    m = jacobian(lambda z: tree.residual(1, z, {top: values[top]}), z1)
    b = jacobian(lambda t: tree.residual(1, z1, {top: t}), theta_top)
    rhs = tree.gradient(top, 1, z1, {top: values[top]})
    mu = torch.linalg.solve(m.T, rhs)
    direct = torch.autograd.grad(spec.objective(top, {**values, top: theta_top}), theta_top)[0]
    ours = direct - b.T @ mu
    truth = spec.total_derivative(top, values)
    assert float((ours - truth).norm() / truth.norm()) < 1e-10
    assert torch.allclose(m, m.T, atol=1e-10)  # the subtree's matrix is symmetric
    assert float(truth.norm()) > 1e-3


# ------------------------------------------------------------ in the engine


def with_one_system(engine: mlo.Engine) -> mlo.Engine:
    """The engine's levels again, every nested level with jacobian='one_system'."""
    for problem in engine.problems.values():
        if engine.graph.parents[problem.name] and engine.graph.children[problem.name]:
            problem.config = problem.config.model_copy(update={"jacobian": "one_system"})
    deps = {u: list(ls) for u, ls in engine.graph.children.items() if ls}
    return mlo.Engine(list(engine.problems.values()), deps, engine.config)


@pytest.mark.parametrize("graph", ["three_level_chain", "four_level_chain", "four_level_dag"])
def test_the_engine_gives_the_nested_hypergradient_by_one_system(graph):
    spec, values, engine = nested_setup(graph, mlo.solvers.CG(iterations=60, tol=0.0))
    engine = with_one_system(engine)
    assert "jacobian=one_system" in engine.describe()
    truth = spec.total_derivative("a", values)
    assert relative_error(engine.hypergradient("a")["x"], truth) < 1e-10


@pytest.mark.parametrize("levels", [5, 6])
def test_deep_coupled_chains_are_exact_by_one_system(levels):
    # Where jacobian='total' does not finish a hypergradient at 5 levels in 200 s (3
    # entries a level), one_system takes 0.6 s at 5 levels and 1.5 s at 6 with 140 MINRES
    # steps (measured; benchmarks, not this test, time it).
    names = [f"l{k}" for k in range(levels)]
    dims = {n: 3 for n in names}
    deps = {names[k]: [names[k + 1]] for k in range(levels - 1)}
    spec = NestedQuadraticSpec(dims, deps, seed=levels)
    gen = torch.Generator().manual_seed(levels)
    values = spec.solve_lowers({n: torch.randn(3, generator=gen, dtype=DTYPE) for n in names})
    engine = with_one_system(spec.build(mlo.solvers.CG(iterations=140, tol=0.0), values))
    truth = spec.total_derivative(names[0], values)
    assert relative_error(engine.hypergradient(names[0])["x"], truth) < 1e-10


TREES = {
    # b's lower levels side by side
    "siblings": {"a": ["b"], "b": ["c", "d"]},
    # branches of different depths, each nested: b → {c → e, d → f → g}
    "uneven_branches": {"a": ["b"], "b": ["c", "d"], "c": ["e"], "d": ["f"], "f": ["g"]},
    # the top reads one of b's two branches directly too
    "top_reads_a_branch": {"a": ["b", "c"], "b": ["c", "d"]},
}


@pytest.mark.parametrize("tree", list(TREES))
def test_lower_levels_side_by_side_are_branches_of_one_system(tree):
    deps = TREES[tree]
    names = sorted({n for upper, lowers in deps.items() for n in (upper, *lowers)})
    spec = NestedQuadraticSpec({n: 2 + i % 2 for i, n in enumerate(names)}, deps, seed=4)
    gen = torch.Generator().manual_seed(5)
    values = spec.solve_lowers(
        {n: torch.randn(d, generator=gen, dtype=DTYPE) for n, d in spec.dims.items()}
    )
    engine = with_one_system(spec.build(mlo.solvers.CG(iterations=200, tol=0.0), values))
    truth = spec.total_derivative("a", values)
    assert relative_error(engine.hypergradient("a")["x"], truth) < 1e-10
    assert float(truth.norm()) > 1e-3


def test_one_system_is_refused_where_it_cannot_apply():
    with pytest.raises(mlo.SetupError, match=r"one_system.*'cg' or 'neumann'"):
        mlo.ProblemConfig(solver="darts", jacobian="one_system")
    # Two branches that share a lower level (e below both c and d) are not a tree.
    dims = dict.fromkeys("abcde", 2)
    deps = {"a": ["b"], "b": ["c", "d"], "c": ["e"], "d": ["e"]}
    spec = NestedQuadraticSpec(dims, deps, seed=1)
    values = spec.solve_lowers({n: torch.zeros(2, dtype=DTYPE) for n in dims})
    engine = with_one_system(spec.build(mlo.solvers.CG(iterations=20, tol=0.0), values))
    with pytest.raises(mlo.SetupError, match="'e' lies below both 'c' and 'd'"):
        engine.hypergradient("a")


def test_a_total_level_above_a_one_system_level_is_told_what_to_do():
    # b's total Jacobian differentiates through c's products, which one_system gives as
    # values only: the error names both fixes.
    engine = nested_setup("four_level_chain", mlo.solvers.CG(iterations=30, tol=0.0))[2]
    engine.problems["c"].config = engine.problems["c"].config.model_copy(
        update={"jacobian": "one_system"}
    )
    deps = {u: list(ls) for u, ls in engine.graph.children.items() if ls}
    engine = mlo.Engine(list(engine.problems.values()), deps, engine.config)
    with pytest.raises(mlo.SetupError, match=r"problem 'c'.*jacobian='one_system' too"):
        engine.hypergradient("a")
