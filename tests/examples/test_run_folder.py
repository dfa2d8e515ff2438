"""Output-folder hazards (issue 10, item 6): resuming with other settings, forgetting
--resume, two runs into one folder, and what a killed run leaves behind."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..scripts import load_script, subprocess_env
from .test_bad_input_table import TINY, snapshot

ROOT = Path(__file__).resolve().parents[2]


def lease():
    return load_script(ROOT / "examples" / "lease_cifar.py")


def darts():
    return load_script(ROOT / "examples" / "darts_cifar.py")


def steps_in(metrics: Path) -> list[int]:
    return [json.loads(line)["step"] for line in metrics.read_text().splitlines()]


def test_resume_with_other_settings_is_refused_naming_them_unless_overridden(tmp_path, capsys):
    out = tmp_path / "out"
    lease().main([*TINY, "--out", str(out)])
    before = snapshot(tmp_path)
    capsys.readouterr()
    changed = ["--seed", "5", "--lam", "0.5", "--pgd-steps", "3", "--max-steps", "2"]
    with pytest.raises(SystemExit) as exit_:
        lease().main([*TINY, "--out", str(out), "--resume", *changed])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1, err
    for named in (
        "seed 2 in the checkpoint, 5 now",
        "lease.lam 1.0 in the checkpoint, 0.5 now",
        "lease.explanation.steps 7 in the checkpoint, 3 now",
        "--override lease.explanation.steps,lease.lam,seed",
    ):
        assert named in err, named
    assert snapshot(tmp_path) == before

    with pytest.raises(SystemExit):  # an override of a setting that does not differ
        lease().main([*TINY, "--out", str(out), "--resume", "--override", "layers"])
    assert "--override layers: not a setting that differs" in capsys.readouterr().err
    assert snapshot(tmp_path) == before

    overrides = ["--override", "seed,lease.lam,lease.explanation.steps"]
    assert lease().main([*TINY, "--out", str(out), "--resume", *changed, *overrides]) == 0
    assert steps_in(out / "metrics.jsonl") == [1, 2]


def test_forgetting_resume_is_refused_and_overwrite_starts_over(tmp_path, capsys):
    out = tmp_path / "out"
    darts().main([*TINY, "--out", str(out), "--max-steps", "2", "--log-every", "1"])
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit):
        darts().main([*TINY, "--out", str(out)])
    assert "holds a previous run" in capsys.readouterr().err
    assert snapshot(tmp_path) == before
    darts().main([*TINY, "--out", str(out), "--overwrite", "--log-every", "1"])
    assert steps_in(out / "metrics.jsonl") == [1]


def test_overwrite_leaves_none_of_the_old_runs_outputs(tmp_path, monkeypatch):
    """Replaced by a run that fails while it trains, an old run leaves no stale genotype
    or pictures (before, they stayed beside the new run's metrics)."""
    import mlo
    import problems.nas.runner

    out = tmp_path / "out"
    darts().main([*TINY, "--out", str(out), "--max-steps", "2"])
    assert {"genotype.json", "cells.png", "alphas.png"} <= {p.name for p in out.iterdir()}

    def fails(*args, **kwargs):
        raise mlo.LevelError("the new run failed while training")

    monkeypatch.setattr(problems.nas.runner, "train", fails)
    with pytest.raises(SystemExit):
        darts().main([*TINY, "--out", str(out), "--overwrite", "--max-steps", "1"])
    assert not list(out.iterdir())  # nothing of the old run beside a new run's nothing


def test_a_second_run_into_a_locked_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    script = f"{ROOT}/examples/darts_cifar.py"
    first = subprocess.Popen(
        [sys.executable, script, *TINY, "--max-steps", "99", "--log-every", "1", "--out", f"{out}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=subprocess_env(),
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "metrics.jsonl").exists():
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.05)
        with pytest.raises(SystemExit) as exit_:
            darts().main([*TINY, "--out", str(out), "--resume"])
        err = capsys.readouterr().err
        assert exit_.value.code == 2
        assert f"another run (process {first.pid}) is writing into {out}" in err, err
    finally:
        first.kill()
        first.wait()
    # The kernel released the killed run's lock: the folder can be used again at once.
    assert darts().main([*TINY, "--out", str(out), "--overwrite"]) == 0


def test_resume_cleans_temporary_files_and_replayed_metric_records(tmp_path):
    out = tmp_path / "out"
    darts().main([*TINY, "--out", str(out), "--max-steps", "2", "--log-every", "1"])
    # What a kill at step 3 leaves: a record past the checkpoint and a half-written file.
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": {}}\n{"step": 4, "lo')
    (out / ".checkpoint.pt.abc123.tmp").write_bytes(b"half")
    darts().main([*TINY, "--out", str(out), "--resume", "--max-steps", "4", "--log-every", "1"])
    assert steps_in(out / "metrics.jsonl") == [1, 2, 3, 4]
    assert not list(out.glob(".*.tmp"))


def test_a_checkpoint_of_two_ranks_resumed_on_one_with_another_global_batch_is_refused(
    tmp_path, capsys
):
    """A checkpoint that says it was written by 2 ranks (each batch 8: global 16), resumed
    by one process with batch 8: refused before anything is loaded, naming the ranks."""
    import mlo

    out = tmp_path / "out"
    darts().main([*TINY, "--out", str(out), "--max-steps", "1"])
    path = out / "checkpoint.pt"
    saved = mlo.durable.checkpoint.read(path)
    saved["engine"]["ranks"] = {"world": 2}
    mlo.durable.checkpoint.save_atomic(
        mlo.durable.checkpoint.seal({"engine": saved["engine"], "extra": saved["extra"]}), path
    )
    before = snapshot(tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        darts().main([*TINY, "--out", str(out), "--resume", "--max-steps", "2"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and err.count("\n") == 0
    assert "written by 2 rank(s)" in err and "Resume on 2 rank(s)" in err
    assert snapshot(tmp_path) == before


def test_resuming_after_the_image_folder_changed_is_refused_naming_the_change(tmp_path, capsys):
    from PIL import Image

    data = tmp_path / "images"
    for split, count in (("train", 8), ("test", 2)):
        for cls in ("cat", "dog"):
            (data / split / cls).mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (12, 12), (i * 30, 0, 0)).save(data / split / cls / f"{i}.png")
    out = tmp_path / "out"
    flags = ["--dataset", "imagefolder", "--data-dir", str(data), "--image-size", "8"]
    flags += ["--layers", "2", "--init-channels", "4", "--batch-size", "4", "--workers", "0"]
    flags += ["--no-progress", "--out", str(out)]
    assert darts().main([*flags, "--max-steps", "1"]) == 0
    Image.new("RGB", (12, 12)).save(data / "train" / "cat" / "new.png")
    before = snapshot(tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        darts().main([*flags, "--max-steps", "2", "--resume"])
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and err.count("\n") == 0
    assert "the train set had 16 images when the run started and has 17 now" in err
    assert snapshot(tmp_path) == before
    (data / "train" / "cat" / "new.png").unlink()
    (data / "train" / "dog").rename(data / "train" / "wolf")
    (data / "test" / "dog").rename(data / "test" / "wolf")
    with pytest.raises(SystemExit):
        darts().main([*flags, "--max-steps", "2", "--resume"])
    err = capsys.readouterr().err
    assert "the classes changed" in err and "gone: dog; new: wolf" in err
