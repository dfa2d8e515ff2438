"""The examples' thread setting: from --threads, OMP_NUM_THREADS, or the usable cores."""

from __future__ import annotations

import pytest
import torch

from problems.threads import configure_threads, usable_cores


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
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr("os.getloadavg", lambda: (0.0, 0.0, 0.0))
    line = configure_threads(None)
    assert torch.get_num_threads() == usable_cores()
    assert f"the {usable_cores()} core(s) this process may use" in line


def test_a_busy_machine_is_named(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.getloadavg", lambda: (usable_cores() + 3.0, 0.0, 0.0))
    assert "--threads 1 may be faster" in configure_threads(None)


def test_zero_threads_is_a_one_line_error(capsys):
    from problems.cli import apply_threads

    with pytest.raises(SystemExit) as exit_:
        apply_threads(0)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == "error: --threads 0: give at least 1"
