"""Checkpoint format 2 (issue 10, items 3 and 7): a checksum over the payload, verified on
load; validate everything, then apply; optimizer types and hyperparameters must match
unless the caller keeps the current ones on purpose."""

from __future__ import annotations

import copy
import struct
import zipfile

import pytest
import torch

import mlo

from .test_state_untouched import assert_identical, batches, build, snapshot


def tensor_records(path):
    """(offset, size) in the file of every tensor's bytes in torch's zip format."""
    out = []
    with zipfile.ZipFile(path) as archive, open(path, "rb") as f:
        for info in archive.infolist():
            if "/data/" in info.filename and info.file_size > 0:
                f.seek(info.header_offset)
                header = f.read(30)
                name_len, extra_len = struct.unpack("<HH", header[26:30])
                out.append((info.header_offset + 30 + name_len + extra_len, info.file_size))
    return out


def full_state(engine):
    return copy.deepcopy(engine.state_dict())


def test_one_flipped_byte_in_any_tensor_is_detected(tmp_path):
    engine = build("darts")
    engine.step()
    good = engine.save(tmp_path / "good.pt")
    records = tensor_records(good)
    assert len(records) >= 10
    for i, (offset, size) in enumerate(records):
        data = bytearray(good.read_bytes())
        data[offset + size // 2] ^= 0x10
        bad = tmp_path / f"bad{i}.pt"
        bad.write_bytes(bytes(data))
        fresh = build("darts")
        before = full_state(fresh)
        with pytest.raises(mlo.CheckpointError, match="is corrupt: its contents do not match"):
            fresh.load(bad)
        assert_identical(before, fresh.state_dict())
    build("darts").load(good)  # the untouched file still loads


def test_a_checkpoint_without_checksum_still_loads_with_a_warning(tmp_path, caplog):
    engine = build("darts")
    engine.step()
    path = engine.save(tmp_path / "ckpt.pt")
    old = torch.load(path, weights_only=True)
    del old["format"], old["sha256"]
    torch.save(old, tmp_path / "v1.pt")
    resumed = build("darts")
    with caplog.at_level("WARNING", logger="mlo"):
        resumed.load(tmp_path / "v1.pt")
    assert "before checksums" in caplog.text and resumed.tick == 1
    assert_identical(snapshot(engine), snapshot(resumed))


def with_data(n_batches):
    engine = build("darts")
    engine.problems["middle"].stream = mlo.data.BatchStream("middle", batches(1, n_batches))
    return engine


def test_a_data_mismatch_fails_before_anything_changes(tmp_path):
    long = with_data(10)
    for _ in range(4):  # the middle level draws 8 batches
        long.step()
    long.save(tmp_path / "ckpt.pt")
    short = with_data(3)
    short.step()
    before = full_state(short)
    with pytest.raises(mlo.DataError, match="fewer batches than the checkpoint had consumed"):
        short.load(tmp_path / "ckpt.pt")
    assert_identical(before, short.state_dict())


def sgd_pair(optimizer_factory, scheduler=False):
    engine = build("darts")
    for problem in engine.problems.values():
        problem.optimizer = optimizer_factory(problem.module.parameters())
        problem.scheduler = (
            torch.optim.lr_scheduler.CosineAnnealingLR(problem.optimizer, 10) if scheduler else None
        )
    return engine


def test_a_different_optimizer_type_is_named_and_nothing_changes(tmp_path):
    saved = sgd_pair(lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.5))
    saved.step()
    saved.save(tmp_path / "ckpt.pt")
    adam = sgd_pair(lambda p: torch.optim.Adam(p, lr=0.1))
    before = full_state(adam)
    with pytest.raises(mlo.CheckpointError, match=r"optimizer Adam here, SGD in the file"):
        adam.load(tmp_path / "ckpt.pt")
    assert_identical(before, adam.state_dict())


def test_different_hyperparameters_are_named_unless_kept_on_purpose(tmp_path):
    saved = sgd_pair(lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.5))
    for _ in range(2):
        saved.step()
    saved.save(tmp_path / "ckpt.pt")
    changed = sgd_pair(lambda p: torch.optim.SGD(p, lr=0.5, momentum=0.9))
    before = full_state(changed)
    with pytest.raises(mlo.CheckpointError) as info:
        changed.load(tmp_path / "ckpt.pt")
    message = str(info.value)
    assert "lr 0.5 here, 0.1 in the file" in message
    assert "momentum 0.9 here, 0.5 in the file" in message
    assert "keep_current_hyperparameters=True" in message
    assert_identical(before, changed.state_dict())

    changed.load(tmp_path / "ckpt.pt", keep_current_hyperparameters=True)
    assert changed.tick == 2
    for name, problem in changed.problems.items():
        group = problem.optimizer.param_groups[0]
        assert group["lr"] == 0.5 and group["momentum"] == 0.9, name
        buffers = [problem.optimizer.state[p]["momentum_buffer"] for p in problem.params.tensors]
        original = saved.problems[name]
        expected = [original.optimizer.state[p]["momentum_buffer"] for p in original.params.tensors]
        for got, want in zip(buffers, expected):
            assert torch.equal(got, want), name


def test_a_new_base_rate_under_a_scheduler_continues_the_schedule_from_it(tmp_path):
    saved = sgd_pair(lambda p: torch.optim.SGD(p, lr=0.1), scheduler=True)
    for _ in range(3):
        saved.step()
    saved.save(tmp_path / "ckpt.pt")
    changed = sgd_pair(lambda p: torch.optim.SGD(p, lr=0.05), scheduler=True)
    with pytest.raises(mlo.CheckpointError, match=r"initial_lr 0.05 here, 0.1 in the file"):
        changed.load(tmp_path / "ckpt.pt")
    changed.load(tmp_path / "ckpt.pt", keep_current_hyperparameters=True)
    # A straight run at base 0.05 is at half the rate the saved run is at, step for step.
    straight = sgd_pair(lambda p: torch.optim.SGD(p, lr=0.05), scheduler=True)
    for name, problem in changed.problems.items():
        reference = straight.problems[name]
        for _ in range(saved.updates[name]):
            reference.optimizer.step()
            reference.scheduler.step()
        for _ in range(3):
            assert problem.optimizer.param_groups[0]["lr"] == pytest.approx(
                reference.optimizer.param_groups[0]["lr"], rel=1e-12
            )
            problem.scheduler.step()
            reference.optimizer.step()
            reference.scheduler.step()
