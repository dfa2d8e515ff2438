"""Betty 0.2's configuration objects: ``Config`` for a problem, ``EngineConfig`` for the
engine. The fields, names and defaults are Betty 0.2.1's, so that a program's
``Config(...)`` and ``EngineConfig(...)`` calls run unchanged; the few fields mlo adds are
marked *mlo*. Values are checked when the engine is built, where each problem's role
is known, and a value mlo cannot honour raises [`mlo.SetupError`][mlo.errors.SetupError]
naming the field."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Config:
    """How one problem is trained, and how its best-response Jacobian is applied when it is
    a lower level.

    Attributes:
        type: the Jacobian's approximation: ``"darts"``, ``"sama"``, ``"neumann"`` or
            ``"cg"`` (mlo's solvers of those names, at Betty's step sizes).
        unroll_steps: updates of this problem between two updates of its upper levels.
        first_order: on an upper level, whether the implicit term through its lower levels
            is added (``False``: only the direct gradient, Betty's reading).
        retain_graph: accepted for compatibility; mlo decides what to keep.
        allow_unused: accepted for compatibility; a parameter the loss does not read gets
            a zero gradient.
        gradient_accumulation: micro-steps whose gradients (each of the loss divided by
            this number) are summed before one optimizer step.
        gradient_clipping: clip the accumulated gradient to this total norm (0: off).
        precision: ``"fp32"``, ``"bf16"`` (``training_step`` under autocast) or ``"fp16"``
            (autocast and a dynamic loss scaler).
        initial_dynamic_scale: the fp16 loss scaler's first scale.
        scale_factor: the fp16 loss scaler's growth factor.
        warmup_steps: updates of this problem before its upper levels first update.
        log_step: log this problem's loss dict every ``log_step`` updates (-1: never).
        log_local_step: log against the problem's own update count, not the global step.
        darts_alpha: the finite-difference radius of ``darts``.
        darts_multitask: accepted; mlo always restores the parameters it perturbs.
        sama_adam_alpha: the finite-difference radius of ``sama``.
        sama_multitask: accepted, as ``darts_multitask``.
        neumann_iterations: terms of the Neumann series.
        neumann_alpha: its step size.
        cg_iterations: conjugate-gradient iterations.
        cg_alpha: accepted for compatibility; mlo's cg solves the system as it is.
        jacobian: *mlo*: for a middle level that reads its own lower levels, ``"total"``
            (exact) or ``"partial"`` (Betty's); ``None``: mlo's default.
    """

    type: str = "darts"
    unroll_steps: int = 1
    first_order: bool = True
    retain_graph: bool = False
    allow_unused: bool = True

    gradient_accumulation: int = 1
    gradient_clipping: float = 0.0

    precision: str = "fp32"
    initial_dynamic_scale: float = 4096.0
    scale_factor: float = 2.0

    warmup_steps: int = 0

    log_step: int = -1
    log_local_step: bool = False

    darts_alpha: float = 0.01
    darts_multitask: bool = False

    sama_adam_alpha: float = 1.0
    sama_multitask: bool = False

    neumann_iterations: int = 1
    neumann_alpha: float = 1.0

    cg_iterations: int = 1
    cg_alpha: float = 1.0

    jacobian: str | None = None


@dataclass
class EngineConfig:
    """How the engine runs.

    Attributes:
        train_iters: iterations; each steps every lowest-level problem once (and the
            upper levels whose lower levels are ready).
        valid_step: iterations between calls of the engine's ``validation()``.
        logger_type: ``"none"`` (Python logging), ``"tensorboard"`` or ``"wandb"``.
        roll_back: after an upper level's update, each lower level returns to its state at
            the start of its inner loop and takes one step with the new upper parameters.
        backend: the ``torch.distributed`` backend for ``strategy="distributed"``.
        strategy: ``"default"`` (a GPU if there is one), ``"cpu"``, ``"gpu"``, or
            ``"distributed"`` (data parallel over the ranks ``torchrun`` starts: mlo's
            ``ddp``).
        early_stopping: stop when the validation metric has not improved for
            ``early_stopping_tolerance`` validations.
        early_stopping_mode: ``"min"`` or ``"max"``.
        early_stopping_tolerance: validations without improvement before stopping.
        early_stopping_metric: the key of ``validation()``'s dict that is watched.
        running_stats: *mlo*: ``"update"`` lets every train-mode forward pass update
            BatchNorm running statistics, the hypergradient's re-evaluations included
            (Betty's behaviour); ``"preserve"`` keeps them to the updates' own forward
            passes (mlo's).
    """

    train_iters: int = 50000
    valid_step: int = 500

    logger_type: str = "none"

    roll_back: bool = False

    backend: str = "nccl"
    strategy: str = "default"

    early_stopping: bool = False
    early_stopping_mode: str = "min"
    early_stopping_tolerance: int = 5
    early_stopping_metric: str = "loss"

    running_stats: str = "update"
