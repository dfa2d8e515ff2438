"""benchmarks/betty_examples.py runs other people's programs: the timed comparison runs
the same file under Betty, mlo.betty and mlo.from_betty, and the offline stand-ins replace
only the downloads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ..scripts import ROOT, load_script, subprocess_env

pytest.importorskip("betty", reason="needs betty-ml (the dev extra installs it)")

BENCH = load_script(ROOT / "benchmarks" / "betty_examples.py")

# A Betty 0.1/0.2 program as Betty's examples write it: two levels, Betty's imports.
PROGRAM = """
import torch
import torch.nn.functional as F
from betty.configs import Config, EngineConfig
from betty.engine import Engine
from betty.problems import ImplicitProblem

torch.manual_seed(0)
x, y = torch.randn(64, 5), torch.randint(0, 2, (64,))
batches = [(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)]


class Inner(ImplicitProblem):
    def training_step(self, batch):
        inputs, targets = batch
        decay = self.outer.module.weight.exp().sum()
        return F.cross_entropy(self.module(inputs), targets) + 1e-3 * decay * sum(
            (p**2).sum() for p in self.module.parameters()
        )


class Outer(ImplicitProblem):
    def training_step(self, batch):
        inputs, targets = batch
        return F.cross_entropy(self.inner.module(inputs), targets)


inner_module = torch.nn.Linear(5, 2)
inner = Inner(
    name="inner",
    module=inner_module,
    optimizer=torch.optim.SGD(inner_module.parameters(), lr=0.1),
    train_data_loader=batches,
    config=Config(type="darts", unroll_steps=1),
)
class Decay(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))


outer_module = Decay()
outer = Outer(
    name="outer",
    module=outer_module,
    optimizer=torch.optim.SGD(outer_module.parameters(), lr=0.01),
    train_data_loader=batches,
    config=Config(type="darts"),
)
engine = Engine(
    config=EngineConfig(train_iters=4),
    problems=[outer, inner],
    dependencies={"u2l": {outer: [inner]}, "l2u": {inner: [outer]}},
)
engine.run()
print("inner weight", inner.module.weight.sum().item())
"""


def test_converted_keeps_or_converts_the_imports_and_sets_the_iterations():
    source = "from betty.engine import Engine\nimport betty\nc = EngineConfig(train_iters=1000)\n"
    to_mlo = BENCH.converted(source, 7)
    assert "from mlo.betty.engine import Engine" in to_mlo
    assert "import mlo.betty as betty" in to_mlo
    assert "train_iters=7" in to_mlo and "1000" not in to_mlo
    unchanged = BENCH.converted(source, 7, to_mlo=False)
    assert unchanged == source.replace("1000", "7")


@pytest.mark.parametrize("engine", BENCH.ENGINES)
def test_each_engine_runs_the_unchanged_program_and_reports_its_run_time(tmp_path, engine):
    example = tmp_path / "examples" / "tiny" / "main.py"
    example.parent.mkdir(parents=True)
    example.write_text(PROGRAM)
    outcome, seconds = BENCH.run(tmp_path, "tiny/main.py", [], 3, 120, (), engine)
    assert seconds is not None and seconds > 0, outcome
    assert outcome.startswith("exit 0; engine.run()")


def test_the_office_home_stand_in_replaces_only_the_downloads(tmp_path):
    # the example's own package layout: dalib/vision/datasets with an OfficeHome class
    package = tmp_path / "dalib" / "vision" / "datasets"
    package.mkdir(parents=True)
    for folder in (tmp_path / "dalib", tmp_path / "dalib" / "vision"):
        (folder / "__init__.py").write_text("")
    (package / "__init__.py").write_text("class OfficeHome:\n    pass\n")
    (tmp_path / "sitecustomize.py").write_text(BENCH.STAND_IN_OFFICE_HOME)
    probe = (
        "from dalib.vision.datasets import OfficeHome\n"
        "from torchvision.models import resnet18\n"
        "data = OfficeHome(root='nowhere', task='Cl_train', download=True, transform=None)\n"
        "image, label, domain = data[3]\n"
        "again = data[3][0]\n"
        "model = resnet18(pretrained=True)\n"
        "print(tuple(image.shape), 0 <= label < 65, domain, OfficeHome.num_classes,\n"
        "      bool((image == again).all()), model.fc.out_features)\n"
    )
    env = {**subprocess_env(), "PYTHONPATH": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["(3,", "224,", "224)", "True", "1", "65", "True", "1000"]


def test_against_betty_refuses_a_missing_example_with_one_line(tmp_path):
    (tmp_path / "examples").mkdir()
    done = subprocess.run(
        [
            sys.executable,
            str(Path(BENCH.__file__)),
            "--betty-repo",
            str(tmp_path),
            "--against-betty",
            "nothing/main.py",
            "--iterations",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert (
        done.stderr.strip().splitlines()[-1].endswith(f"no examples/nothing/main.py in {tmp_path}")
    )


def test_an_engine_that_refuses_is_reported_once_and_left_out(monkeypatch, capsys):
    calls = []

    def fake_run(repo, example, args, iterations, timeout, stand_ins, engine):
        calls.append(engine)
        if engine == "from_betty":
            return "exit 1 in 1.0 s: mlo.errors.SetupError: from_betty cannot convert", None
        return "exit 0; engine.run() 2.0 s", {"betty": 2.0, "mlo.betty": 1.5}[engine]

    monkeypatch.setattr(BENCH, "run", fake_run)
    BENCH.against_betty(Path("."), "x/main.py", [], 4, 3, 60, ())
    out = capsys.readouterr().out
    assert calls.count("from_betty") == 1 and calls.count("betty") == 3
    assert calls[:3] == ["betty", "mlo.betty", "from_betty"]
    assert "x/main.py: mlo.betty / betty, median of 3 paired rounds: 0.750" in out
    assert "from_betty / betty" not in out


def test_a_failed_run_reports_the_exceptions_own_line(tmp_path):
    example = tmp_path / "examples" / "broken" / "main.py"
    example.parent.mkdir(parents=True)
    example.write_text('raise RuntimeError("what went wrong\\nAlternatively, a second line")\n')
    outcome, seconds = BENCH.run(tmp_path, "broken/main.py", [], None, 60, (), "betty")
    assert seconds is None
    assert outcome.startswith("exit 1 in ") and outcome.endswith("RuntimeError: what went wrong")
