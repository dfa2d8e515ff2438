"""ImageNet transfer in the mobile setting: a genotype's 14-cell network trained from
scratch on 224×224 images with the PC-DARTS ImageNet recipe, on the mlo engine (so it
checkpoints and resumes exactly like the search, and runs data-parallel under torchrun).

    python examples/lease_cifar.py evaluate-imagenet --genotype runs/lease/genotype.json \\
        --data-dir /data/imagenet --device cuda --amp --channels-last
    torchrun --standalone --nproc_per_node 8 examples/lease_cifar.py evaluate-imagenet ...

Data: ``--dataset imagenet`` reads the official archives through
``torchvision.datasets.ImageNet`` (ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar and
ILSVRC2012_devkit_t12.tar.gz in ``--data-dir``; they cannot be downloaded automatically);
``--dataset imagefolder`` reads ``DATA_DIR/train/<class>/*`` and ``DATA_DIR/val/<class>/*``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from rich.console import Console

import mlo
from mlo.monitor import MetricsWriter

from ..cli import OutFolder
from ..launch import lead, start
from .config import RunBase, with_preset
from .data import STATS, ImageData, NasDataError, loader, read_imagefolder, torchvision_part
from .evaluation import MobileNetwork, count_parameters
from .flops import multiply_adds
from .genotype import genotype_from
from .retrain import Retrain, topk_errors, train_one_level
from .run_setup import claim_if_lead, resolve_device, seed_everything

IMAGENET_HELP = (
    "ImageNet cannot be downloaded automatically: register at https://image-net.org, "
    "download ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar and "
    "ILSVRC2012_devkit_t12.tar.gz into --data-dir (torchvision unpacks them on first use), "
    "or pass --dataset imagefolder with DATA_DIR/train/<class>/ and DATA_DIR/val/<class>/"
)


class ImageNetEvalRun(RunBase):
    """Training a genotype's mobile-setting network on ImageNet (PC-DARTS' recipe)."""

    dataset: Literal["imagenet", "imagefolder"] = "imagenet"  # type: ignore[assignment]
    download: bool = Field(False, description="ImageNet cannot be downloaded")
    genotype: str = Field("DARTS_V2", description="a genotype.json file or a published name")
    out: OutFolder = Path("runs/imagenet")
    epochs: int = Field(250, ge=1)
    batch_size: int = Field(128, ge=1, description="per rank; the global batch is N times it")
    layers: int = Field(14, ge=1)
    init_channels: int = Field(48, ge=2)
    image_size: int | None = Field(224, ge=8, description="training crop side")
    lr: float | None = Field(
        None, gt=0, description="SGD learning rate; default 0.5 × global batch / 1024"
    )
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(3e-5, ge=0)
    warmup_epochs: float = Field(5.0, ge=0, description="linear warm-up from 0")
    decay: Literal["linear", "cosine"] = Field("linear", description="after the warm-up, to 0")
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    auxiliary_weight: float = Field(0.4, ge=0)
    drop_path: float = Field(0.0, ge=0, lt=1)
    grad_clip: float = Field(5.0, gt=0)
    amp: bool | None = Field(None, description="bfloat16 autocast; default: on a GPU")
    channels_last: bool | None = Field(None, description="NHWC layout; default: on a GPU")
    short: bool = Field(
        False,
        description="a check in a few minutes on a CPU: 1 epoch of at most 20 updates, 2 "
        "cells, 8 channels, batch 8, 64-pixel crops (explicitly given values win)",
    )

    SHORT: ClassVar[dict[str, Any]] = {
        "epochs": 1,
        "max_steps": 20,
        "layers": 2,
        "init_channels": 8,
        "batch_size": 8,
        "image_size": 64,
        "warmup_epochs": 0.0,
    }

    def effective(self) -> ImageNetEvalRun:
        return with_preset(self, "short", self.SHORT)

    def learning_rate(self) -> float:
        """``lr``, or 0.5 scaled linearly with the global batch from 1024."""
        if self.lr is not None:
            return self.lr
        return 0.5 * self.batch_size * mlo.parallel.distributed.world_size() / 1024


def imagenet_transforms(train: bool, size: int):
    """RandomResizedCrop, flip and colour jitter for training; resize to 8/7 of the crop
    (256 for 224) and centre crop for validation; ImageNet's normalisation."""
    T = torchvision_part("transforms")

    mean, std = STATS["imagefolder"]
    tail = [T.ToTensor(), T.Normalize(mean, std)]
    if train:
        return T.Compose(
            [
                T.RandomResizedCrop(size),
                T.RandomHorizontalFlip(),
                T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.2),
                *tail,
            ]
        )
    return T.Compose([T.Resize(round(size * 8 / 7)), T.CenterCrop(size), *tail])


def load_imagenet(config: ImageNetEvalRun) -> ImageData:
    size = config.image_size or 224
    transforms = (imagenet_transforms(True, size), imagenet_transforms(False, size))
    root = Path(config.data_dir)
    if config.dataset == "imagefolder":
        return read_imagefolder(root, 0, size, transforms)
    datasets = torchvision_part("datasets")

    try:
        train = datasets.ImageNet(str(root), split="train", transform=transforms[0])
        val = datasets.ImageNet(str(root), split="val", transform=transforms[1])
    except (RuntimeError, FileNotFoundError) as exc:
        raise NasDataError(f"imagenet: no ImageNet in {root} ({exc}). {IMAGENET_HELP}") from None
    return ImageData(train, val, len(train.classes), "imagenet", std=STATS["imagefolder"][1])


def warmup_then_decay(optimizer, total: int, warmup: int, decay: str):
    """Per-update factor: linear from 1/warmup to 1 over ``warmup`` updates, then linear
    or cosine to 0 at ``total``."""

    def factor(update: int) -> float:
        if update < warmup:
            return (update + 1) / warmup
        progress = min(1.0, (update - warmup) / max(1, total - warmup))
        return 1 - progress if decay == "linear" else 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class ImageNetResult:
    top1_error: float
    top5_error: float
    params_millions: float
    multiply_adds_millions: float
    seconds: float
    steps: int


def run_imagenet_evaluation(
    config: ImageNetEvalRun, console: Console | None = None
) -> ImageNetResult:
    """Train the genotype's mobile network; report top-1 and top-5 validation error."""
    config = config.effective()
    genotype = genotype_from(config.genotype)
    console = console or Console(stderr=True)
    with claim_if_lead(config):
        out = Path(config.out)
        seed_everything(config.seed)
        device, _ = start(resolve_device(config.device))
        on_gpu = device.type == "cuda"
        config = config.model_copy(
            update={
                "amp": on_gpu if config.amp is None else config.amp,
                "channels_last": on_gpu if config.channels_last is None else config.channels_last,
            }
        )
        data = load_imagenet(config)
        train_data = loader(
            data.train,
            config.batch_size,
            shuffle=True,
            seed=config.seed,
            workers=config.workers,
            pin_memory=device.type == "cuda",
        )
        model = MobileNetwork(
            genotype,
            data.num_classes,
            config.layers,
            config.init_channels,
            auxiliary=config.auxiliary_weight > 0,
        )
        size = config.image_size or 224
        params = count_parameters(model) / 1e6
        madds = multiply_adds(model, (3, size, size)) / 1e6
        model = model.to(device)
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(
            model.parameters(),
            lr=config.learning_rate(),
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
        per_epoch = len(train_data)
        total = config.epochs * per_epoch
        level = Retrain(
            "network",
            model,
            optimizer,
            data=train_data,
            scheduler=warmup_then_decay(
                optimizer, total, round(config.warmup_epochs * per_epoch), config.decay
            ),
            config=mlo.ProblemConfig(grad_clip=config.grad_clip),
        )
        level.configure(config)
        steps = total if config.max_steps is None else min(total, config.max_steps)
        engine, seconds = train_one_level(
            level, config, out, steps, "evaluate on ImageNet", console
        )
        amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.amp)
        top1, top5 = topk_errors(model, data.test, config, device, amp)
        writer = MetricsWriter(out / "metrics.jsonl" if lead() else None)
        writer.write({"step": engine.tick, "top1_error": top1, "top5_error": top5})
        writer.close()
    return ImageNetResult(top1, top5, params, madds, seconds, engine.tick)
