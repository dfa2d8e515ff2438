"""Levels with explicit best responses, and levels that share a batch."""

from __future__ import annotations

import pytest
import torch

import mlo

from .quadratic import DTYPE, QuadraticSpec, Vector


def explicit_engine(spec: QuadraticSpec, values, explicit: set[str]):
    """Like spec.build('cg'), but the levels in ``explicit`` solve themselves in closed form."""

    class Level(mlo.Problem):
        def training_step(self, batch):
            live = {n: getattr(self, n).module.x for n in spec.dims if n != self.name}
            live[self.name] = self.module.x
            return spec.objective(self.name, live)

    class Solved(Level):
        def best_response(self, batch):
            live = {n: getattr(self, n).module.x for n in spec.dims if n != self.name}
            return [spec.best_response(self.name, live)]

    problems = []
    for n in spec.dims:
        module = Vector(values[n])
        if n in explicit:
            problems.append(Solved(n, module, None, config=mlo.ProblemConfig(solver="explicit")))
        else:
            problems.append(
                Level(
                    n,
                    module,
                    torch.optim.SGD(module.parameters(), lr=0.1),
                    config=mlo.ProblemConfig(solver=mlo.solvers.CG(tol=0), jacobian="partial"),
                )
            )
    return mlo.Engine(problems, spec.deps, mlo.EngineConfig(progress=False))


def test_explicit_solver_matches_closed_form_at_four_levels_on_a_dag():
    spec = QuadraticSpec(
        {"a": 3, "b": 4, "c": 2, "d": 3}, {"a": ["b", "c"], "b": ["c", "d"], "c": ["d"]}, seed=2
    )
    gen = torch.Generator().manual_seed(0)
    init = {n: torch.randn(d, generator=gen, dtype=DTYPE) for n, d in spec.dims.items()}
    values = spec.solve_lowers(init)
    engine = explicit_engine(spec, values, explicit={"c", "d"})
    for top in ("a", "b"):
        got = engine.hypergradient(top)["x"]
        truth = spec.total_derivative(top, values)
        assert float((got - truth).norm() / truth.norm()) < 1e-10


def test_explicit_level_update_sets_its_best_response():
    spec = QuadraticSpec({"a": 2, "b": 3}, {"a": ["b"]}, seed=1)
    init = {"a": torch.ones(2, dtype=DTYPE), "b": torch.zeros(3, dtype=DTYPE)}
    engine = explicit_engine(spec, init, explicit={"b"})
    engine.step()
    b = engine.problems["b"].module.x.detach()
    expected = spec.best_response("b", {"a": torch.ones(2, dtype=DTYPE)})
    assert torch.allclose(b, expected, rtol=0, atol=1e-14)
    assert engine.updates == {"a": 1, "b": 1}


def test_problem_without_optimizer_or_best_response_is_refused():
    with pytest.raises(TypeError, match="does not implement best_response"):
        mlo.Problem("p", Vector(torch.zeros(2)), None)


def test_explicit_solver_on_a_level_without_best_response_is_refused():
    spec = QuadraticSpec({"a": 2, "b": 3}, {"a": ["b"]})
    init = {n: torch.zeros(d, dtype=DTYPE) for n, d in spec.dims.items()}
    with pytest.raises(ValueError, match="does not implement best_response"):
        spec.build("explicit", init)


class Recorder(mlo.Problem):
    def training_step(self, batch):
        self.seen.append(batch)
        peers = [getattr(self, n).module.x.sum() for n in self._peers]
        return (self.module.x**2).sum() * batch + sum(peers) * 0


def recorder(name, data=None, **config):
    module = Vector(torch.ones(1, dtype=DTYPE))
    p = Recorder(
        name,
        module,
        torch.optim.SGD(module.parameters(), lr=0.1),
        data=data,
        config=mlo.ProblemConfig(**config),
    )
    p.seen = []
    return p


def shared(reader_solver: str, source_solver: str = "first_order"):
    top = recorder("top", data=[10.0, 20.0])
    source = recorder("source", data=[1.0, 2.0, 3.0], solver=source_solver)
    reader = recorder("reader", batch_from="source", solver=reader_solver)
    engine = mlo.Engine(
        [top, source, reader],
        {"top": ["source"], "source": ["reader"]},
        mlo.EngineConfig(progress=False),
    )
    return engine, source, reader


def test_batch_from_makes_two_levels_see_the_same_examples():
    engine, source, reader = shared("first_order")  # first_order: only updates evaluate
    for _ in range(3):
        engine.step()
    assert source.seen == [1.0, 2.0, 3.0]
    # reader updates before source in each tick (it is source's lower level), on the batch
    # source holds at that moment: on the first tick, the one source will draw next.
    assert reader.seen == [1.0, 1.0, 2.0]
    assert source.stream.position == 3 and reader.stream.position == 0


def test_hypergradients_evaluate_a_sharing_level_on_the_current_shared_batch():
    engine, _source, reader = shared("darts", source_solver="darts")
    for _ in range(3):
        engine.step()
    reader.seen.clear()
    engine.hypergradient("top")
    assert reader.seen and set(reader.seen) == {3.0}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_from": "nobody"}, "must name another problem"),
        ({"batch_from": "reader"}, "must name another problem"),
    ],
)
def test_batch_from_must_name_another_problem(kwargs, message):
    source = recorder("source", data=[1.0])
    reader = recorder("reader", **kwargs)
    with pytest.raises(ValueError, match=message):
        mlo.Engine([source, reader], {"source": ["reader"]})


def test_batch_from_with_own_data_is_refused():
    source = recorder("source", data=[1.0])
    reader = recorder("reader", data=[2.0], batch_from="source")
    with pytest.raises(ValueError, match="has its own data and batch_from"):
        mlo.Engine([source, reader], {"source": ["reader"]})
