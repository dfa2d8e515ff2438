"""``evaluate-imagenet``: the mobile-setting network trained with the ImageNet recipe on
a tiny fixture in the ImageNet layout (train/ and val/ class folders of generated images
of assorted sizes, brought to 224×224 by the real transforms), resumed exactly; and
missing data is one ``error:`` line."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from PIL import Image

from ..mlo.test_state_untouched import assert_identical
from ..scripts import ROOT, load_script
from .test_bad_input_table import snapshot
from .test_evaluate_resume import final_state

SCRIPT = ROOT / "examples" / "lease_cifar.py"


def imagenet_layout(root: Path) -> Path:
    rng = random.Random(0)
    for split, count in (("train", 8), ("val", 3)):
        for cls in ("n01440764", "n01443537", "n01484850"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                size = (rng.randint(150, 300), rng.randint(150, 300))
                color = tuple(rng.randint(0, 255) for _ in range(3))
                Image.new("RGB", size, color).save(folder / f"{cls}_{i}.JPEG", format="JPEG")
    return root


def unpacked_imagenet(root: Path) -> Path:
    """The layout torchvision's ImageNet leaves after unpacking the official archives:
    train/ and val/ by WordNet id, and meta.bin (the devkit's class names)."""
    imagenet_layout(root)
    wnids = sorted(p.name for p in (root / "train").iterdir())
    classes = {wnid: (f"class {i}",) for i, wnid in enumerate(wnids)}
    val_wnids = [p.parent.name for p in sorted((root / "val").rglob("*.JPEG"))]
    torch.save((classes, val_wnids), root / "meta.bin")
    return root


def args(data: Path, out: Path, *extra: str, dataset: str = "imagefolder") -> list[str]:
    return [
        "evaluate-imagenet",
        "--dataset",
        dataset,
        "--data-dir",
        str(data),
        "--short",
        "--image-size",
        "224",
        "--layers",
        "2",
        "--init-channels",
        "4",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--no-progress",
        "--checkpoint-every",
        "1",
        "--device",
        "cpu",
        "--out",
        str(out),
        *extra,
    ]


@pytest.mark.slow
def test_two_steps_report_top1_and_top5_and_resume_exactly(tmp_path):
    data = imagenet_layout(tmp_path / "imagenet")
    main = load_script(SCRIPT).main
    assert main(args(data, tmp_path / "straight", "--max-steps", "2")) == 0
    records = [
        json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    ]
    assert records[-1]["step"] == 2
    assert 0.0 <= records[-1]["top5_error"] <= records[-1]["top1_error"] <= 1.0
    assert main(args(data, tmp_path / "split", "--max-steps", "1")) == 0
    assert final_state(tmp_path / "split")["tick"] == 1
    assert main(args(data, tmp_path / "split", "--max-steps", "2", "--resume")) == 0
    assert_identical(final_state(tmp_path / "straight"), final_state(tmp_path / "split"))


def test_missing_imagenet_is_one_error_line_that_says_where_to_get_it(tmp_path, capsys):
    empty = tmp_path / "nothing"
    empty.mkdir()
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        load_script(SCRIPT).main(
            ["evaluate-imagenet", "--data-dir", str(empty), "--out", str(tmp_path / "out")]
        )
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "image-net.org" in lines[0] and "--dataset imagefolder" in lines[0]
    assert snapshot(tmp_path) == before  # nothing written


def test_the_learning_rate_scales_with_the_global_batch():
    from problems.nas.imagenet import ImageNetEvalRun

    assert ImageNetEvalRun(batch_size=1024).learning_rate() == pytest.approx(0.5)
    assert ImageNetEvalRun(batch_size=256).learning_rate() == pytest.approx(0.125)
    assert ImageNetEvalRun(batch_size=256, lr=0.3).learning_rate() == 0.3


@pytest.mark.slow
def test_the_official_imagenet_loader_reads_the_unpacked_archives(tmp_path):
    data = unpacked_imagenet(tmp_path / "imagenet")
    out = tmp_path / "run"
    main = load_script(SCRIPT).main
    assert main(args(data, out, "--max-steps", "1", dataset="imagenet")) == 0
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["step"] == 1 and 0.0 <= record["top1_error"] <= 1.0
