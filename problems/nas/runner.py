"""The search the NAS examples share.

``run_search`` trains any multilevel search over a DARTS supernet (DARTS itself, LeaSE)
given a function that wires the levels, through the loop of ``loop.py``; what it shares
with ``retrain.run_evaluation`` (seeds, device, data, the run folder, resuming) is in
``run_setup.py``. A search writes into ``config.out``: ``metrics.jsonl``, a checkpoint,
``genotype.json`` and the pictures.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

import mlo

from ..launch import lead
from ..run_folder import remove_previous_run
from .config import SearchRun
from .data import loader, search_split
from .genotype import Genotype, derive_genotype
from .loop import train
from .observe import supernet_accuracy
from .plots import plot_alpha_evolution, plot_genotype
from .run_setup import (
    check_memory,
    claim_if_lead,
    data_facts,
    first_image_shape,
    prepare,
    resume_engine,
    settings,
)
from .search import build_darts
from .search_space import ArchitectureWeights, Supernet

logger = logging.getLogger("problems.nas")


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
    The output folder is checked and locked first (``problems.run_folder``).
    """
    with claim_if_lead(config):
        return _search(config, wire, title, accuracy_of, console or Console(stderr=True))


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

    def build() -> Supernet:
        return Supernet(
            data.num_classes,
            config.layers,
            config.init_channels,
            partial_channels=config.partial_channels,
            in_channels=data.channels,
        )

    shape = first_image_shape(data.train)
    check_memory(build, config.batch_size, shape, 3 * config.init_channels, device, "the supernet")
    supernet = build().to(device)
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
    try:  # the loaders' workers stop with the training, even when it fails
        top = "architecture" if "architecture" in engine.problems else engine.graph.roots[0]
        history: dict[str, list] = {"steps": [], "normal": [], "reduce": []}
        checkpoint = out / "checkpoint.pt"
        if config.resume:
            extra = resume_engine(engine, config, out, data)
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
                f"{top} lr": engine.problems[top].optimizer.param_groups[0]["lr"],
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
            checkpoint_minutes=config.checkpoint_minutes,
            progress=config.progress,
            console=console,
            record=record,
            checkpoint_extra=lambda: {
                "history": history,
                "settings": settings(config),
                "data": data_facts(data),
            },
        )
    finally:
        engine.close()
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


def _distributed(config: SearchRun) -> str:
    """The engine's data parallelism: none on one process; under torchrun replicated
    levels ("ddp"), or sharded ones with ``--fsdp``."""
    if not mlo.parallel.distributed.initialized():
        return "none"
    return "fsdp" if config.fsdp else "ddp"
