"""A LeaSE search over a ``SearchSetup``: what the search command
and the study run."""

from __future__ import annotations

import torch

from problems.nas.data import loader
from problems.nas.runner import SearchSetup, darts_levels

from .build import build
from .config import LeaseRun


def wire_search(setup: SearchSetup, audience: torch.nn.Module | None = None):
    """The levels of a search from ``examples/lease_cifar.py``'s configuration
    (``LeaseRun``): LeaSE's (``build``), or DARTS' with ``baseline='darts'``.
    ``audience``: your own audience network in place of ``lease.audience.arch``'s ResNet
    (bind it with ``functools.partial(wire_search, audience=net)``)."""
    config: LeaseRun = setup.config
    if config.baseline == "darts":
        return darts_levels(setup, config.lease.explainer_solver)
    # The audience's examples: search-train again, shuffled independently of the explainer's.
    audience_data = loader(
        setup.train_half,
        config.batch_size,
        shuffle=True,
        seed=config.seed + 2,
        workers=config.workers,
        pin_memory=setup.device.type == "cuda",
    )
    return build(
        setup.supernet,
        setup.arch,
        setup.search_train,
        audience_data,
        setup.search_val,
        num_classes=setup.num_classes,
        batch_size=config.batch_size,
        total_updates=setup.total_updates,
        image_shape=setup.image_shape,
        pixel_std=torch.tensor(setup.pixel_std),
        hyper=config.lease,
        search=config.hyper,
        seed=config.seed,
        audience=audience,
    )
