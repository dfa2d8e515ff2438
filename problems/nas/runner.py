"""Search and evaluation loops shared by the NAS examples.

``run_search`` trains any multilevel search over a DARTS supernet (DARTS itself, LeaSE)
given a function that wires the levels; ``run_evaluation`` retrains a genotype from
scratch. Both write into ``config.out``: ``metrics.jsonl``, a checkpoint, and for a
search ``genotype.json`` and the pictures.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

import mlo
from mlo.checkpoint import load_safe, save_atomic
from mlo.monitor import MetricsWriter

from ..progress import TrainingProgress
from .config import EvalRun, SearchRun
from .data import ImageData, load_images, loader, search_split
from .evaluation import EvalNetwork, count_parameters
from .genotype import Genotype, derive_genotype, genotype_from
from .observe import supernet_accuracy
from .plots import plot_alpha_evolution, plot_genotype
from .search import build_darts, cross_entropy, to_device
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
    """Create the output folder, seed every generator, pick the device, load the data."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)
    device = resolve_device(config.device)
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
    """
    console = console or Console(stderr=True)
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
    )
    problems, deps = wire(setup)
    for p in problems:
        p.amp_dtype = torch.bfloat16 if config.amp else None
        p.channels_last = config.channels_last
    engine = mlo.Engine(
        problems, deps, mlo.EngineConfig(steps=total, progress=False, log_every=config.log_every)
    )
    top = "architecture" if "architecture" in engine.problems else engine.graph.roots[0]
    history: dict[str, list] = {"steps": [], "normal": [], "reduce": []}
    checkpoint = out / "checkpoint.pt"
    if config.resume:
        if not checkpoint.exists():
            raise FileNotFoundError(f"--resume: {checkpoint} does not exist")
        extra = engine.load(checkpoint)
        history = {k: list(v) for k, v in extra["history"].items()}
        console.print(f"resumed from {checkpoint} at step {engine.tick} of {total}")

    def record_alphas() -> None:
        normal, reduce = arch.edge_strengths()
        history["steps"].append(engine.tick)
        history["normal"].append(normal.cpu())
        history["reduce"].append(reduce.cpu())

    if not history["steps"]:
        record_alphas()
    writer = MetricsWriter(out / "metrics.jsonl")
    images_per_update = config.batch_size
    start = time.perf_counter()
    start_tick = engine.tick
    accuracies: dict[str, float] = {}
    with TrainingProgress(total, title, config.progress, console) as bar:
        while engine.tick < total:
            engine.step()
            done = engine.tick
            if done % config.log_every == 0 or done == total:
                report = engine.report()
                if accuracy_of is not None:
                    accuracies = accuracy_of(engine, engine.problems[top].batch)
                record_alphas()
                epoch = engine.problems[top].stream.epoch
                images = (done - start_tick) * images_per_update * inner
                bar.update(
                    done,
                    images,
                    epoch=epoch,
                    **{f"{n} loss": v for n, v in report["loss"].items()},
                    **accuracies,
                )
                writer.write(
                    {
                        **report,
                        "epoch": epoch,
                        **accuracies,
                        "images_per_second": bar.images_per_second(),
                        "lr": engine.problems[top].optimizer.param_groups[0]["lr"],
                    }
                )
            if done % config.checkpoint_every == 0 or done == total:
                engine.save(checkpoint, extra={"history": history})
    writer.close()
    seconds = time.perf_counter() - start
    normal, reduce = arch.edge_strengths()
    genotype = derive_genotype(normal, reduce)
    files = {
        "genotype": out / "genotype.json",
        "metrics": out / "metrics.jsonl",
        "checkpoint": checkpoint,
        "cells": out / "cells.png",
        "alphas": out / "alphas.png",
    }
    genotype.save(files["genotype"])
    plot_genotype(genotype, files["cells"], title=f"{title}: derived cells")
    plot_alpha_evolution(history["steps"], history["normal"], history["reduce"], files["alphas"])
    val_batches = max(1, min(20, per_epoch))
    val_accuracy = supernet_accuracy(
        engine.problems[top],
        supernet,
        arch,
        val_half,
        device,
        batches=val_batches,
        batch_size=config.batch_size,
    )
    ips = (engine.tick - start_tick) * images_per_update * inner / max(seconds, 1e-9)
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


# --------------------------------------------------------------------------- evaluation


@dataclass
class EvalResult:
    test_error: float
    params_millions: float
    seconds: float
    epochs: int
    steps: int


def run_evaluation(config: EvalRun, console: Console | None = None) -> EvalResult:
    """Train the genotype's evaluation network from scratch; report test error."""
    console = console or Console(stderr=True)
    config = config.effective()
    genotype = genotype_from(config.genotype)
    out, device, data = prepare(config, cutout=config.cutout)
    pin = device.type == "cuda"
    train = loader(
        data.train,
        config.batch_size,
        shuffle=True,
        seed=config.seed,
        workers=config.workers,
        pin_memory=pin,
    )
    test = (
        loader(
            data.test,
            config.batch_size,
            shuffle=False,
            seed=0,
            workers=config.workers,
            drop_last=False,
            pin_memory=pin,
        )
        if len(data.test)
        else None
    )
    model = EvalNetwork(
        genotype,
        data.num_classes,
        config.layers,
        config.init_channels,
        auxiliary=config.auxiliary_weight > 0,
        in_channels=data.channels,
    ).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    params = count_parameters(model) / 1e6
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.epochs)
    total_steps = config.epochs * len(train)
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    checkpoint = out / "checkpoint.pt"
    step, epoch = 0, 0
    if config.resume:
        saved = load_safe(checkpoint, map_location=device)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        step, epoch = saved["step"], saved["epoch"]
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.amp)
    writer = MetricsWriter(out / "metrics.jsonl")
    start = time.perf_counter()
    images = 0
    with TrainingProgress(total_steps, "evaluate", config.progress, console) as bar:
        while step < total_steps and epoch < config.epochs:
            model.train()
            model.drop_path_prob = config.drop_path * epoch / config.epochs
            for batch in train:
                x, y = to_device(batch, device, config.channels_last)
                with amp:
                    logits, aux = model(x)
                    loss = cross_entropy(logits, y)
                    if aux is not None:
                        loss = loss + config.auxiliary_weight * cross_entropy(aux, y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                step += 1
                images += len(y)
                if step % config.log_every == 0:
                    value = float(loss.detach())
                    if not math.isfinite(value):
                        raise FloatingPointError(f"evaluation loss became {value} at step {step}")
                    bar.update(step, images, epoch=epoch, loss=value)
                    writer.write(
                        {
                            "step": step,
                            "epoch": epoch,
                            "loss": value,
                            "lr": optimizer.param_groups[0]["lr"],
                            "images_per_second": bar.images_per_second(),
                        }
                    )
                if step >= total_steps:
                    break
            else:
                epoch += 1
                scheduler.step()
            save_atomic(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "step": step,
                    "epoch": epoch,
                },
                checkpoint,
            )
    seconds = time.perf_counter() - start
    error = test_error(model, test, device, amp) if test is not None else float("nan")
    writer.write({"step": step, "test_error": error, "params_millions": params, "seconds": seconds})
    writer.close()
    return EvalResult(error, params, seconds, epoch, step)


def test_error(model: EvalNetwork, data, device: torch.device, amp) -> float:
    """Top-1 error in eval mode (running BatchNorm statistics, no drop-path), observed
    without side effects (:func:`mlo.observing`)."""
    correct = torch.zeros((), dtype=torch.long, device=device)
    total = 0
    with mlo.observing([model]):
        model.eval()
        for batch in data:
            x, y = to_device(batch, device)
            with amp:
                logits, _ = model(x)
            correct += mlo.observe.correct(logits, y)
            total += len(y)
    return 1.0 - int(correct) / max(total, 1)
