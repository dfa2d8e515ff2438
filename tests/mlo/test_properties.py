"""Property-based checks of graph validation and config validation (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mlo


@st.composite
def dags(draw):
    n = draw(st.integers(min_value=1, max_value=8))
    names = [f"p{i}" for i in draw(st.permutations(range(n)))]
    # edges only from earlier to later in a hidden order: always acyclic
    edges = [(names[i], names[j]) for i in range(n) for j in range(i + 1, n) if draw(st.booleans())]
    return names, edges


@given(dags(), st.randoms())
@settings(max_examples=60, deadline=None)
def test_random_dags_are_accepted_with_a_consistent_order(dag, rnd):
    names, edges = dag
    shuffled = list(names)
    rnd.shuffle(shuffled)
    connected = {n for e in edges for n in e}
    if len(names) > 1 and connected != set(names):
        with pytest.raises(mlo.GraphError, match="not connected"):
            mlo.LevelGraph(shuffled, edges)
        return
    graph = mlo.LevelGraph(shuffled, edges)
    position = {n: i for i, n in enumerate(graph.order)}
    assert all(position[u] < position[lo] for u, lo in edges)
    for name in names:
        below = set(graph.descendants(name))
        assert name not in below


@given(dags(), st.data())
@settings(max_examples=60, deadline=None)
def test_graphs_with_a_cycle_are_refused_and_the_cycle_named(dag, data):
    names, edges = dag
    # close a cycle: a path a → ... → b already exists (or a single node loops), add b → a
    paths = [(u, lo) for u, lo in edges]
    if not paths:
        a = data.draw(st.sampled_from(names))
        cyclic = [(a, a)]
        message = "its own lower level"
    else:
        u, lo = data.draw(st.sampled_from(paths))
        cyclic = [*edges, (lo, u)]
        message = "cycle"
    with pytest.raises(mlo.GraphError, match=message):
        mlo.LevelGraph(names, cyclic)


INVALID = {
    "unroll_steps": st.integers(max_value=0),
    "warmup_steps": st.integers(max_value=-1),
    "grad_clip": st.floats(max_value=0.0, allow_nan=False),
    "solver": st.text(min_size=1).filter(lambda s: s not in mlo.solvers.available()),
    "reset_each_inner_loop": st.sampled_from(["maybe", 3, [1]]),
}
INVALID_ENGINE = {
    "steps": st.integers(max_value=-1),
    "log_every": st.integers(max_value=0),
    "check_finite_every": st.integers(max_value=0),
    "on_nonfinite": st.text().filter(lambda s: s not in ("raise", "skip")),
    "keep_last": st.integers(max_value=0),
    "max_consecutive_skips": st.integers(max_value=0),
}


@given(st.data())
@settings(max_examples=80, deadline=None)
def test_random_invalid_problem_config_values_are_refused_naming_the_field(data):
    field = data.draw(st.sampled_from(sorted(INVALID)))
    value = data.draw(INVALID[field])
    with pytest.raises(mlo.SetupError) as info:
        mlo.ProblemConfig(**{field: value})
    assert field in str(info.value)


@given(st.data())
@settings(max_examples=80, deadline=None)
def test_random_invalid_engine_config_values_are_refused_naming_the_field(data):
    field = data.draw(st.sampled_from(sorted(INVALID_ENGINE)))
    value = data.draw(INVALID_ENGINE[field])
    with pytest.raises(mlo.SetupError) as info:
        mlo.EngineConfig(**{field: value})
    assert field in str(info.value)


@given(st.text(min_size=1, alphabet=st.characters(categories=["Ll"])))
@settings(max_examples=40, deadline=None)
def test_unknown_config_keys_are_refused(key):
    if key in mlo.ProblemConfig.model_fields:
        return
    with pytest.raises(mlo.SetupError, match="Extra inputs are not permitted"):
        mlo.ProblemConfig(**{key: 1})
