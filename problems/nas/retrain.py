"""Retraining a genotype from scratch: one level on the mlo engine.

The evaluation network trains on the whole training set with SGD, momentum, weight decay,
a cosine learning rate per epoch, gradient clipping, the auxiliary head and a drop-path
probability that grows linearly over the epochs (DARTS' CIFAR recipe). Running it on the
engine gives it what the search has: checkpoints that resume exactly at any update
(mid-epoch included: data position, random generators, optimizer and schedule), finite
checks, and the same loop, progress display and metrics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

import mlo
from mlo.monitor import MetricsWriter

from ..launch import lead
from ..run_folder import remove_previous_run
from .config import EvalRun
from .data import loader
from .evaluation import EvalNetwork, count_parameters
from .genotype import Genotype, genotype_from
from .loop import train
from .run_setup import (
    check_memory,
    check_same_data,
    claim_if_lead,
    data_facts,
    first_image_shape,
    prepare,
    resume_engine,
    settings,
)
from .search import ImageLevel, cross_entropy, to_device


class Retrain(ImageLevel):
    """Cross-entropy of the evaluation network, plus the auxiliary head's, weighted.

    The drop-path probability of an update is ``drop_path · epoch / epochs``, with
    ``epoch`` the 0-based pass over the data that the update's batch belongs to.
    """

    auxiliary_weight: float = 0.4
    drop_path: float = 0.2
    epochs: int = 600
    label_smoothing: float = 0.0

    def configure(self, config) -> None:
        """Take the loss and precision settings of a retraining configuration (CIFAR's
        ``EvalRun`` or ImageNet's ``ImageNetEvalRun``)."""
        self.auxiliary_weight, self.drop_path, self.epochs = (
            config.auxiliary_weight,
            config.drop_path,
            config.epochs,
        )
        self.label_smoothing = getattr(config, "label_smoothing", 0.0)
        self.amp_dtype = torch.bfloat16 if config.amp else None
        self.channels_last = config.channels_last

    def training_step(self, batch):
        x, y = self.images(batch)
        self.module.drop_path_prob = self.drop_path * self.stream.epoch / self.epochs
        with self.autocast():
            logits, aux = self.module(x)
        smoothing = self.label_smoothing
        loss = cross_entropy(logits, y, smoothing)
        if aux is not None:
            loss = loss + self.auxiliary_weight * cross_entropy(aux, y, smoothing)
        return loss


def epoch_cosine(optimizer: torch.optim.Optimizer, epochs: int, per_epoch: int):
    """Cosine annealing to zero over ``epochs``, constant within an epoch (stepped per
    update): the learning rate of update ``k`` is ``lr · ½(1 + cos(π · ⌊k / per_epoch⌋ /
    epochs))``, as ``CosineAnnealingLR(T_max=epochs)`` stepped at each epoch's end."""

    def factor(update: int) -> float:
        return 0.5 * (1 + math.cos(math.pi * min(update // per_epoch, epochs) / epochs))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class EvalResult:
    test_error: float
    params_millions: float
    seconds: float
    epochs: float
    steps: int


def run_evaluation(config: EvalRun, console: Console | None = None) -> EvalResult:
    """Train the genotype's evaluation network from scratch; report test error. The
    output folder is checked and locked first (``problems.run_folder``)."""
    config = config.effective()
    genotype = genotype_from(config.genotype)
    with claim_if_lead(config):
        return _evaluate(config, genotype, console or Console(stderr=True))


def _evaluate(config: EvalRun, genotype: Genotype, console: Console) -> EvalResult:
    out, device, data = prepare(config, cutout=config.cutout)
    pin = device.type == "cuda"
    train_data = loader(
        data.train,
        config.batch_size,
        shuffle=True,
        seed=config.seed,
        workers=config.workers,
        pin_memory=pin,
    )

    def build() -> EvalNetwork:
        return EvalNetwork(
            genotype,
            data.num_classes,
            config.layers,
            config.init_channels,
            auxiliary=config.auxiliary_weight > 0,
            in_channels=data.channels,
        )

    shape = first_image_shape(data.train)
    stem = 3 * config.init_channels  # DARTS' stem multiplier
    check_memory(build, config.batch_size, shape, stem, device, "the evaluation network")
    model = build().to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    params = count_parameters(model) / 1e6
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    per_epoch = len(train_data)
    level = Retrain(
        "network",
        model,
        optimizer,
        data=train_data,
        scheduler=epoch_cosine(optimizer, config.epochs, per_epoch),
        config=mlo.ProblemConfig(grad_clip=config.grad_clip),
    )
    level.configure(config)
    total = config.epochs * per_epoch
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    facts = data_facts(data)
    engine, seconds = train_one_level(level, config, out, total, "evaluate", console, facts)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.amp)
    error = test_error(model, data.test, config, device, amp) if len(data.test) else float("nan")
    writer = MetricsWriter(out / "metrics.jsonl" if lead() else None)
    writer.write({"step": engine.tick, "test_error": error, "params_millions": params})
    writer.close()
    return EvalResult(error, params, seconds, engine.tick / per_epoch, engine.tick)


def train_one_level(
    level: Retrain,
    config,
    out: Path,
    total: int,
    title: str,
    console: Console,
    facts: dict[str, Any] | None = None,
) -> tuple[mlo.Engine, float]:
    """Train ``level`` alone on the engine until update ``total`` (data-parallel under
    torchrun), resuming from ``OUT/checkpoint.pt`` with ``--resume``; returns the engine
    and the seconds trained. Each record carries the epoch and the learning rate."""
    engine = mlo.Engine(
        [level],
        config=mlo.EngineConfig(
            steps=total,
            progress=False,
            distributed="ddp" if mlo.parallel.distributed.initialized() else "none",
        ),
    )
    try:  # the loader's workers stop with the training, even when it fails
        if config.resume:
            extra = resume_engine(engine, config, out)
            if facts is not None:
                check_same_data(extra.get("data"), facts, out / "checkpoint.pt")
            console.print(f"resumed from {out / 'checkpoint.pt'} at step {engine.tick} of {total}")
        elif config.overwrite and lead():
            remove_previous_run(out)
        seconds = train(
            engine,
            total,
            title=title,
            out=out,
            images_per_tick=config.batch_size,
            log_every=config.log_every,
            checkpoint_every=config.checkpoint_every,
            checkpoint_minutes=config.checkpoint_minutes,
            progress=config.progress,
            console=console,
            record=lambda: {
                "epoch": level.stream.epoch,
                "lr": level.optimizer.param_groups[0]["lr"],
            },
            checkpoint_extra=lambda: {"settings": settings(config), "data": facts},
        )
    finally:
        engine.close()
    return engine, seconds


def test_error(model: EvalNetwork, dataset, config: EvalRun, device: torch.device, amp) -> float:
    """Top-1 error in eval mode (running BatchNorm statistics, no drop-path), observed
    without side effects (``mlo.observing``)."""
    return topk_errors(model, dataset, config, device, amp)[0]


def topk_errors(model, dataset, config, device: torch.device, amp) -> tuple[float, float]:
    """Top-1 and top-5 error on ``dataset`` in eval mode, observed without side effects;
    ``nan`` for an empty set (top-5 with fewer than 5 classes counts every class)."""
    if len(dataset) == 0:
        return float("nan"), float("nan")
    data = loader(
        dataset,
        config.batch_size,
        shuffle=False,
        seed=0,
        workers=config.workers,
        drop_last=False,
        pin_memory=device.type == "cuda",
        shard=False,
    )
    hits = torch.zeros(2, dtype=torch.long, device=device)
    total = 0
    with mlo.observing([model]):
        model.eval()
        for batch in data:
            x, y = to_device(batch, device, config.channels_last)
            with amp:
                logits, _ = model(x)
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            found = top == y[:, None]
            hits += torch.stack([found[:, 0].sum(), found.any(1).sum()])
            total += len(y)
    top1, top5 = (1.0 - h / total for h in hits.tolist())
    return top1, top5
