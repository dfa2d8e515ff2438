"""Mean ± standard deviation tables for the examples that compare methods over seeds."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from rich.table import Table


def mean_std(values: Sequence[float], scale: float = 1.0, digits: int = 2) -> str:
    """``mean ± std``; ``—`` when a method has no such number (NaN)."""
    if any(math.isnan(v) for v in values):
        return "—"
    mean = statistics.mean(values) * scale
    std = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def comparison_table(
    title: str,
    columns: Sequence[tuple[str, str, float, int]],
    rows: dict[str, list[dict[str, float]]],
) -> Table:
    """``columns``: (header, key, scale, digits); ``rows``: method → one dict per seed."""
    table = Table(title=title)
    table.add_column("method")
    for header, *_ in columns:
        table.add_column(header, justify="right")
    for method, runs in rows.items():
        table.add_row(
            method,
            *(mean_std([r[key] for r in runs], scale, digits) for _, key, scale, digits in columns),
        )
    return table
