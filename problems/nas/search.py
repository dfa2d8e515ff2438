"""DARTS on the mlo engine: architecture weights above, supernet weights below.

Levels (edge ``architecture → network``):

    network:       W*(A) = argmin_W  CE(supernet(x; A, W), y)   on search-train
    architecture:  min_A  CE(supernet(x; A, W*(A)), y)          on search-validation
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import ConfigDict, Field

import mlo
from mlo.options import NumbersNotBooleans

from .search_space import ArchitectureWeights, Supernet


def to_device(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    """Move an ``(images, labels)`` batch to ``device`` (asynchronously from pinned memory)."""
    x, y = batch
    x = x.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y.to(device, non_blocking=True)


def cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Cross-entropy computed in at least float32: logits from a bfloat16/float16 autocast
    region are upcast, float64 ones are kept (so that float64 checks stay exact)."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)


class SearchHyper(NumbersNotBooleans):
    """Optimisation settings of a DARTS-space search (DARTS' CIFAR defaults)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lr: float = Field(0.025, gt=0, description="supernet SGD learning rate (cosine-annealed)")
    lr_min: float = Field(0.001, ge=0, description="final learning rate of the cosine schedule")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(3e-4, ge=0)
    grad_clip: float = Field(5.0, gt=0, description="supernet gradient-norm clip")
    arch_lr: float = Field(3e-4, gt=0, description="architecture Adam learning rate")
    arch_betas: tuple[float, float] = (0.5, 0.999)
    arch_weight_decay: float = Field(1e-3, ge=0)

    def weight_optimizer(self, params, total_updates: int):
        """SGD on the supernet weights and its cosine schedule over ``total_updates``."""
        return sgd_with_cosine(
            params, self.lr, self.lr_min, self.momentum, self.weight_decay, total_updates
        )

    def arch_optimizer(self, params) -> torch.optim.Adam:
        return torch.optim.Adam(
            params, lr=self.arch_lr, betas=self.arch_betas, weight_decay=self.arch_weight_decay
        )


def sgd_with_cosine(
    params, lr: float, lr_min: float, momentum: float, weight_decay: float, total_updates: int
):
    """SGD with momentum and weight decay, and a cosine from ``lr`` to ``lr_min`` over
    ``total_updates`` steps of the scheduler."""
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(1, total_updates), eta_min=lr_min
    )
    return optimizer, schedule


class ImageLevel(mlo.Problem):
    """A problem whose batches are ``(images, labels)``, moved to its module's device."""

    amp_dtype: torch.dtype | None = None
    channels_last: bool = False

    def images(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.params.tensors[0].device
        return to_device(batch, device, self.channels_last)

    def autocast(self):
        device = self.params.tensors[0].device
        return torch.autocast(device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)


class SupernetWeights(ImageLevel):
    """Lower level ``W``: cross-entropy of the supernet on search-train."""

    def training_step(self, batch):
        x, y = self.images(batch)
        with self.autocast():
            logits = self.module(x, self.architecture.module.normalized())
        return cross_entropy(logits, y)


class Architecture(ImageLevel):
    """Upper level ``A``: cross-entropy of the supernet on search-validation."""

    def training_step(self, batch):
        x, y = self.images(batch)
        with self.autocast():
            logits = self.network.module(x, self.module.normalized())
        return cross_entropy(logits, y)


def build_darts(
    supernet: Supernet,
    arch: ArchitectureWeights,
    search_train: Iterable[Any],
    search_val: Iterable[Any],
    *,
    total_updates: int,
    hyper: SearchHyper | None = None,
    solver: str | mlo.solvers.Solver = "darts",
    unroll_steps: int = 1,
) -> tuple[list[mlo.Problem], dict[str, list[str]]]:
    """Problems and dependencies of a DARTS search for ``mlo.Engine``.

    The supernet's learning rate follows a cosine from ``lr`` to ``lr_min`` over
    ``total_updates`` of the supernet.
    """
    hyper = hyper or SearchHyper()
    w_opt, schedule = hyper.weight_optimizer(supernet.parameters(), total_updates)
    a_opt = hyper.arch_optimizer(arch.parameters())
    network = SupernetWeights(
        "network",
        supernet,
        w_opt,
        data=search_train,
        scheduler=schedule,
        config=mlo.ProblemConfig(
            solver=solver, unroll_steps=unroll_steps, grad_clip=hyper.grad_clip
        ),
    )
    architecture = Architecture("architecture", arch, a_opt, data=search_val)
    return [architecture, network], {"architecture": ["network"]}
