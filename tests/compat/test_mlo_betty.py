"""The same Betty programs on Betty (betty-ml 0.1.1) and on ``mlo.betty``, with only their
``betty`` imports changed: where Betty's solver is right (neumann) the two train to the
same parameters, iteration by iteration, and a shuffled loader gives both the same
batches from the same seed (``mlo.betty`` draws from the iterators Betty's set-up makes)."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch

pytest.importorskip("betty", reason="betty-ml comes with the dev extra: pip install -e '.[dev]'")
from . import betty_programs as programs  # after the skip: it imports betty
from .batches import record_inner_batches, updates

SOURCE = Path(programs.__file__).read_text()


def on_mlo() -> types.ModuleType:
    """``betty_programs`` with its three ``from betty.… import`` lines pointing at
    ``mlo.betty`` and nothing else changed."""
    source = SOURCE
    for module in ("configs", "engine", "problems"):
        source = source.replace(f"from betty.{module} import", f"from mlo.betty.{module} import")
    assert "from mlo.betty.engine import Engine" in source
    module = types.ModuleType("betty_programs_on_mlo")
    exec(compile(source, programs.__file__, "exec"), module.__dict__)
    return module


def parameters(engine) -> dict[str, torch.Tensor]:
    return {
        f"{p.name}.{k}": v.detach().clone()
        for p in engine.problems
        for k, v in p.module.named_parameters()
    }


def iterate(engine) -> None:
    engine.global_step += 1
    engine.train_step()


@pytest.mark.parametrize("build", ["logistic_hpo", "meta_weight_net", "darts_search"])
def test_a_program_trains_to_bettys_parameters_with_only_its_imports_changed(build):
    iterations = 6
    theirs = getattr(programs, build)(iterations=iterations)
    ours = getattr(on_mlo(), build)(iterations=iterations)
    assert type(ours).__module__ == "mlo.betty.engine"
    start = parameters(ours)
    theirs.train()
    ours.train()
    for it in range(iterations):
        iterate(theirs)
        iterate(ours)
        a, b = parameters(theirs), parameters(ours)
        assert a.keys() == b.keys()
        worst = max(float((a[k] - b[k]).abs().max()) for k in a)
        assert worst < 1e-10, f"iteration {it + 1}: {worst:.3g}"
    moved = max(float((b[k] - start[k]).abs().max()) for k in b)
    assert moved > 1e-4


def test_a_shuffled_loader_gives_bettys_batches_at_the_same_seed():
    def batches_seen(source) -> list[torch.Tensor]:
        engine = source.logistic_hpo(iterations=12, shuffled=True)
        seen = record_inner_batches(engine)
        engine.train()
        for _ in range(12):  # past the end of the first epoch (8 batches)
            iterate(engine)
        return seen

    theirs, ours = batches_seen(programs), batches_seen(on_mlo())
    assert len(ours) >= 12 and len(theirs) >= 12
    a, b = updates(theirs)[:12], updates(ours)[:12]
    assert len(a) == len(b) == 12
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a[:8], a[8:]))  # reshuffled


def test_running_statistics_are_bettys_by_default():
    theirs = programs.meta_weight_net(batchnorm=True)
    ours = on_mlo().meta_weight_net(batchnorm=True)
    theirs.train()
    ours.train()
    for _ in range(6):
        iterate(theirs)
        iterate(ours)
    a = dict(theirs.problems[1].module.named_buffers())
    b = dict(ours.problems[1].module.named_buffers())
    assert int(a["0.num_batches_tracked"]) == int(b["0.num_batches_tracked"]) == 18
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert float(a["0.running_mean"].abs().max()) > 1e-3
