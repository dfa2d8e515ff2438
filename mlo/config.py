"""Configuration models. Invalid values fail at construction with a
[`mlo.SetupError`][mlo.errors.SetupError] naming the field (``mlo.options.Options``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from .options import Options
from .solvers import Solver, resolve


class ProblemConfig(Options):
    """Per-level options."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, frozen=True)

    solver: Solver = Field(
        default_factory=lambda: resolve("darts"),
        description="how this level's best-response Jacobian is applied: a registered name "
        "('first_order', 'darts', 'neumann', 'cg', 'unroll') or a mlo.solvers.Solver",
    )
    unroll_steps: int = Field(
        1, ge=1, description="updates this level takes between two updates of an upper level"
    )
    warmup_steps: int = Field(
        0, ge=0, description="extra updates this level takes alone before its uppers first update"
    )
    grad_clip: float | None = Field(
        None, gt=0, description="clip this level's gradient to this total norm (None: off)"
    )
    reset_each_inner_loop: bool = Field(
        False, description="call problem.reset() before each group of unroll_steps updates"
    )
    batch_from: str | None = Field(
        None,
        description="read the current batch of this other problem instead of drawing from "
        "own data, so that two levels see the same examples (the problem's data must be None)",
    )

    jacobian: Literal["total", "partial", "one_system"] | None = Field(
        None,
        description="for a level whose objective reads its own lower levels: 'total' "
        "differentiates the nested problem the engine trains (exact), 'partial' holds the "
        "lower levels fixed in this level's Jacobian (cheaper; Betty's behaviour, an "
        "approximation). None: 'total' with the solvers that converge to the exact "
        "Jacobian (cg, neumann, unroll), 'partial' with those that approximate H⁻¹ by a "
        "scaled identity (darts, sama), where the nested term is below their own error; "
        "the 'explicit' solver has no total. 'one_system' (cg, neumann): the same exact "
        "Jacobian, taken by one MINRES solve per level of the lower levels' tree over "
        "their Lagrangian (docs/concepts.md, 'The one-system solve') instead of solves "
        "nested in each other's products; each solve takes the solver's iterations. No "
        "effect on other levels.",
    )

    hvp: Literal["auto", "reverse", "recompute", "forward", "finite_difference"] = Field(
        "auto",
        description="how this level's Hessian-vector and mixed products are taken (cg, "
        "neumann): 'auto' takes 'reverse', and 'recompute' from the first solve that runs "
        "out of memory in reverse mode (on one process; describe() says which); 'reverse' "
        "differentiates the gradient's retained graph again (one double backward a "
        "product); 'recompute' keeps only the forward's graph (one forward pass a solve) "
        "and builds the gradient's graph from it again for each Hessian-vector product, "
        "which the product's double backward frees as it goes (one backward and one double "
        "backward a product), and takes the mixed product by forward-over-reverse (reverse "
        "mode where an operation has no forward-mode rule; describe() says which); "
        "'forward' takes each product by forward-over-reverse (a forward and a backward "
        "pass with tangents). Same values; "
        "measured on the DARTS supernet on a CPU, 'recompute' and 'forward' hold about "
        "two thirds of 'reverse''s peak (about twice a plain training step), and a "
        "product takes 1.2x and 1.8x a reverse one's time (docs/benchmarks.md, memory); "
        "'recompute' needs no forward-mode rules. "
        "'finite_difference' approximates each product by the central difference of two "
        "plain gradients at a distance hvp_radius (DARTS' mixed product): the memory of a "
        "training step, not exact (an O(r²) truncation and an O(u/r) rounding error). A "
        "nested level (jacobian='total' on a level that reads its own lower levels) always "
        "uses 'reverse'",
    )
    hvp_radius: float = Field(
        0.01,
        gt=0,
        description="with hvp='finite_difference': the distance r of the two evaluation "
        "points from the parameters (ε = r/‖v‖ along v)",
    )

    @field_validator("solver", mode="before")
    @classmethod
    def _resolve_solver(cls, value: Any) -> Solver:
        return resolve(value)

    @model_validator(mode="after")
    def _total_needs_a_capable_solver(self) -> ProblemConfig:
        if self.jacobian == "one_system" and self.solver.name not in ("cg", "neumann"):
            raise ValueError(
                f"jacobian='one_system' takes the exact Jacobian by linear solves, which the "
                f"{self.solver.name!r} solver does not make; use it with 'cg' or 'neumann'"
            )
        if self.jacobian == "total" and not self.solver.supports_total:
            raise ValueError(
                f"jacobian='total' is not available with the {self.solver.name!r} solver "
                "(its Jacobian does not come from second-order products of the level's "
                "objective); use jacobian='partial', or the 'cg', 'neumann', 'darts' or "
                "'unroll' solver"
            )
        return self

    def uses_total(self) -> bool:
        """Whether this level's Jacobian is the total one when it reads its lower levels."""
        if self.jacobian is None:
            return self.solver.supports_total and self.solver.total_by_default
        return self.jacobian in ("total", "one_system") and self.solver.supports_total


class EngineConfig(Options):
    """Engine-wide options."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps: int = Field(1000, ge=0, description="engine ticks that run() performs")
    progress: bool = Field(True, description="show a rich progress bar and a summary table")
    log_every: int = Field(
        10, ge=1, description="ticks between metric records and progress-bar refreshes"
    )
    metrics_path: Path | None = Field(
        None, description="append metrics as JSON lines to this file (None: off)"
    )
    logger: Literal["none", "tensorboard", "wandb"] = Field(
        "none",
        description="where run() also logs each record's losses and solver diagnostics: "
        "'tensorboard' (event files in log_dir; pip install \"mlo[tensorboard]\") or 'wandb' "
        "(a Weights & Biases run; pip install \"mlo[wandb]\"); 'none': only metrics_path",
    )
    log_dir: Path | None = Field(
        None, description="the tensorboard logger's folder (None: a new one under runs/)"
    )
    check_finite_every: int | None = Field(
        None,
        ge=1,
        description="ticks between checks that losses and gradients are finite. 1 checks "
        "every update before its optimizer step; a larger value avoids a device "
        "synchronisation per update, and the error still names the first bad step. None: "
        "1 when the parameters are on the CPU (where a check is free), log_every otherwise",
    )
    on_nonfinite: Literal["raise", "skip"] = Field(
        "raise",
        description="a non-finite loss, gradient or solver result: 'raise' stops with an error "
        "naming the problem, the step and the source; 'skip' drops that update (checked at "
        "every update) and raises after max_consecutive_skips in a row",
    )
    max_consecutive_skips: int = Field(
        10, ge=1, description="with on_nonfinite='skip', raise after this many skips in a row"
    )
    checkpoint_every: int | None = Field(
        None, ge=1, description="ticks between checkpoints written by run() (None: off)"
    )
    checkpoint_dir: Path | None = Field(
        None, description="folder for run()'s checkpoints, step_<tick>.pt"
    )
    keep_last: int = Field(3, ge=1, description="checkpoints kept in checkpoint_dir")
    distributed: Literal["none", "ddp", "fsdp"] = Field(
        "none",
        description="'ddp': data-parallel over the ranks of torch.distributed's default "
        "process group (torchrun): each rank reads its shard of every level's data, and "
        "every gradient and Hessian-vector product is averaged across ranks, so the ranks "
        "stay identical and N ranks with batch B compute the update of batch N·B "
        "(mlo.distributed). 'fsdp': the same arithmetic, with each optimizer-trained "
        "level's parameters and optimizer state sharded across the ranks by FSDP2 "
        "(fully_shard, applied by the engine unless the module already is) and gathered "
        "to compute (mlo.sharding)",
    )
    preflight: bool = Field(
        True,
        description="before the first tick, evaluate every level once on its first batch so "
        "that data/model mismatches fail before any training",
    )

    @model_validator(mode="after")
    def _checkpoint_dir_needed(self) -> EngineConfig:
        if self.checkpoint_every is not None and self.checkpoint_dir is None:
            raise ValueError("checkpoint_every is set but checkpoint_dir is not; set both")
        return self
