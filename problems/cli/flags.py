"""The flags the NAS examples share, and ``--threads``."""

from __future__ import annotations

import argparse
from pathlib import Path

from .failures import fail


def add_common_flags(
    parser: argparse.ArgumentParser,
    datasets: tuple[str, ...] = (
        "cifar10",
        "cifar100",
        "imagefolder",
        "fashion-mnist",
        "digits",
        "synthetic",
    ),
) -> None:
    """Flags shared by the search and evaluation commands (None = keep file/default)."""
    parser.add_argument("--config", type=Path, help="TOML file; flags override its values")
    parser.add_argument(
        "--print-config", action="store_true", help="print the effective configuration and exit"
    )
    parser.add_argument(
        "--dataset",
        choices=list(datasets),
        help="digits: real 8×8 handwritten digits shipped with scikit-learn (works offline); "
        "fashion-mnist: 28×28 clothing images (offline from Debian's dataset-fashion-mnist)"
        if "digits" in datasets
        else None,
    )
    parser.add_argument("--data-dir", type=Path, dest="data_dir")
    parser.add_argument(
        "--no-download",
        action="store_const",
        const=False,
        dest="download",
        help="never try to download the dataset",
    )
    parser.add_argument("--out", help="output folder")  # a string: "" is refused, not "."
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int, dest="batch_size")
    parser.add_argument("--layers", type=int)
    parser.add_argument("--init-channels", type=int, dest="init_channels")
    parser.add_argument("--max-steps", type=int, dest="max_steps")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    parser.add_argument("--workers", type=int, help="data-loading worker processes")
    parser.add_argument(
        "--amp",
        action="store_const",
        const=True,
        help="bfloat16 autocast (on GPUs with bf16 support)",
    )
    parser.add_argument("--channels-last", action="store_const", const=True, dest="channels_last")
    parser.add_argument(
        "--resume", action="store_const", const=True, help="continue from OUT/checkpoint.pt"
    )
    parser.add_argument(
        "--overwrite",
        action="store_const",
        const=True,
        help="replace the previous run in OUT (without it, a folder holding one is refused)",
    )
    parser.add_argument(
        "--override",
        type=comma_list,
        help="with --resume: settings allowed to differ from the checkpoint's, comma-separated "
        "(e.g. seed,lease.lam)",
    )
    parser.add_argument("--no-progress", action="store_const", const=False, dest="progress")
    parser.add_argument(
        "--image-size",
        type=int,
        dest="image_size",
        help="image side for imagefolder, fashion-mnist (default 28), digits (default 16) and "
        "synthetic data",
    )
    parser.add_argument(
        "--synthetic-size",
        type=int,
        dest="synthetic_size",
        help="examples in the synthetic training set",
    )
    parser.add_argument(
        "--log-every", type=int, dest="log_every", help="updates between metric records"
    )
    parser.add_argument(
        "--checkpoint-every", type=int, dest="checkpoint_every", help="updates between checkpoints"
    )
    parser.add_argument(
        "--checkpoint-minutes",
        type=float,
        dest="checkpoint_minutes",
        help="minutes of training between checkpoints, whatever --checkpoint-every says "
        "(default 10; Ctrl-C and SIGTERM write one too)",
    )
    add_threads_flag(parser)


def comma_list(text: str) -> list[str]:
    """A comma-separated flag value as a list (``--override seed,lease.lam``)."""
    return [k.strip() for k in text.split(",") if k.strip()]


def add_threads_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: OMP_NUM_THREADS, else the cores this process may use)",
    )


def apply_threads(requested: int | None) -> str:
    """Set torch's threads (``problems.threads``); a bad value exits 2 with a message."""
    from ..threads import configure_threads

    try:
        return configure_threads(requested)
    except ValueError as exc:
        fail(str(exc))
