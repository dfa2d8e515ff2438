"""The command line every NAS example shares: ``search`` (the default) and ``evaluate``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.logging import RichHandler

from ..cli import add_common_flags, apply_threads, build_config, command_line, print_config
from ..launch import lead
from .config import EvalRun, SearchRun
from .imagenet import ImageNetEvalRun, run_imagenet_evaluation
from .retrain import run_evaluation
from .runner import Wiring, run_search
from .summary import genotype_rows, images_per_second_label, summary_table


@command_line
def nas_main(
    argv: list[str] | None,
    *,
    description: str,
    search_model: type[SearchRun],
    add_search_flags: Callable[[argparse.ArgumentParser], None],
    wire: Wiring,
    title_of: Callable[[Any], str],
    accuracy_of: Callable[..., dict[str, float]] | None = None,
    translate: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    search_defaults: dict[str, Any] | None = None,
    eval_defaults: dict[str, Any] | None = None,
) -> int:
    """Parse, validate, run, and print the summary table; failures exit 2 with a message.

    ``translate`` maps the parsed search flags onto config keys (for flags that set
    several fields); ``title_of(config)`` names the method in the outputs.
    """
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Without a command, search runs. `search --help` and `evaluate --help` list\n"
        "every flag; the common ones: --dataset {cifar10,cifar100,imagefolder,\n"
        "fashion-mnist,digits,synthetic}, --data-dir, --out, --epochs, --batch-size,\n"
        "--layers, --init-channels, --device, --workers, --threads, --resume,\n"
        "--config FILE.toml, --print-config;\n"
        "search: --small, --max-steps; evaluate: --genotype, --short;\n"
        "evaluate-imagenet: --dataset {imagenet,imagefolder}, --genotype, --short.",
    )
    commands = parser.add_subparsers(dest="command")
    search = commands.add_parser("search", help="search a cell (default)")
    add_common_flags(search)
    search.add_argument(
        "--partial-channels",
        type=int,
        dest="partial_channels",
        help="PC-DARTS: each edge sees 1/k of the channels",
    )
    search.add_argument(
        "--sync-bn",
        action="store_const",
        const=True,
        dest="sync_batchnorm",
        help="under torchrun: batch norm over all ranks' examples (mlo.SyncBatchNorm), so "
        "that N ranks compute what one process does with the global batch",
    )
    search.add_argument(
        "--fsdp",
        action="store_const",
        const=True,
        dest="fsdp",
        help="under torchrun: shard each trained level's parameters and optimizer state "
        "across the ranks (EngineConfig(distributed='fsdp'), FSDP2) instead of replicating "
        "them",
    )
    search.add_argument(
        "--small",
        action="store_const",
        const=True,
        help="small budget for a first look on a CPU: 5 cells, 8 channels, batch 16, 10 "
        "architecture updates (flags given explicitly win)",
    )
    add_search_flags(search)
    evaluate = commands.add_parser("evaluate", help="retrain a genotype from scratch")
    add_common_flags(evaluate)
    evaluate.add_argument("--genotype", help="genotype.json or a published name (DARTS_V2)")
    evaluate.add_argument("--lr", type=float, help="SGD learning rate (cosine-annealed)")
    evaluate.add_argument("--cutout", type=int, help="cutout square side (0: off)")
    evaluate.add_argument("--drop-path", type=float, dest="drop_path", help="final drop-path")
    evaluate.add_argument(
        "--auxiliary-weight", type=float, dest="auxiliary_weight", help="0: no auxiliary head"
    )
    evaluate.add_argument(
        "--short",
        action="store_const",
        const=True,
        help="short budget, a few minutes on a CPU: 1 epoch of at most 100 updates, 6 cells, "
        "16 channels (flags given explicitly win)",
    )
    imagenet = commands.add_parser(
        "evaluate-imagenet",
        help="train a genotype's mobile-setting network on ImageNet (PC-DARTS recipe)",
    )
    add_common_flags(imagenet, datasets=("imagenet", "imagefolder"))
    imagenet.add_argument("--genotype", help="genotype.json or a published name (DARTS_V2)")
    imagenet.add_argument("--lr", type=float, help="SGD lr (default 0.5 × global batch / 1024)")
    imagenet.add_argument("--warmup-epochs", type=float, dest="warmup_epochs")
    imagenet.add_argument("--decay", choices=["linear", "cosine"], help="after the warm-up")
    imagenet.add_argument("--label-smoothing", type=float, dest="label_smoothing")
    imagenet.add_argument("--drop-path", type=float, dest="drop_path", help="final drop-path")
    imagenet.add_argument(
        "--auxiliary-weight", type=float, dest="auxiliary_weight", help="0: no auxiliary head"
    )
    imagenet.add_argument(
        "--short",
        action="store_const",
        const=True,
        help="a check in minutes on a CPU: at most 20 updates, 2 cells, 8 channels, batch 8, "
        "64-pixel crops (flags given explicitly win)",
    )
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("search", "evaluate", "evaluate-imagenet", "-h", "--help"):
        argv = ["search", *argv]
    args = parser.parse_args(argv)

    console = Console(stderr=True)
    logging.basicConfig(
        level=logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )
    flags = {
        k: v
        for k, v in vars(args).items()
        if k not in ("command", "config", "print_config", "threads") and v is not None
    }
    if args.command == "search":
        flags = translate(flags) if translate else flags
        config = build_config(search_model, args.config, flags, search_defaults)
        config = config.effective() if hasattr(config, "effective") else config
    elif args.command == "evaluate":
        config = build_config(EvalRun, args.config, flags, eval_defaults).effective()
    else:
        config = build_config(ImageNetEvalRun, args.config, flags).effective()
    if args.print_config:
        print_config(config)
        return 0
    threads = apply_threads(args.threads)
    if lead():  # under torchrun every rank sets its threads; one says so
        logging.getLogger("problems.nas").info(threads)
    if args.command == "search":
        title = title_of(config)
        result = run_search(config, wire, title=title, accuracy_of=accuracy_of, console=console)
        if not lead():
            return 0
        Console().print(
            summary_table(
                title,
                {
                    "method": title,
                    "dataset": config.dataset,
                    "steps (architecture updates)": str(result.steps),
                    "search time": f"{result.seconds:.1f} s",
                    images_per_second_label(): f"{result.images_per_second:.3g}",
                    "supernet val accuracy": f"{100 * result.val_accuracy:.2f} % "
                    f"({result.extra['val_images']} search-val images)",
                    **{
                        k: f"{100 * v:.2f} % (last search-val batch)"
                        for k, v in result.extra["accuracies"].items()
                    },
                    "accuracies": "BatchNorm with batch statistics, as the search trains",
                    **genotype_rows(result.genotype),
                    **{f"outputs: {k}": str(v) for k, v in result.files.items()},
                },
            )
        )
    elif args.command == "evaluate-imagenet":
        result = run_imagenet_evaluation(config, console=console)
        if not lead():
            return 0
        Console().print(
            summary_table(
                "ImageNet evaluation (mobile setting)",
                {
                    "genotype": config.genotype,
                    "top-1 error": f"{100 * result.top1_error:.2f} %",
                    "top-5 error": f"{100 * result.top5_error:.2f} %",
                    "parameters": f"{result.params_millions:.3f} M",
                    "multiply-adds": f"{result.multiply_adds_millions:.4g} M",
                    "steps": str(result.steps),
                    "time": f"{result.seconds:.1f} s",
                },
            )
        )
    else:
        result = run_evaluation(config, console=console)
        if not lead():
            return 0
        Console().print(
            summary_table(
                "evaluation",
                {
                    "genotype": config.genotype,
                    "test error": f"{100 * result.test_error:.2f} %",
                    "parameters": f"{result.params_millions:.3f} M",
                    "epochs / steps": f"{result.epochs:.3g} / {result.steps}",
                    "time": f"{result.seconds:.1f} s",
                },
            )
        )
    return 0
