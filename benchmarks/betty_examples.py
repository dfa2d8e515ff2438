"""Run the example programs of Betty's own repository on ``mlo.betty``, each file unchanged
except its ``betty`` imports (and, with ``--iterations``, its ``train_iters``), and
report how each run ended.

    git clone https://github.com/leopard-ai/betty            # Betty 0.2.1's examples
    python benchmarks/betty_examples.py --betty-repo betty --iterations 300

The examples that read CIFAR, Omniglot or Office-Home download them, and the DARTS one
moves its validation batches to ``cuda`` by name; where those are missing the run ends
with the example's own error, which the report shows. ``--stand-in-cifar`` replaces
CIFAR-10's loader by 32 random CIFAR-shaped images, and ``--stand-in-office-home``
replaces Office-Home's loader by random tensors of its transformed shape and ResNet-18's
pretrained weights by a random initialisation (each a ``sitecustomize`` module on the
example's path), so that those programs run offline. Neither changes what a step computes.

``--against-betty`` times one example under the installed Betty (betty-ml, the file
unchanged), under ``mlo.betty`` (imports converted) and through ``mlo.from_betty`` (the
file unchanged; Betty's engine handed to mlo), rotating the order in rounds: each run
reports the seconds of its ``engine.run()``, so start-up and dataset construction are
left out, and the report gives each round's ratios to Betty and their medians:

    python benchmarks/betty_examples.py --betty-repo betty --stand-in-office-home \
        --against-betty learning_by_ignoring/main.py --iterations 6 --rounds 3 \
        --args=--batch_size=4
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXAMPLES = {
    "logistic_regression_hpo/logistic_regression_implicit.py": [],
    "logistic_regression_hpo/logistic_regression.py": [],
    "learning_to_reweight/main.py": ["--device", "cpu"],
    # a CPU-sized search: 2 cells of 4 channels, batch 8, 2 epochs
    "neural_architecture_search/train_search.py": [
        "--layers",
        "2",
        "--init_ch",
        "4",
        "--batchsz",
        "8",
        "--epochs",
        "2",
    ],
    "implicit_maml/main.py": [],
    "learning_by_ignoring/main.py": [],
}

STAND_IN = """# benchmarks/betty_examples.py --stand-in-cifar: CIFAR-10's loader replaced by 32
# random images of CIFAR's shape (torchvision.datasets.FakeData), for a machine that
# cannot download it; nothing else is changed.
import torchvision.datasets as datasets


def _stand_in(root=None, train=True, download=False, transform=None, **kwargs):
    return datasets.FakeData(size=32, image_size=(3, 32, 32), num_classes=10, transform=transform)


datasets.CIFAR10 = _stand_in
"""

STAND_IN_OFFICE_HOME = """# benchmarks/betty_examples.py --stand-in-office-home:
# Office-Home's loader (the example's own dalib) replaced by random tensors of the
# shape its transform produces (3 x 224 x 224, 65 classes), and ResNet-18's
# pretrained weights by a random initialisation, for a machine that cannot download
# either. The step's arithmetic (shapes, levels, losses, optimizers) is unchanged.
import torch
import torchvision.models as models

_resnet18 = models.resnet18


def _resnet18_offline(pretrained=False, **kwargs):
    return _resnet18(weights=None, **kwargs)


models.resnet18 = _resnet18_offline


class _OfficeHomeStandIn(torch.utils.data.Dataset):
    num_classes = 65

    def __init__(self, root=None, task="Ar", download=False, transform=None, **kwargs):
        self.domain = {"Ar": 0, "Cl": 1, "Pr": 2, "Rw": 3}.get(task.split("_")[0], 0)

    def __len__(self):
        return 4096

    def __getitem__(self, index):
        generator = torch.Generator().manual_seed(index)
        image = torch.randn(3, 224, 224, generator=generator)
        return image, int(torch.randint(65, (1,), generator=generator)), self.domain


try:
    import dalib.vision.datasets as _dalib_datasets
except ImportError:  # not the learning-by-ignoring example
    pass
else:
    _dalib_datasets.OfficeHome = _OfficeHomeStandIn
"""

TIMER = """# benchmarks/betty_examples.py --against-betty: print the seconds of engine.run();
# for from_betty, Betty's engine is built as usual and mlo.from_betty(engine).run() runs.
import os as _os
import time as _time
import importlib as _importlib

_how = _os.environ["BETTY_EXAMPLES_ENGINE"]
_engine = _importlib.import_module(
    "mlo.betty.engine" if _how == "mlo.betty" else "betty.engine"
).Engine
_run = _engine.run


def _timed_run(self, *args, **kwargs):
    start = _time.perf_counter()
    try:
        if _how == "from_betty":
            import mlo

            return mlo.from_betty(self).run()
        return _run(self, *args, **kwargs)
    finally:
        print(f"engine.run seconds: {_time.perf_counter() - start:.3f}", flush=True)


_engine.run = _timed_run
"""

#: the ways ``--against-betty`` runs an example: Betty itself on the unchanged file,
#: ``mlo.betty`` on the file with its imports converted, and ``mlo.from_betty`` on
#: Betty's engine built from the unchanged file
ENGINES = ("betty", "mlo.betty", "from_betty")


def converted(source: str, iterations: int | None, to_mlo: bool = True) -> str:
    """``source`` with (when ``to_mlo``) ``from betty.X import`` made ``from mlo.betty.X
    import`` and, when ``iterations`` is given, every literal ``train_iters=N`` made
    ``train_iters=iterations``."""
    if to_mlo:
        source = re.sub(r"^(\s*)from betty\.", r"\1from mlo.betty.", source, flags=re.M)
        source = re.sub(r"^(\s*)import betty\b", r"\1import mlo.betty as betty", source, flags=re.M)
    if iterations is not None:
        source = re.sub(r"train_iters=\d+", f"train_iters={iterations}", source)
    return source


def run(
    repo: Path,
    example: str,
    args: list[str],
    iterations: int | None,
    timeout: int,
    stand_ins: tuple[str, ...] = (),
    engine: str | None = None,
) -> tuple[str, float | None]:
    """Run ``example`` once on ``mlo.betty``, or timed on one of ``ENGINES``; return how
    it ended and, when timed, the seconds its ``engine.run()`` took (else ``None``)."""
    folder = (repo / "examples" / example).parent
    timed = engine is not None
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / folder.name
        for path in folder.rglob("*"):
            if path.is_file():
                target = work / path.relative_to(folder)
                target.parent.mkdir(parents=True, exist_ok=True)
                if path.suffix == ".py":
                    to_mlo = engine in (None, "mlo.betty")
                    target.write_text(converted(path.read_text(), iterations, to_mlo))
                else:
                    target.write_bytes(path.read_bytes())
        env = dict(os.environ)
        modules = list(stand_ins) + ([TIMER] if timed else [])
        if modules:  # a sitecustomize module, imported at start-up from PYTHONPATH
            (work / "sitecustomize.py").write_text("\n\n".join(modules))
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(work), env.get("PYTHONPATH")]))
            env["BETTY_EXAMPLES_ENGINE"] = engine or ""
        start = time.perf_counter()
        try:
            done = subprocess.run(
                [sys.executable, Path(example).name, *args],
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return f"still running after {timeout} s (stopped)", None
        seconds = time.perf_counter() - start
        lines = (done.stdout + done.stderr).strip().splitlines()
        marker = "engine.run seconds:"
        run_seconds = [float(ln[len(marker) :]) for ln in lines if ln.startswith(marker)]
        trained = [ln for ln in lines if "Global Step" in ln or "optimization finished" in ln]
        if done.returncode == 0 and timed and run_seconds:
            return f"exit 0; engine.run() {run_seconds[-1]:.1f} s", run_seconds[-1]
        if done.returncode == 0 and trained:
            return f"trained, exit 0 in {seconds:.1f} s; last: {trained[-1].strip()[-90:]}", None
        if done.returncode == 0:
            last = lines[-1].strip()[:140] if lines else ""
            return f"ended before training (exit 0): {last}", None
        # the exception's own line (a multi-line message continues below it), else the last
        raised = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception)\b", ln)]
        unindented = [ln for ln in lines if ln and not ln.startswith(" ")]
        error = (raised or unindented or ["?"])[-1]
        return f"exit {done.returncode} in {seconds:.1f} s: {error.strip()[:140]}", None


def against_betty(
    repo: Path,
    example: str,
    args: list[str],
    iterations: int,
    rounds: int,
    timeout: int,
    stand_ins: tuple[str, ...],
) -> None:
    """Time ``example`` in each of ``ENGINES``, rotating which goes first each round, and
    print each round's seconds per iteration, its ratios to Betty and their medians. An
    engine that does not finish (``from_betty`` refuses some programs) is reported once and
    left out of the later rounds."""
    engines = list(ENGINES)
    ratios: dict[str, list[float]] = {engine: [] for engine in ENGINES[1:]}
    for round_ in range(rounds):
        shift = round_ % len(engines)
        order = engines[shift:] + engines[:shift]
        seconds = {}
        for engine in order:
            outcome, spent = run(repo, example, args, iterations, timeout, stand_ins, engine)
            print(f"round {round_ + 1} {engine}: {outcome}", flush=True)
            if spent is None and engine == "betty":
                raise SystemExit(f"error: {example} did not finish under Betty: {outcome}")
            if spent is None:
                engines.remove(engine)
                del ratios[engine]
                continue
            seconds[engine] = spent
        for engine in ratios:
            ratios[engine].append(seconds[engine] / seconds["betty"])
        per_iteration = ", ".join(
            f"{engine} {seconds[engine] / iterations:.2f} s/iteration" for engine in seconds
        )
        print(f"round {round_ + 1}: {per_iteration}", flush=True)
    for engine, values in ratios.items():
        listed = ", ".join(f"{value:.3f}" for value in values)
        print(
            f"{example}: {engine} / betty, median of {rounds} paired rounds: "
            f"{statistics.median(values):.3f} (rounds: {listed})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--betty-repo", type=Path, required=True, help="a checkout of Betty")
    parser.add_argument("--iterations", type=int, default=None, help="replace train_iters")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per example")
    parser.add_argument(
        "--stand-in-cifar",
        action="store_true",
        help="replace CIFAR-10's loader by 32 random CIFAR-shaped images (no download)",
    )
    parser.add_argument(
        "--stand-in-office-home",
        action="store_true",
        help="replace Office-Home's loader by random tensors of its shape and ResNet-18's "
        "pretrained weights by a random initialisation (no download)",
    )
    parser.add_argument(
        "--against-betty",
        metavar="EXAMPLE",
        default=None,
        help="time this example (a path under examples/) under Betty and mlo.betty",
    )
    parser.add_argument("--rounds", type=int, default=3, help="paired rounds (--against-betty)")
    parser.add_argument(
        "--args", default="", help="extra command-line arguments for the example(s)"
    )
    args = parser.parse_args()
    if not (args.betty_repo / "examples").is_dir():
        parser.error(f"{args.betty_repo} has no examples/ folder; pass a checkout of Betty")
    stand_ins = tuple(
        module
        for wanted, module in (
            (args.stand_in_cifar, STAND_IN),
            (args.stand_in_office_home, STAND_IN_OFFICE_HOME),
        )
        if wanted
    )
    extra_args = shlex.split(args.args)
    if args.against_betty is not None:
        if not (args.betty_repo / "examples" / args.against_betty).is_file():
            parser.error(f"no examples/{args.against_betty} in {args.betty_repo}")
        if args.iterations is None or args.iterations < 1:
            parser.error("--against-betty needs --iterations N (N >= 1)")
        if args.rounds < 1:
            parser.error("--rounds must be at least 1")
        example_args = EXAMPLES.get(args.against_betty, []) + extra_args
        against_betty(
            args.betty_repo,
            args.against_betty,
            example_args,
            args.iterations,
            args.rounds,
            args.timeout,
            stand_ins,
        )
        return
    for example, extra in EXAMPLES.items():
        outcome, _ = run(
            args.betty_repo, example, extra + extra_args, args.iterations, args.timeout, stand_ins
        )
        print(f"{example}: {outcome}", flush=True)


if __name__ == "__main__":
    main()
