"""Meta-Weight-Net: a few steps on digits move the weighting network, and the example runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import mlo

from ..scripts import load_script

ROOT = Path(__file__).resolve().parents[2]


def test_noise_flips_the_requested_fraction_to_other_classes():
    from problems.reweighting import symmetric_noise

    labels = torch.arange(10).repeat(100)
    noisy = symmetric_noise(labels, 0.4, 10, seed=0)
    flipped = noisy != labels
    assert abs(float(flipped.float().mean()) - 0.4) < 0.05
    assert ((noisy >= 0) & (noisy < 10)).all()


def test_weighting_network_moves_and_everything_stays_finite():
    pytest.importorskip("sklearn", reason="the digits ship with scikit-learn")
    from problems.digits import load_digits_splits
    from problems.reweighting import build

    data = load_digits_splits(n_train=200, n_val=50, seed=0)
    problems, deps = build(data.features, 10, [data.train], [data.val])
    engine = mlo.Engine(problems, deps, mlo.EngineConfig(steps=3, progress=False))
    before = [p.detach().clone() for p in engine.problems["weighting"].module.parameters()]
    engine.run()
    after = list(engine.problems["weighting"].module.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(after, before))
    assert all(torch.isfinite(p).all() for p in after)
    logits = engine.problems["classifier"].module(data.test[0])
    assert logits.shape == (len(data.test[0]), 10)


@pytest.mark.slow
def test_example_prints_both_methods(tmp_path, capsys):
    pytest.importorskip("sklearn", reason="the digits ship with scikit-learn")
    module = load_script(ROOT / "examples" / "data_reweighting.py")
    module.main(["--steps", "5", "--seeds", "2", "--no-progress", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "Meta-Weight-Net" in out and "plain training" in out
    record = json.loads((tmp_path / "metrics_seed1.jsonl").read_text().splitlines()[-1])
    assert record["updates"] == {"weighting": 5, "classifier": 5}
