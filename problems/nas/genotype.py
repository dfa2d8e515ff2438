"""Genotypes: the discrete cells a search derives, and the DARTS rule that derives them."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

import mlo

from .operations import PRIMITIVES


class GenotypeError(mlo.MLOError, ValueError):
    """A genotype name or file cannot be used; the message names it and the fix."""


class Genotype(BaseModel):
    """A normal and a reduction cell, each a list of ``[op, input]`` pairs (two per node).

    Inputs 0 and 1 are the outputs of the two previous cells; input ``2 + i`` is
    intermediate node ``i``. ``*_concat`` lists the states concatenated as the cell output.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    normal: list[tuple[str, int]]
    normal_concat: list[int]
    reduce: list[tuple[str, int]]
    reduce_concat: list[int]

    @field_validator("normal", "reduce")
    @classmethod
    def _valid_ops(cls, cell: list[tuple[str, int]]) -> list[tuple[str, int]]:
        if len(cell) % 2:
            raise ValueError("a cell needs two [op, input] pairs per node")
        for i, (op, index) in enumerate(cell):
            if op not in PRIMITIVES or op == "none":
                raise ValueError(f"unknown operation {op!r}; use one of {PRIMITIVES[1:]}")
            node = i // 2
            if not 0 <= index < 2 + node:
                raise ValueError(f"node {node} cannot read input {index} (valid: 0..{node + 1})")
        return cell

    @model_validator(mode="after")
    def _valid_concat(self) -> Genotype:
        for cell, concat in ((self.normal, self.normal_concat), (self.reduce, self.reduce_concat)):
            states = 2 + len(cell) // 2
            if not concat or any(not 0 <= i < states for i in concat):
                raise ValueError(f"concat indices {concat} must lie in 0..{states - 1}")
        return self

    def to_json(self) -> str:
        return json.dumps(self.model_dump(), indent=2)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Genotype:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise GenotypeError(f"genotype file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise GenotypeError(f"genotype file {path} cannot be read ({exc})") from None
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'file'}: {e['msg']}" for e in exc.errors()
            )
            raise GenotypeError(
                f"genotype file {path} is not a valid genotype ({problems}); give a "
                "genotype.json written by a search"
            ) from None


def derive_genotype(normal: torch.Tensor, reduce: torch.Tensor, steps: int = 4) -> Genotype:
    r"""The DARTS rule: for each node keep the two incoming edges whose strongest
    non-``none`` operation is strongest, each with that operation.

    ``normal`` and ``reduce`` are (edges × operations) weights, e.g. softmaxed \(\alpha\).
    """
    none = PRIMITIVES.index("none")

    def cell(weights: torch.Tensor) -> list[tuple[str, int]]:
        weights = weights.detach().float().cpu()
        masked = weights.clone()
        masked[:, none] = -float("inf")
        chosen: list[tuple[str, int]] = []
        offset = 0
        for i in range(steps):
            block = masked[offset : offset + 2 + i]
            best = block.max(dim=1)
            order = sorted(range(2 + i), key=lambda j: -float(best.values[j]))[:2]
            for j in sorted(order):
                chosen.append((PRIMITIVES[int(best.indices[j])], j))
            offset += 2 + i
        return chosen

    concat = list(range(2, 2 + steps))
    return Genotype(
        normal=cell(normal), normal_concat=concat, reduce=cell(reduce), reduce_concat=concat
    )


def random_genotype(seed: int, steps: int = 4) -> Genotype:
    """A genotype drawn uniformly from the space the DARTS rule derives from: for each
    node two distinct inputs among its predecessors, each with a non-``none``
    operation. The control every NAS comparison needs (same space, no search)."""
    generator = torch.Generator().manual_seed(seed)
    ops = [op for op in PRIMITIVES if op != "none"]

    def cell() -> list[tuple[str, int]]:
        chosen: list[tuple[str, int]] = []
        for i in range(steps):
            inputs = sorted(torch.randperm(2 + i, generator=generator)[:2].tolist())
            for j in inputs:
                chosen.append((ops[int(torch.randint(len(ops), (1,), generator=generator))], j))
        return chosen

    concat = list(range(2, 2 + steps))
    return Genotype(normal=cell(), normal_concat=concat, reduce=cell(), reduce_concat=concat)


# The cells published with DARTS (second-order search on CIFAR-10), Liu et al. 2019.
DARTS_V2 = Genotype(
    normal=[
        ("sep_conv_3x3", 0),
        ("sep_conv_3x3", 1),
        ("sep_conv_3x3", 0),
        ("sep_conv_3x3", 1),
        ("sep_conv_3x3", 1),
        ("skip_connect", 0),
        ("skip_connect", 0),
        ("dil_conv_3x3", 2),
    ],
    normal_concat=[2, 3, 4, 5],
    reduce=[
        ("max_pool_3x3", 0),
        ("max_pool_3x3", 1),
        ("skip_connect", 2),
        ("max_pool_3x3", 1),
        ("max_pool_3x3", 0),
        ("skip_connect", 2),
        ("skip_connect", 2),
        ("max_pool_3x3", 1),
    ],
    reduce_concat=[2, 3, 4, 5],
)

# First-order DARTS cells from the same paper.
DARTS_V1 = Genotype(
    normal=[
        ("sep_conv_3x3", 1),
        ("sep_conv_3x3", 0),
        ("skip_connect", 0),
        ("sep_conv_3x3", 1),
        ("skip_connect", 0),
        ("sep_conv_3x3", 1),
        ("sep_conv_3x3", 0),
        ("skip_connect", 2),
    ],
    normal_concat=[2, 3, 4, 5],
    reduce=[
        ("max_pool_3x3", 0),
        ("max_pool_3x3", 1),
        ("skip_connect", 2),
        ("max_pool_3x3", 0),
        ("max_pool_3x3", 0),
        ("skip_connect", 2),
        ("skip_connect", 2),
        ("avg_pool_3x3", 0),
    ],
    reduce_concat=[2, 3, 4, 5],
)

NAMED: dict[str, Genotype] = {"DARTS_V2": DARTS_V2, "DARTS_V1": DARTS_V1, "DARTS": DARTS_V2}


def genotype_from(spec: str | Path) -> Genotype:
    """A genotype by published name (``DARTS_V2``) or from a JSON file."""
    if isinstance(spec, str) and spec in NAMED:
        return NAMED[spec]
    path = Path(spec)
    if not path.exists():
        raise GenotypeError(
            f"genotype {str(spec)!r} is neither a file nor a known name ({', '.join(NAMED)})"
        )
    return Genotype.load(path)


def input_name(index: int) -> str:
    """The name of a cell's input ``index`` as the pictures and tables show it: the two
    previous cells' outputs ``c_{k-2}`` and ``c_{k-1}``, then the intermediate nodes
    ``0``, ``1``, ... (a genotype stores DARTS' indices: 0 and 1 the inputs, node ``n``
    at ``n + 2``)."""
    return {0: "c_{k-2}", 1: "c_{k-1}"}.get(index, f"node {index - 2}")
