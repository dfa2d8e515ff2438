"""The search the NAS examples share, and what it shares with the evaluation.

``run_search`` trains any multilevel search over a DARTS supernet (DARTS itself, LeaSE)
given a function that wires the levels, through the loop of ``loop.py``; ``prepare``
(output folder, seeds, device, data) is shared with ``retrain.run_evaluation``. A search
writes into ``config.out``: ``metrics.jsonl``, a checkpoint, ``genotype.json`` and the
pictures.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

import mlo

from ..launch import lead, start
from ..run_folder import (
    check_resumed_settings,
    claim,
    flatten,
    remove_previous_run,
    truncate_metrics,
)
from .config import EvalRun, SearchRun
from .data import ImageData, load_images, loader, search_split
from .genotype import Genotype, derive_genotype
from .loop import train
from .observe import supernet_accuracy
from .plots import plot_alpha_evolution, plot_genotype
from .search import build_darts
from .search_space import ArchitectureWeights, Supernet

logger = logging.getLogger("problems.nas")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine; use cpu")
    return device


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover
        pass


def prepare(config: SearchRun | EvalRun, cutout: int = 0) -> tuple[Path, torch.device, ImageData]:
    """Seed every generator, pick the device, load the data. The output folder is
    created by the first file written into it, so a run that fails first leaves none."""
    out = Path(config.out)
    seed_everything(config.seed)
    device, _ = start(resolve_device(config.device))
    data = load_images(
        config.dataset,
        config.data_dir,
        download=config.download,
        cutout=cutout,
        image_size=config.image_size,
        synthetic_size=config.synthetic_size,
        seed=config.seed,
    )
    return out, device, data


@dataclass
class SearchSetup:
    """What a search's wiring function receives."""

    config: SearchRun
    supernet: Supernet
    arch: ArchitectureWeights
    search_train: torch.utils.data.DataLoader
    search_val: torch.utils.data.DataLoader
    num_classes: int
    total_updates: int
    device: torch.device
    image_shape: tuple[int, int, int] = (3, 32, 32)
    pixel_std: tuple[float, ...] = (1.0, 1.0, 1.0)
    """Per-channel std the inputs were divided by (to express ε in pixel units)."""
    train_half: torch.utils.data.Dataset | None = None
    """The search-train images themselves (``search_train`` loads them), for a level
    that needs a loader of its own over them."""


@dataclass
class SearchResult:
    genotype: Genotype
    steps: int
    seconds: float
    images_per_second: float
    val_accuracy: float
    losses: dict[str, float]
    files: dict[str, Path] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


Wiring = Callable[[SearchSetup], tuple[list[mlo.Problem], dict[str, list[str]]]]


def darts_levels(setup: SearchSetup, solver: str, unroll_steps: int = 1):
    """DARTS' two levels over the setup's supernet and loaders (see ``build_darts``)."""
    return build_darts(
        setup.supernet,
        setup.arch,
        setup.search_train,
        setup.search_val,
        total_updates=setup.total_updates,
        hyper=setup.config.hyper,
        solver=solver,
        unroll_steps=unroll_steps,
    )


# Settings that say how a run executes, not what it computes: free to change on --resume.
EXECUTION_SETTINGS = (
    "resume",
    "overwrite",
    "override",
    "progress",
    "workers",
    "device",
    "max_steps",
    "checkpoint_every",
    "log_every",
    "download",
    "data_dir",
    "out",
    "small",
    "short",
)


def settings(config: SearchRun | EvalRun) -> dict[str, Any]:
    """The run's configuration as flat ``{dotted.key: value}`` (stored in checkpoints)."""
    return flatten(config.model_dump(mode="json"))


def resume_engine(engine: mlo.Engine, config: SearchRun | EvalRun, out: Path) -> dict[str, Any]:
    """Load ``OUT/checkpoint.pt`` into ``engine`` after checking that the run was started
    with the same settings (but those in ``config.override``); drop the metric records
    after the checkpoint, which the resumed run writes again. Returns the ``extra``."""
    checkpoint = out / "checkpoint.pt"
    device = next(iter(engine.problems.values())).params.tensors[0].device
    saved = mlo.checkpoint.read(checkpoint, map_location=device)
    extra = saved.get("extra") if isinstance(saved.get("extra"), dict) else {}
    check_resumed_settings(
        extra.get("settings"), settings(config), EXECUTION_SETTINGS, set(config.override)
    )
    engine.load_state_dict(saved["engine"], keep_current_hyperparameters=bool(config.override))
    if lead():
        truncate_metrics(out / "metrics.jsonl", engine.tick)
    return extra


def run_search(
    config: SearchRun,
    wire: Wiring,
    *,
    title: str = "search",
    accuracy_of: Callable[[mlo.Engine, Any], dict[str, float]] | None = None,
    console: Console | None = None,
) -> SearchResult:
    """Run a search: data, supernet, levels from ``wire``, the engine loop, outputs.

    The architecture is the level named ``architecture`` or, failing that, the top level.
    ``accuracy_of(engine, val_batch)`` returns accuracies shown in the progress bar.
    The output folder is checked and locked first (:mod:`problems.run_folder`).
    """
    with claim_if_lead(config):
        return _search(config, wire, title, accuracy_of, console or Console(stderr=True))


def claim_if_lead(config: SearchRun | EvalRun):
    """The run folder's checks and lock (:func:`problems.run_folder.claim`), taken by the
    rank that writes; under torchrun the other ranks write nothing."""
    if not lead():
        return nullcontext()
    return claim(Path(config.out), resume=config.resume, overwrite=config.overwrite)


def _search(
    config: SearchRun,
    wire: Wiring,
    title: str,
    accuracy_of: Callable[[mlo.Engine, Any], dict[str, float]] | None,
    console: Console,
) -> SearchResult:
    out, device, data = prepare(config)
    train_half, val_half = search_split(data.train, 0.5, seed=config.seed)
    pin = device.type == "cuda"
    search_train = loader(
        train_half,
        config.batch_size,
        shuffle=True,
        seed=config.seed,
        workers=config.workers,
        pin_memory=pin,
    )
    search_val = loader(
        val_half,
        config.batch_size,
        shuffle=True,
        seed=config.seed + 1,
        workers=config.workers,
        pin_memory=pin,
    )
    per_epoch = min(len(search_train), len(search_val))
    inner = config.weight_updates_per_step()
    planned = max(1, config.epochs * per_epoch // inner)
    # --max-steps stops early; the learning-rate schedule still spans the planned epochs,
    # so that a run stopped and resumed follows the same schedule as one run straight.
    total = planned if config.max_steps is None else min(planned, config.max_steps)

    supernet = Supernet(
        data.num_classes,
        config.layers,
        config.init_channels,
        partial_channels=config.partial_channels,
        in_channels=data.channels,
    ).to(device)
    arch = ArchitectureWeights(edge_normalization=config.partial_channels > 1).to(device)
    if config.channels_last:
        supernet = supernet.to(memory_format=torch.channels_last)
    setup = SearchSetup(
        config,
        supernet,
        arch,
        search_train,
        search_val,
        data.num_classes,
        planned * inner,
        device,
        tuple(data.train[0][0].shape),
        data.std,
        train_half,
    )
    problems, deps = wire(setup)
    for p in problems:
        if config.sync_batchnorm:
            mlo.convert_sync_batchnorm(p.module)
        p.amp_dtype = torch.bfloat16 if config.amp else None
        p.channels_last = config.channels_last
    engine = mlo.Engine(
        problems,
        deps,
        mlo.EngineConfig(
            steps=total,
            progress=False,
            log_every=config.log_every or 10,
            distributed=_distributed(config),
        ),
    )
    top = "architecture" if "architecture" in engine.problems else engine.graph.roots[0]
    history: dict[str, list] = {"steps": [], "normal": [], "reduce": []}
    checkpoint = out / "checkpoint.pt"
    if config.resume:
        extra = resume_engine(engine, config, out)
        saved = extra.get("history")
        if not isinstance(saved, dict) or set(saved) != set(history):
            raise mlo.CheckpointError(
                f"{checkpoint} was not written by a search (no α history in it); resume "
                "with the checkpoint.pt of a search, or start without --resume"
            )
        history = {k: list(v) for k, v in saved.items()}
        console.print(f"resumed from {checkpoint} at step {engine.tick} of {total}")
    elif config.overwrite and lead():
        remove_previous_run(out)

    def record_alphas() -> None:
        normal, reduce = arch.edge_strengths()
        history["steps"].append(engine.tick)
        history["normal"].append(normal.cpu())
        history["reduce"].append(reduce.cpu())

    if not history["steps"]:
        record_alphas()
    accuracies: dict[str, float] = {}

    def record() -> dict[str, Any]:
        nonlocal accuracies
        if accuracy_of is not None:
            accuracies = accuracy_of(engine, engine.problems[top].batch)
        record_alphas()
        return {
            "epoch": engine.problems[top].stream.epoch,
            **accuracies,
            "lr": engine.problems[top].optimizer.param_groups[0]["lr"],
        }

    start_tick = engine.tick
    seconds = train(
        engine,
        total,
        title=title,
        out=out,
        images_per_tick=config.batch_size * inner,
        log_every=config.log_every,
        checkpoint_every=config.checkpoint_every,
        progress=config.progress,
        console=console,
        record=record,
        checkpoint_extra=lambda: {"history": history, "settings": settings(config)},
    )
    normal, reduce = arch.edge_strengths()
    genotype = derive_genotype(normal, reduce)
    files = {
        "genotype": out / "genotype.json",
        "metrics": out / "metrics.jsonl",
        "checkpoint": checkpoint,
        "cells": out / "cells.png",
        "alphas": out / "alphas.png",
    }
    if lead():
        genotype.save(files["genotype"])
        plot_genotype(genotype, files["cells"], title=f"{title}: derived cells")
        plot_alpha_evolution(
            history["steps"], history["normal"], history["reduce"], files["alphas"]
        )
    val_batches = max(1, min(20, per_epoch))
    status = (
        console.status(f"supernet accuracy on {val_batches} search-val batches")
        if config.progress
        else nullcontext()
    )
    with status:
        val_accuracy = supernet_accuracy(
            engine.problems[top],
            supernet,
            arch,
            val_half,
            device,
            batches=val_batches,
            batch_size=config.batch_size,
        )
    ips = (engine.tick - start_tick) * config.batch_size * inner / max(seconds, 1e-9)
    return SearchResult(
        genotype,
        engine.tick,
        seconds,
        ips,
        val_accuracy,
        engine.losses(),
        files,
        {
            "accuracies": accuracies,
            "val_images": min(len(val_half), val_batches * config.batch_size),
        },
    )


def summary_table(title: str, rows: dict[str, Any]) -> Table:
    table = Table(title=title, show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    for key, value in rows.items():
        table.add_row(key, value if isinstance(value, str) else json.dumps(value))
    return table


def genotype_rows(genotype: Genotype) -> dict[str, str]:
    def cell(pairs):
        return ", ".join(f"{op}←{i}" for op, i in pairs)

    return {"normal cell": cell(genotype.normal), "reduction cell": cell(genotype.reduce)}


def _distributed(config: SearchRun) -> str:
    """The engine's data parallelism: none on one process; under torchrun replicated
    levels ("ddp"), or sharded ones with ``--fsdp``."""
    if not mlo.distributed.initialized():
        return "none"
    return "fsdp" if config.fsdp else "ddp"
