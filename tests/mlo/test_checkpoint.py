"""Engine checkpoints: round trip, atomic writes, safe loading, graph mismatches."""

from __future__ import annotations

import pytest
import torch

import mlo

from .test_state_untouched import assert_identical, build, snapshot


@pytest.mark.parametrize("solver", ["cg", "unroll"])
def test_save_and_load_round_trip_continues_identically(tmp_path, solver):
    reference = build(solver)
    for _ in range(5):
        reference.step()

    first = build(solver)
    for _ in range(2):
        first.step()
    first.save(tmp_path / "ckpt.pt", extra={"note": "two steps"})
    resumed = build(solver)
    assert resumed.load(tmp_path / "ckpt.pt") == {"note": "two steps"}
    assert resumed.tick == 2
    hypergradient = first.hypergradient("top")
    for name, value in resumed.hypergradient("top").items():
        assert torch.equal(value, hypergradient[name]), name
    for _ in range(3):
        resumed.step()
    assert_identical(snapshot(reference), snapshot(resumed))


def test_resume_mid_epoch_of_a_shuffling_loader_is_exact(tmp_path):
    from torch.utils.data import DataLoader, TensorDataset

    def engine_with_loader():
        e = build("darts")
        data = TensorDataset(torch.randn(20, 3), torch.randn(20, 1))
        loader = DataLoader(
            data, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(3)
        )
        e.problems["middle"].stream = mlo.data.BatchStream("middle", loader)
        return e

    reference = engine_with_loader()
    for _ in range(7):  # 14 middle updates: two epochs of 5 batches and 4 more
        reference.step()
    first = engine_with_loader()
    for _ in range(4):
        first.step()
    first.save(tmp_path / "ckpt.pt")
    resumed = engine_with_loader()
    resumed.load(tmp_path / "ckpt.pt")
    for _ in range(3):
        resumed.step()
    assert_identical(snapshot(reference), snapshot(resumed))


def test_checkpoint_loads_with_weights_only(tmp_path):
    engine = build("darts")
    engine.step()
    path = engine.save(tmp_path / "ckpt.pt")
    data = torch.load(path, weights_only=True)
    assert data["format"] == "mlo.checkpoint/2" and data["engine"]["format"] == "mlo.engine/2"


def test_truncated_checkpoint_gives_a_clear_error_and_the_previous_one_survives(tmp_path):
    engine = build("darts")
    engine.step()
    good = engine.save(tmp_path / "good.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(mlo.CheckpointError, match="truncated, corrupt"):
        build("darts").load(bad)
    build("darts").load(good)


def test_loading_into_a_different_graph_fails_and_changes_nothing(tmp_path):
    engine = build("darts")
    engine.step()
    path = engine.save(tmp_path / "ckpt.pt")
    other = build("darts")
    other.problems["top"].module[0] = torch.nn.Linear(3, 7)  # a different shape
    before = snapshot(other)
    with pytest.raises(
        mlo.CheckpointError, match=r"top\.0\.bias has shape \[6\] in the file, \[7\] here"
    ):
        other.load(path)
    assert_identical(before, snapshot(other))


def test_atomic_save_leaves_no_temporary_files(tmp_path):
    engine = build("darts")
    engine.save(tmp_path / "a.pt")
    engine.save(tmp_path / "a.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]


def test_run_writes_checkpoints_every_n_steps_and_keeps_the_last_k(tmp_path):
    from .helpers import problem

    def two_levels(resume=None, **config):
        a = problem("a", value=1.0, watched=("b",))
        b = problem("b", parents=("a",), solver="cg")
        config = mlo.EngineConfig(progress=False, **config)
        return mlo.Engine([a, b], {"a": ["b"]}, config, resume=resume)

    e = two_levels(steps=7, checkpoint_every=2, checkpoint_dir=tmp_path, keep_last=2)
    e.run()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000006.pt", "step_00000007.pt"]
    resumed = two_levels(steps=10, resume=tmp_path / "step_00000006.pt")
    assert resumed.tick == 6
    resumed.run()
    straight = two_levels(steps=10)
    straight.run()
    for name in ("a", "b"):
        assert torch.equal(resumed.problems[name].module.x, straight.problems[name].module.x)


def test_checkpoint_every_needs_a_folder():

    with pytest.raises(mlo.SetupError, match="checkpoint_dir"):
        mlo.EngineConfig(checkpoint_every=5)


class Poisoned(mlo.Problem):
    """½(x − 1)², whose loss turns NaN at its ``poison_at``-th evaluation (run()'s
    preflight is the first, so with 6 the update of tick 5 is poisoned)."""

    poison_at = 6

    def training_step(self, batch):
        self.calls = getattr(self, "calls", 0) + 1
        loss = 0.5 * ((self.module.x - 1.0) ** 2).sum()
        return loss * float("nan") if self.calls == self.poison_at else loss


def poisoned_engine(folder, **config):
    from .helpers import Scalar

    module = Scalar(0.0)
    level = Poisoned("p", module, torch.optim.SGD(module.parameters(), lr=0.1))
    config = mlo.EngineConfig(
        progress=False, checkpoint_every=1, checkpoint_dir=folder, keep_last=2, **config
    )
    return mlo.Engine([level], config=config)


def test_a_nan_never_reaches_a_checkpoint_and_the_finite_ones_survive(tmp_path):
    # Finite checks every 4 ticks, as on a GPU: the NaN of tick 5 would only be found at
    # tick 8; the check before each checkpoint finds it at 5, and 3 and 4 stay, finite.
    engine = poisoned_engine(tmp_path, steps=10, check_finite_every=4)
    with pytest.raises(mlo.NonFiniteError, match="'p'"):
        engine.run()
    kept = sorted(p.name for p in tmp_path.glob("step_*.pt"))
    assert kept == ["step_00000003.pt", "step_00000004.pt"]
    for path in tmp_path.glob("step_*.pt"):
        state = torch.load(path, weights_only=True)["engine"]["problems"]["p"]["module"]
        assert all(torch.isfinite(t).all() for t in state.values())


def test_save_refuses_a_non_finite_parameter(tmp_path):
    engine = poisoned_engine(tmp_path, steps=1)
    with torch.no_grad():
        engine.problems["p"].module.x.fill_(float("inf"))
    with pytest.raises(mlo.NonFiniteError, match="x is not finite"):
        engine.save(tmp_path / "bad.pt")
    assert not (tmp_path / "bad.pt").exists()


def test_rotation_never_deletes_another_runs_checkpoints(tmp_path):
    older = tmp_path / "step_00000500.pt"
    older.write_bytes(b"an older run's checkpoint")
    engine = poisoned_engine(tmp_path, steps=4)
    engine.problems["p"].poison_at = -1
    engine.run()
    names = sorted(p.name for p in tmp_path.glob("step_*.pt"))
    assert names == ["step_00000003.pt", "step_00000004.pt", "step_00000500.pt"]
    assert older.read_bytes() == b"an older run's checkpoint"


def test_a_resumed_run_goes_on_rotating_the_checkpoints_written_before_it(tmp_path):
    first = poisoned_engine(tmp_path, steps=3)
    first.problems["p"].poison_at = -1
    first.run()
    assert sorted(p.name for p in tmp_path.glob("step_*.pt")) == [
        "step_00000002.pt",
        "step_00000003.pt",
    ]
    resumed = poisoned_engine(tmp_path, steps=6)
    resumed.problems["p"].poison_at = -1
    resumed.load(tmp_path / "step_00000003.pt")
    resumed.run()
    names = sorted(p.name for p in tmp_path.glob("step_*.pt"))
    assert names == ["step_00000005.pt", "step_00000006.pt"]
