"""Run the example programs of Betty's own repository on ``mlo.betty``, each file unchanged
except its ``betty`` imports (and, with ``--iterations``, its ``train_iters``), and
report how each run ended.

    git clone https://github.com/leopard-ai/betty            # Betty 0.2.1's examples
    python benchmarks/betty_examples.py --betty-repo betty --iterations 300

The examples that read CIFAR, Omniglot or Office-Home download them, and the DARTS one
moves its validation batches to ``cuda`` by name; where those are missing the run ends
with the example's own error, which the report shows. ``--stand-in-cifar`` replaces
CIFAR-10's loader by 32 random CIFAR-shaped images (a ``sitecustomize`` module on the
example's path), so that the programs that read CIFAR-10 run offline.
"""

from __future__ import annotations

import argparse
import os
import re
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


def converted(source: str, iterations: int | None) -> str:
    """``source`` with ``from betty.X import`` made ``from mlo.betty.X import`` and, when
    ``iterations`` is given, every literal ``train_iters=N`` made ``train_iters=iterations``."""
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
    stand_in: bool = False,
) -> str:
    folder = (repo / "examples" / example).parent
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / folder.name
        for path in folder.rglob("*"):
            if path.is_file():
                target = work / path.relative_to(folder)
                target.parent.mkdir(parents=True, exist_ok=True)
                if path.suffix == ".py":
                    target.write_text(converted(path.read_text(), iterations))
                else:
                    target.write_bytes(path.read_bytes())
        env = dict(os.environ)
        if stand_in:  # a sitecustomize module, imported at start-up from PYTHONPATH
            (work / "sitecustomize.py").write_text(STAND_IN)
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(work), env.get("PYTHONPATH")]))
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
            return f"still running after {timeout} s (stopped)"
        seconds = time.perf_counter() - start
        lines = (done.stdout + done.stderr).strip().splitlines()
        trained = [ln for ln in lines if "Global Step" in ln or "optimization finished" in ln]
        if done.returncode == 0 and trained:
            return f"trained, exit 0 in {seconds:.1f} s; last: {trained[-1].strip()[-90:]}"
        if done.returncode == 0:
            return f"ended before training (exit 0): {lines[-1].strip()[:140] if lines else ''}"
        error = next((ln for ln in reversed(lines) if ln and not ln.startswith(" ")), "?")
        return f"exit {done.returncode} in {seconds:.1f} s: {error.strip()[:140]}"


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
    args = parser.parse_args()
    if not (args.betty_repo / "examples").is_dir():
        parser.error(f"{args.betty_repo} has no examples/ folder; pass a checkout of Betty")
    for example, extra in EXAMPLES.items():
        outcome = run(
            args.betty_repo, example, extra, args.iterations, args.timeout, args.stand_in_cifar
        )
        print(f"{example}: {outcome}", flush=True)


if __name__ == "__main__":
    main()
