"""The tables a NAS command prints at its end."""

from __future__ import annotations

import json
from typing import Any

from rich.table import Table

from .genotype import Genotype, input_name


def summary_table(title: str, rows: dict[str, Any]) -> Table:
    table = Table(title=title, show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    for key, value in rows.items():
        table.add_row(key, value if isinstance(value, str) else json.dumps(value))
    return table


def genotype_rows(genotype: Genotype) -> dict[str, str]:
    """Each cell as ``node 0: op←input, op←input; node 1: ...``, the inputs named as in
    ``cells.png`` (``problems.nas.genotype.input_name``)."""

    def cell(pairs):
        nodes = [pairs[i : i + 2] for i in range(0, len(pairs), 2)]
        return "; ".join(
            f"node {n}: " + ", ".join(f"{op}←{input_name(i)}" for op, i in node)
            for n, node in enumerate(nodes)
        )

    return {"normal cell": cell(genotype.normal), "reduction cell": cell(genotype.reduce)}


def images_per_second_label() -> str:
    """Images per second are counted by each rank on its own shard: under torchrun the
    label says so (the whole job's rate is the ranks' sum)."""
    import mlo

    ranks = mlo.parallel.distributed.world_size()
    return "images / s" if ranks == 1 else f"images / s per rank ({ranks} ranks)"
