"""Does LeaSE find better cells than DARTS? A study over methods and seeds, with a report.

For each method (lease, lease-sign, lease-saliency, lease-author, darts, random) and each
seed: search a cell (random: draw one), retrain it from scratch with the evaluation
network, and record test error, parameters and search time. ``study.md`` gets the table
(mean ± std per method) and a paired comparison of each method with darts on the same
seeds; ``study.png`` the test error per method and seed. Every run's genotype, metrics and
checkpoints stay under ``--out``; a killed study, started again with the same command,
continues with the runs it has not finished.

    python examples/lease_study.py                                   # CIFAR-10, paper budgets
    python examples/lease_study.py --config examples/configs/study_digits_cpu.toml
    python examples/lease_study.py --methods lease,darts --seeds 1 --dataset digits ...

The defaults are DARTS' CIFAR budgets (a GPU job); the TOML file above is the budget that
fits a 2-core CPU in about two hours on scikit-learn's digits.

``--retrain METHOD:SEED --retrain-seeds 100,101`` measures how much of the spread is
retraining: it retrains the cell that run found (its ``genotype.json``) from each of the
other seeds, under ``<run>/retrain/seed<S>``, resumable like the rest, and prints each
test error next to the run's own.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler

from problems.cli import (
    add_threads_flag,
    apply_threads,
    build_config,
    command_line,
    fail,
    print_config,
)
from problems.lease import wire_search
from problems.lease.study import METHODS, StudyRun, plot_study, retraining_table, study_table
from problems.nas.genotype import random_genotype
from problems.nas.observe import search_accuracies
from problems.nas.retrain import run_evaluation
from problems.nas.runner import run_search

Retrain = tuple[str, int, list[int]]


def parse(argv: list[str] | None) -> tuple[StudyRun, Retrain | None] | None:
    """The study's configuration and, with ``--retrain``, which run to retrain from which
    seeds; ``None`` after ``--print-config``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--config", type=Path, help="TOML file; flags override its values")
    add("--print-config", action="store_true", help="print the effective configuration and exit")
    add("--methods", help=f"comma-separated, of: {', '.join(METHODS)} (default: all)")
    add("--seeds", type=int, help="number of seeds (0 .. N-1; default 3)")
    add(
        "--dataset",
        choices=["cifar10", "cifar100", "imagefolder", "fashion-mnist", "digits", "synthetic"],
    )
    add("--data-dir", type=Path, dest="data_dir")
    add("--no-download", action="store_const", const=False, dest="download")
    add("--image-size", type=int, dest="image_size")
    add("--out")  # a string: the configuration refuses "" (Path("") would be ".")
    add("--device")
    add("--workers", type=int)
    add("--amp", action="store_const", const=True)
    add("--channels-last", action="store_const", const=True, dest="channels_last")
    add("--no-progress", action="store_const", const=False, dest="progress")
    add_threads_flag(parser)
    for flag, key, kind in [
        ("--search-layers", "search.layers", int),
        ("--search-channels", "search.init_channels", int),
        ("--search-batch-size", "search.batch_size", int),
        ("--search-epochs", "search.epochs", int),
        ("--search-steps", "search.max_steps", int),
        ("--pgd-steps", "search.pgd_steps", int),
        ("--arch-lr", "search.arch_lr", float),
        ("--eval-layers", "evaluate.layers", int),
        ("--eval-channels", "evaluate.init_channels", int),
        ("--eval-batch-size", "evaluate.batch_size", int),
        ("--eval-epochs", "evaluate.epochs", int),
        ("--eval-lr", "evaluate.lr", float),
        ("--cutout", "evaluate.cutout", int),
    ]:
        add(flag, type=kind, dest=key)
    add("--audience", dest="search.audience", choices=["resnet18", "resnet_small", "resnet_tiny"])
    add("--retrain", metavar="METHOD:SEED", help="retrain that run's cell from other seeds")
    add("--retrain-seeds", metavar="S,S", help="the seeds for --retrain (e.g. 100,101)")
    args = parser.parse_args(argv)
    retrain = _retrain_request(parser, args.retrain, args.retrain_seeds)
    flags = {
        k: v
        for k, v in vars(args).items()
        if k not in ("config", "print_config", "threads", "retrain", "retrain_seeds")
        and v is not None
    }
    if "methods" in flags:
        flags["methods"] = [m.strip() for m in flags["methods"].split(",") if m.strip()]
    config = build_config(StudyRun, args.config, flags)
    if args.print_config:
        print_config(config)
        return None
    print(apply_threads(args.threads), file=sys.stderr)
    return config, retrain


def _retrain_request(
    parser: argparse.ArgumentParser, run: str | None, seeds: str | None
) -> Retrain | None:
    """``--retrain METHOD:SEED`` with ``--retrain-seeds S,S``, checked."""
    if run is None and seeds is None:
        return None
    if run is None or seeds is None:
        parser.error("--retrain and --retrain-seeds go together")
    method, _, seed = run.partition(":")
    if method not in METHODS or not seed.isdigit():
        parser.error(f"--retrain takes METHOD:SEED with METHOD one of {', '.join(METHODS)}")
    try:
        others = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--retrain-seeds takes comma-separated integers, not {seeds!r}")
    if not others or int(seed) in others or min(others) < 0:
        parser.error("--retrain-seeds needs non-negative seeds other than the run's own")
    return method, int(seed), others


def retrain_runs(
    study: StudyRun, method: str, seed: int, seeds: list[int], console: Console
) -> int:
    """Retrain run ``(method, seed)``'s cell from each of ``seeds``; print the errors."""
    genotype = study.run_folder(method, seed) / "search" / "genotype.json"
    if not genotype.exists():
        fail(
            f"no cell for {method} seed {seed}: {genotype} is missing; run the study until "
            "that run's search has finished"
        )
    done = study.run_folder(method, seed) / "result.json"
    own = json.loads(done.read_text())["test_error"] if done.exists() else None
    errors = []
    for other in seeds:
        folder = study.retrain_folder(method, seed, other)
        resume = (folder / "checkpoint.pt").exists()
        config = study.evaluate_config(method, seed, genotype, resume, retrain_seed=other)
        errors.append(run_evaluation(config, console).test_error)
        (folder / "test_error.json").write_text(json.dumps({"test_error": errors[-1]}))
        print(
            f"{method} seed {seed}'s cell, retrained from seed {other}: "
            f"{100 * errors[-1]:.2f} % test error"
        )
    if own is not None:
        print(f"{method} seed {seed}'s own retraining: {100 * own:.2f} %")
    return 0


def run_one(study: StudyRun, method: str, seed: int, console: Console) -> dict:
    """Search (or draw), then evaluate; each half resumes from its own checkpoint."""
    folder = study.run_folder(method, seed)
    search_dir = folder / "search"
    genotype, seconds = search_dir / "genotype.json", 0.0
    if method == "random":
        search_dir.mkdir(parents=True, exist_ok=True)
        random_genotype(seed).save(genotype)
    elif not genotype.exists():
        resume = (search_dir / "checkpoint.pt").exists()
        config = study.search_config(method, seed, resume)
        title = f"{method} seed {seed}"
        started = time.perf_counter()
        run_search(config, wire_search, title=title, accuracy_of=search_accuracies, console=console)
        seconds = time.perf_counter() - started
        (search_dir / "search_time.json").write_text(json.dumps({"seconds": seconds}))
    if (search_dir / "search_time.json").exists():
        seconds = json.loads((search_dir / "search_time.json").read_text())["seconds"]
    resume = (folder / "evaluate" / "checkpoint.pt").exists()
    evaluation = run_evaluation(study.evaluate_config(method, seed, genotype, resume), console)
    return {
        "method": method,
        "seed": seed,
        "test_error": evaluation.test_error,
        "params_millions": evaluation.params_millions,
        "search_seconds": seconds,
        "evaluation_seconds": evaluation.seconds,
        "genotype": json.loads(genotype.read_text()),
    }


def write_report(study: StudyRun, results: list[dict], command: str) -> Path:
    report = study.out / "study.md"
    plot_study(results, study.out / "study.png")
    retrained = {
        (r["method"], r["seed"]): errors
        for r in results
        if (errors := study.retrained_errors(r["method"], r["seed"]))
    }
    retraining = (
        "\n## Retraining noise\n\nCells retrained from other seeds (`--retrain METHOD:SEED "
        "--retrain-seeds S,S`):\n\n" + retraining_table(results, retrained)
        if retrained
        else ""
    )
    report.write_text(
        f"# LeaSE study on {study.dataset}\n\n"
        f"Command: `{command}`\n\n"
        + study_table(results)
        + "\n![test error per method and seed](study.png)\n"
        + retraining
        + "\n"
        + "Configuration:\n\n```json\n"
        + study.model_dump_json(indent=2)
        + "\n```\n"
    )
    return report


@command_line
def main(argv: list[str] | None = None) -> int:
    parsed = parse(argv)
    if parsed is None:
        return 0
    study, retrain = parsed
    console = Console(stderr=True)
    logging.basicConfig(
        level=logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )
    if retrain is not None:
        return retrain_runs(study, *retrain, console)
    command = "python examples/lease_study.py " + " ".join(sys.argv[1:] if argv is None else argv)
    results: list[dict] = []
    for seed in range(study.seeds):
        for method in study.methods:
            done = study.run_folder(method, seed) / "result.json"
            if done.exists():
                results.append(json.loads(done.read_text()))
                console.print(f"{method} seed {seed}: done before, kept")
                continue
            result = run_one(study, method, seed, console)
            done.write_text(json.dumps(result, indent=2))
            results.append(result)
            console.print(f"{method} seed {seed}: test error {100 * result['test_error']:.2f} %")
            write_report(study, results, command)
    report = write_report(study, results, command)
    print(study_table(results))
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
