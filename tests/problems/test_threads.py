"""The examples' thread setting: from --threads, OMP_NUM_THREADS, or the usable cores,
adapted while training to the cores other processes leave free."""

from __future__ import annotations

import pytest
import torch

import problems.threads
from problems.threads import ThreadGovernor, adapt_threads, configure_threads, usable_cores


@pytest.fixture(autouse=True)
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_requested_threads_win_and_are_logged(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    line = configure_threads(1)
    assert torch.get_num_threads() == 1 and "1 thread(s) (--threads)" in line


def test_environment_then_usable_cores(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert "OMP_NUM_THREADS" in configure_threads(None) and torch.get_num_threads() == 1
    assert problems.threads._governor is None  # a number given is kept
    monkeypatch.delenv("OMP_NUM_THREADS")
    line = configure_threads(None)
    assert torch.get_num_threads() == usable_cores()
    if usable_cores() > 1:
        assert f"up to {usable_cores()} threads" in line and "--threads N" in line
        assert isinstance(problems.threads._governor, ThreadGovernor)
    configure_threads(2)
    assert problems.threads._governor is None and adapt_threads() == 2


class Clock:
    """CPU samples as a test dictates: ``tick(seconds, others, own)`` advances them."""

    def __init__(self) -> None:
        self.busy = self.own = self.wall = 0.0

    def tick(self, seconds: float, others: float, own: float) -> None:
        self.wall += seconds
        self.own += own * seconds
        self.busy += (others + own) * seconds

    def __call__(self):
        return self.busy, self.own, self.wall


@pytest.mark.parametrize(
    ("others", "threads"),
    [
        (0.0, 4),
        (0.1, 4),
        (0.5, 3),
        (0.8, 3),
        (1.0, 3),
        (1.2, 3),
        (2.0, 2),
        (2.6, 1),
        (3.9, 1),
        (9.0, 1),
    ],
)
def test_the_governor_keeps_the_cores_other_processes_leave_free(others, threads):
    clock = Clock()
    governor = ThreadGovernor(4, sample=clock, interval=2.0)
    clock.tick(3.0, others=others, own=1.5)
    assert governor.adjust() == threads == torch.get_num_threads()


def test_the_governor_looks_once_per_interval_and_comes_back_when_the_load_goes():
    clock = Clock()
    governor = ThreadGovernor(2, sample=clock, interval=2.0)
    clock.tick(2.5, others=1.0, own=1.0)  # another process keeps one core busy
    assert governor.adjust() == 1
    clock.tick(1.0, others=0.0, own=1.0)  # too soon to look again
    assert governor.adjust() == 1 and governor.changes == 1
    clock.tick(1.5, others=0.0, own=1.0)  # the other process is gone
    assert governor.adjust() == 2 == torch.get_num_threads() and governor.changes == 2


def test_the_governor_reads_this_machine(monkeypatch):
    sample = problems.threads.cpu_sample()
    if sample is None:
        pytest.skip("no /proc/stat on this system")
    busy, own, wall = sample
    assert busy >= 0 and own > 0 and wall > 0
    governor = ThreadGovernor(usable_cores(), interval=0.0)
    deadline = wall + 0.3
    while problems.threads.cpu_sample()[2] < deadline:
        pass  # this process's own work is not counted as another's
    assert 1 <= governor.adjust() <= usable_cores()


def test_zero_threads_is_a_one_line_error(capsys):
    from problems.cli import apply_threads

    with pytest.raises(SystemExit) as exit_:
        apply_threads(0)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == "error: --threads 0: give at least 1"
