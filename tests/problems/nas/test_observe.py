"""The search's monitors (accuracies, reports, α records, the final supernet accuracy)
leave every parameter, buffer and random generator bit-identical."""

from __future__ import annotations

import torch

from problems.nas.observe import search_accuracies, supernet_accuracy

from ...mlo.test_state_untouched import assert_identical
from ..lease.test_hypergradient import ExplanationConfig, tiny_lease


def state(engine):
    return {
        "modules": {n: p.module.state_dict() for n, p in engine.problems.items()},
        "flags": [m.training for p in engine.problems.values() for m in p.module.modules()],
        "data": {n: (p.stream.epoch, p.stream.position) for n, p in engine.problems.items()},
        "rng": torch.get_rng_state(),
    }


def clone(value):
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {k: clone(v) for k, v in value.items()}
    return value


def test_search_monitors_called_repeatedly_change_nothing():
    engine = tiny_lease(ExplanationConfig(steps=2))
    engine.step()
    before = clone(state(engine))
    relearn = engine.problems["relearn"]
    for _ in range(3):
        accuracies = search_accuracies(engine, relearn.batch)
        engine.report()
        engine.losses()  # re-evaluates the explicit explain level
        relearn.module.edge_strengths()
        accuracy = supernet_accuracy(
            relearn,
            engine.problems["explainer"].module,
            relearn.module,
            torch.utils.data.TensorDataset(*relearn.batch),
            torch.device("cpu"),
            batches=2,
            batch_size=2,
        )
    assert set(accuracies) == {"explainer acc", "audience acc"}
    assert 0.0 <= accuracy <= 1.0
    assert_identical(before, state(engine))
