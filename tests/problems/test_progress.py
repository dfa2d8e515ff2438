"""The examples' loop: the bar advances with every update and keeps its counter, time
remaining and rate on a 120-column terminal; records come about 20 times per run."""

from __future__ import annotations

import json
import re

from rich.console import Console

import mlo
from problems.nas.loop import train
from problems.progress import TrainingProgress

from ..mlo.helpers import problem


def test_bar_advances_every_update_and_records_stay_sparse(tmp_path, monkeypatch):
    seen = []
    original = TrainingProgress.advance

    def advance(self, done, images):
        seen.append(done)
        original(self, done, images)

    monkeypatch.setattr(TrainingProgress, "advance", advance)
    engine = mlo.Engine(
        [problem("upper"), problem("lower", parents=("upper",))],
        {"upper": ["lower"]},
        mlo.EngineConfig(progress=False),
    )
    console = Console(file=open(tmp_path / "screen.txt", "w"), width=120, force_terminal=True)  # noqa: SIM115
    train(
        engine,
        60,
        title="search",
        out=tmp_path,
        images_per_tick=8,
        log_every=None,
        checkpoint_every=1000,
        progress=True,
        console=console,
        record=lambda: {"accuracy": 0.5, "some long field name": 1.0, "another one": 2.0},
    )
    console.file.close()
    assert seen == list(range(1, 61))
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(3, 61, 3))  # 60 // 20 = every 3
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", (tmp_path / "screen.txt").read_text())
    last_bar = [line for line in screen.splitlines() if "60/60" in line][-1]
    assert "search" in last_bar and "eta" in last_bar and "img/s" in last_bar
    assert "accuracy 0.5" in screen  # the fields, on a line of their own


def test_an_explicit_log_every_wins(tmp_path):
    engine = mlo.Engine([problem("only")], config=mlo.EngineConfig(progress=False))
    train(
        engine,
        60,
        title="search",
        out=tmp_path,
        images_per_tick=8,
        log_every=25,
        checkpoint_every=1000,
        progress=False,
        console=Console(file=open(tmp_path / "screen.txt", "w")),  # noqa: SIM115
        record=dict,
    )
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [25, 50, 60]
