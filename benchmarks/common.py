"""Pieces the benchmark scripts share: random image batches and Betty's problems."""

from __future__ import annotations

import logging
from typing import Any

import torch


def random_batches(
    n: int, batch: int, size: int, generator: torch.Generator, classes: int = 10
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` batches of standard-normal ``3 × size × size`` images and uniform labels."""
    return [
        (
            torch.randn(batch, 3, size, size, generator=generator),
            torch.randint(0, classes, (batch,), generator=generator),
        )
        for _ in range(n)
    ]


def quiet_betty() -> None:
    """Betty logs at INFO to stdout by default, which would mix with the results."""
    from betty.logging.logger_base import get_logger

    get_logger().setLevel(logging.ERROR)


def betty_problem(
    cls: type, name: str, config: Any, module, optimizer, data, device: str = "cpu"
) -> Any:
    """A Betty problem of class ``cls`` on ``device``, reading the batches ``data``."""
    return cls(
        name, config, module=module, optimizer=optimizer, train_data_loader=data, device=device
    )


def log_plot(
    path,
    x,
    curves: dict[str, list[float]],
    xlabel: str,
    ylabel: str,
    logx=False,
    extra: dict[str, tuple[list, list[float]]] | None = None,
):
    """Write a PNG of ``curves`` against ``x`` with a logarithmic y axis (and x axis);
    ``extra`` curves carry their own x values (measured at fewer points)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    points = {label: (x, values) for label, values in curves.items()} | (extra or {})
    for (label, (xs, values)), marker in zip(points.items(), "os^vDxP<>"):
        style = "--" if label.startswith("Betty") else "-"  # Betty's curves dashed
        ax.plot(xs, values, f"{marker}{style}", label=label)
    if logx:
        ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def betty_bilevel_step(upper: Any, lower: Any):
    """One iteration of Betty's engine on the problems ``upper`` and ``lower`` (the lower
    level's step, then the upper's with its hypergradient), as a function of no arguments."""
    from betty.configs import EngineConfig
    from betty.engine import Engine

    engine = Engine(
        [upper, lower],
        config=EngineConfig(train_iters=1, logger_type="none"),
        dependencies={"l2u": {lower: [upper]}, "u2l": {upper: [lower]}},
    )

    def step() -> None:
        engine.global_step += 1
        engine.train_step()

    return step
