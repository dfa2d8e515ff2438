"""The tables a NAS command prints at its end."""

from __future__ import annotations

import json
from typing import Any

from rich.table import Table

from .genotype import Genotype


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
