"""ImageFolder data a user gets wrong (issue 10, item 10): class folders that differ
between train/ and test/, a single class, and a corrupt image; each is one ``error:`` line
and exit 2, the corrupt file named even when data-loader workers read it."""

from __future__ import annotations

import multiprocessing
import random
from pathlib import Path

import pytest
from PIL import Image

from ..scripts import load_script, tiny_nas
from .test_bad_input_table import snapshot

ROOT = Path(__file__).resolve().parents[2]
ARGS = tiny_nas("imagefolder", batch=4, max_steps=4)


def images(root: Path, split: str, classes: list[str], per_class: int = 8) -> None:
    rng = random.Random(0)
    for cls in classes:
        folder = root / split / cls
        folder.mkdir(parents=True)
        for i in range(per_class):
            color = tuple(rng.randrange(256) for _ in range(3))
            Image.new("RGB", (10, 10), color).save(folder / f"{i}.png")


def run(script: str, argv: list[str], capsys) -> str:
    example = load_script(ROOT / "examples" / f"{script}.py")
    with pytest.raises(SystemExit) as exit_:
        example.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_train_and_test_with_different_classes_are_refused(tmp_path, capsys):
    images(tmp_path / "data", "train", ["a", "b"])
    images(tmp_path / "data", "test", ["b", "c"])
    before = snapshot(tmp_path)
    line = run(
        "darts_cifar",
        ["evaluate", *ARGS, "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "o")],
        capsys,
    )
    assert "different class folders (only in test/: c; only in train/: a)" in line
    assert snapshot(tmp_path) == before


def test_a_single_class_is_refused(tmp_path, capsys):
    images(tmp_path / "data", "train", ["only"])
    line = run(
        "lease_cifar",
        [*ARGS, "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "o")],
        capsys,
    )
    assert "has 1 class folder(s) (only); classification needs at least 2" in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("damage", ["truncated", "not-an-image"])
@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_corrupt_image_is_named(damage, workers, tmp_path, capsys):
    images(tmp_path / "data", "train", ["a", "b"], per_class=4)
    bad = tmp_path / "data" / "train" / "b" / "2.png"
    if damage == "truncated":
        bad.write_bytes(bad.read_bytes()[:40])
    else:
        bad.write_bytes(b"these bytes are no picture" * 10)
    argv = [*ARGS, "--data-dir", str(tmp_path / "data"), "--workers", workers, "--epochs", "2"]
    line = run("darts_cifar", [*argv, "--out", str(tmp_path / "o")], capsys)
    assert f"imagefolder: {bad} is not a readable image" in line
    assert "remove or replace the file" in line
    # The loaders' workers stopped with the failed run, not at a later garbage collection
    # (which waits 5 s for each: the engine and its problems hold each other).
    assert multiprocessing.active_children() == []
