"""Configurations of a DARTS-space search and of a genotype's evaluation (DARTS defaults)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

import mlo
from mlo.options import NumbersNotBooleans

from ..cli import OutFolder
from .search import SearchHyper

M = TypeVar("M", bound=BaseModel)

Dataset = Literal["cifar10", "cifar100", "imagefolder", "fashion-mnist", "digits", "synthetic"]


def with_preset(config: M, flag: str, preset: dict[str, Any]) -> M:
    """``config`` with ``preset``'s values for the fields not given explicitly, when the
    boolean field ``flag`` is set (and then cleared, so the result prints as it runs)."""
    if not getattr(config, flag):
        return config
    update = {k: v for k, v in preset.items() if k not in config.model_fields_set}
    return config.model_copy(update={**update, flag: False})


def check_device(name: str) -> str:
    """``name`` if it is ``auto`` or a device this machine has; otherwise a ``ValueError``
    that says which devices it has."""
    import torch

    if name == "auto":
        return name
    cuda = torch.cuda.device_count()
    have = "cpu" + (f", cuda (cuda:0..cuda:{cuda - 1})" if cuda else "")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"{name!r} is not a device name; use auto or one of: {have}") from None
    if device.type == "cuda" and (device.index or 0) >= cuda:
        raise ValueError(f"{name!r} is not on this machine; it has {have}")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name!r}: the examples run on {have}")
    return name


class RunBase(NumbersNotBooleans):
    model_config = ConfigDict(extra="forbid")

    dataset: Dataset = "cifar10"
    data_dir: Path = Field(Path("data"), description="where the dataset is, or is downloaded to")
    download: bool = Field(True, description="download the dataset when it is missing")
    out: OutFolder = Field(Path("runs/search"), description="output folder")
    epochs: int = Field(50, ge=1)
    batch_size: int = Field(64, ge=1)
    layers: int = Field(8, ge=1, description="cells in the network")
    init_channels: int = Field(16, ge=2, description="channels of the first cells")
    max_steps: int | None = Field(None, ge=1, description="stop after this many updates")
    seed: int = Field(2, ge=0, le=2**32 - 1)
    device: str = Field("auto", description="cpu, cuda, cuda:N, or auto")
    workers: int = Field(2, ge=0)
    amp: bool = Field(False, description="bfloat16 autocast")
    channels_last: bool = False
    resume: bool = Field(False, description="continue from OUT/checkpoint.pt")
    overwrite: bool = Field(False, description="replace a previous run in OUT")
    override: list[str] = Field(
        default_factory=list,
        description="with resume: settings that may differ from the checkpoint's (their new "
        "values apply from the resumed step on)",
    )
    progress: bool = True
    image_size: int | None = Field(
        None,
        ge=8,
        description="image side for imagefolder, fashion-mnist, digits and synthetic data "
        "(default 32, fashion-mnist 28, digits 16); CIFAR images are 32",
    )
    synthetic_size: int = Field(2048, ge=16, description="examples in the synthetic set")
    log_every: int | None = Field(
        None,
        ge=1,
        description="updates between metric records and α records; default: 10, or more "
        "often in a short run so that it gives about 20 records (or one per update)",
    )
    checkpoint_every: int = Field(200, ge=1, description="updates between checkpoints")
    checkpoint_minutes: float = Field(
        10.0,
        gt=0,
        description="minutes of training after which a checkpoint is written even if "
        "checkpoint_every updates have not passed (Ctrl-C and SIGTERM write one too)",
    )

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        return check_device(value)

    @model_validator(mode="after")
    def _override_only_when_resuming(self):
        if self.override and not self.resume:
            raise ValueError(
                f"override={','.join(self.override)} without resume: --override names "
                "settings a resumed run may change; pass --resume too, or drop --override"
            )
        return self

    @model_validator(mode="after")
    def _image_size_fits_the_dataset(self):
        if self.dataset in ("cifar10", "cifar100") and self.image_size not in (None, 32):
            raise ValueError(
                f"image_size={self.image_size}: {self.dataset} images are 32×32; image_size "
                "applies to imagefolder, fashion-mnist, digits and synthetic data (leave it "
                "out for CIFAR)"
            )
        return self


class SearchRun(RunBase):
    """A search in the DARTS space: what every search method's configuration shares."""

    partial_channels: int = Field(1, ge=1, description="PC-DARTS: 1/k of the channels per edge")
    sync_batchnorm: bool = Field(
        False,
        description="under torchrun: batch norm over all ranks' examples (mlo.SyncBatchNorm)",
    )
    fsdp: bool = Field(
        False,
        description="under torchrun: shard each trained level's parameters and optimizer "
        "state across the ranks (EngineConfig(distributed='fsdp'))",
    )
    hyper: SearchHyper = SearchHyper()
    small: bool = Field(
        False,
        description="small budget for a first look on a CPU: 5 cells, 8 channels, batch 16, "
        "10 architecture updates (explicitly given values win)",
    )

    SMALL: ClassVar[dict[str, Any]] = {
        "layers": 5,
        "init_channels": 8,
        "batch_size": 16,
        "max_steps": 10,
    }

    def weight_updates_per_step(self) -> int:
        """Supernet-weight updates per architecture update."""
        return 1

    def effective(self) -> SearchRun:
        """The configuration with the ``small`` preset applied to the fields that were not
        given explicitly (flags and file values win over the preset)."""
        return with_preset(self, "small", self.SMALL)


class DartsRun(SearchRun):
    """A DARTS search (``examples/darts_cifar.py search``)."""

    solver: str = Field("darts", description="hypergradient solver of the network level")
    unroll_steps: int = Field(1, ge=1, description="network updates per architecture update")

    @field_validator("solver")
    @classmethod
    def _known_solver(cls, value: str) -> str:
        mlo.solvers.resolve(value)
        return value

    def weight_updates_per_step(self) -> int:
        return self.unroll_steps


class EvalRun(RunBase):
    """Retraining a genotype from scratch (``examples/darts_cifar.py evaluate``)."""

    genotype: str = Field("DARTS_V2", description="a genotype.json file or a published name")
    out: OutFolder = Path("runs/evaluate")
    epochs: int = Field(600, ge=1)
    batch_size: int = Field(96, ge=1)
    layers: int = Field(20, ge=1)
    init_channels: int = Field(36, ge=2)
    lr: float = Field(0.025, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(3e-4, ge=0)
    grad_clip: float = Field(5.0, gt=0)
    cutout: int = Field(16, ge=0, description="cutout square side (0: off)")
    auxiliary_weight: float = Field(0.4, ge=0, description="auxiliary head loss weight (0: off)")
    drop_path: float = Field(0.2, ge=0, lt=1, description="final drop-path probability")
    short: bool = Field(
        False,
        description="short budget, a few minutes on a CPU: 1 epoch of at most 100 updates, 6 "
        "cells, 16 channels (explicitly given values win)",
    )

    SHORT: ClassVar[dict[str, Any]] = {
        "epochs": 1,
        "max_steps": 100,
        "layers": 6,
        "init_channels": 16,
    }

    def effective(self) -> EvalRun:
        """The configuration with the ``short`` preset applied to the fields that were not
        given explicitly."""
        return with_preset(self, "short", self.SHORT)
