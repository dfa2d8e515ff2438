"""Betty 0.2's problems: a level of a Betty program, as the program sees it.

A problem holds its module, optimizer, scheduler and data loaders (given to the
constructor or made by its ``configure_*`` methods), its ``training_step``, and Betty's
hooks (``on_inner_loop_start``, ``param_callback``, ``grad_callback``,
``custom_optimizer_step``, ``epoch_callback``, ``get_batch``). It computes nothing by
itself: [`mlo.betty.Engine`][mlo.betty.engine.Engine] trains it with mlo's hypergradients,
and reaches the other problems of the program through attributes named after them
(``self.inner``), as Betty does.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import SetupError
from .configs import Config

__all__ = ["HigherIterativeProblem", "ImplicitProblem", "IterativeProblem", "Problem"]

_PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Problem:
    """One level of a Betty program (Betty 0.2.1's constructor and attributes).

    Args:
        name: the problem's name; the other problems reach it as ``self.<name>``.
        config: its [`Config`][mlo.betty.configs.Config].
        module: its ``nn.Module`` (or made by ``configure_module()``).
        optimizer: its optimizer (or made by ``configure_optimizer()``).
        scheduler: its learning-rate scheduler (or ``configure_scheduler()``), stepped
            after every update.
        train_data_loader: a loader, or a tuple of loaders whose batches come together
            (or ``configure_train_data_loader()``, or a ``get_batch()`` method).
        extra_config: anything; kept as ``self.cfg``.
        device: Betty 0.1's per-problem device, accepted so that 0.1 programs run; ``None``
            (0.2's way): the engine's device, from its ``strategy``.
    """

    def __init__(
        self,
        name: str,
        config: Config | None = None,
        module: nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        train_data_loader: Any = None,
        extra_config: Any = None,
        device: Any = None,
    ) -> None:
        self._name = name
        self._config = config if config is not None else Config()
        self.cfg = extra_config
        self.module = module
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.train_data_loader = train_data_loader
        self.train_data_iterator: list[Iterator[Any]] | None = None
        self.epoch_counter: list[int] | None = None
        self.cur_batch: Any = None
        self.device: Any = device
        self.env: Any = None
        self.logger: Any = None
        self.scaler: Any = None
        self._parents: list[Problem] = []
        self._children: list[Problem] = []
        self._paths: list[list[Problem]] = []
        self._count = 0
        self._global_step: int | None = None
        self._leaf = False
        self._training = True
        self._strategy = "default"
        self._world_size = 1
        self._rank = 0
        self._local_rank = 0
        self._roll_back = False
        self._cache: tuple[Any, Any] | None = None
        self._engine: Any = None
        self._inner_loop_start = True
        self.ready: list[bool] = []
        self.precision = self._config.precision
        self.dtype = _PRECISIONS.get(self.precision)
        self.gas = self._config.gradient_accumulation
        self.gradient_clipping = self._config.gradient_clipping
        self.warmup_steps = self._config.warmup_steps
        self.log_step = self._config.log_step
        self.log_local_step = self._config.log_local_step

    # ------------------------------------------------------------------ set-up

    def initialize(self) -> None:
        """Make what the constructor was not given (``configure_*``), move the module to
        the engine's device, and make the loaders' iterators (the engine calls it once)."""
        if self.train_data_loader is None and self.is_implemented("configure_train_data_loader"):
            self.train_data_loader = self.configure_train_data_loader()
        if self.train_data_loader is not None and not isinstance(self.train_data_loader, tuple):
            self.train_data_loader = (self.train_data_loader,)
        if self.train_data_loader is None and not self._overrides("get_batch"):
            raise SetupError(
                f"Betty problem {self.name!r} has no data: give it train_data_loader=, a "
                "configure_train_data_loader() method, or a get_batch() method"
            )
        if self.module is None and self.is_implemented("configure_module"):
            self.module = self.configure_module()
        if not isinstance(self.module, nn.Module):
            raise SetupError(
                f"Betty problem {self.name!r} has no module: give it module= or a "
                "configure_module() method returning a torch.nn.Module"
            )
        if self.optimizer is None and self.is_implemented("configure_optimizer"):
            self.optimizer = self.configure_optimizer()
        if self.scheduler is None and self.is_implemented("configure_scheduler"):
            self.scheduler = self.configure_scheduler()
        if self.device is not None:
            self.module.to(self.device)
        if self.train_data_loader is not None:
            if self._strategy == "distributed" and self._world_size > 1:
                self.train_data_loader = tuple(
                    _sharded(loader, self._world_size, self._rank)
                    for loader in self.train_data_loader
                )
            self.train_data_iterator = [iter(loader) for loader in self.train_data_loader]
            self.epoch_counter = [0] * len(self.train_data_loader)

    def _overrides(self, method: str) -> bool:
        return getattr(type(self), method) is not getattr(Problem, method)

    # ------------------------------------------------------------------ the program's surface

    def step(self, global_step: int | None = None) -> None:
        """One step of this problem, and of the upper levels it makes ready (an engine's
        ``train_step`` calls it on each leaf)."""
        if self._engine is None:
            raise SetupError(
                f"Betty problem {self.name!r} is not part of an engine yet; build "
                "mlo.betty.engine.Engine(problems=[...], ...) first"
            )
        self._engine.step_problem(self, global_step)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The module's forward pass."""
        return self.module(*args, **kwargs)

    def training_step(self, batch: Any) -> Tensor | dict[str, Any]:
        """The problem's loss on ``batch``: a scalar tensor, or a dict with it as ``"loss"``
        and other statistics to log."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement training_step(self, batch)"
        )

    def get_batch(self) -> Any:
        """The next batch: one from each loader (a tuple of them with several), each
        loader restarting when it ends (the first one's end calls ``epoch_callback``)."""
        batch = tuple(self.get_batch_single_loader(i) for i in range(len(self.train_data_loader)))
        return batch[0] if len(batch) == 1 else batch

    def get_batch_single_loader(self, idx: int) -> Any:
        """The next batch of loader ``idx``, its items moved to the problem's device."""
        try:
            batch = next(self.train_data_iterator[idx])
        except StopIteration:
            if idx == 0 and self.is_implemented("epoch_callback"):
                self.epoch_callback()
            self.epoch_counter[idx] += 1
            loader = self.train_data_loader[idx]
            if callable(getattr(getattr(loader, "sampler", None), "set_epoch", None)):
                loader.sampler.set_epoch(self.epoch_counter[idx])
            self.train_data_iterator[idx] = iter(loader)
            batch = next(self.train_data_iterator[idx])
        if isinstance(batch, dict):
            return {k: _to(v, self.device) for k, v in batch.items()}
        return tuple(_to(v, self.device) for v in batch)

    def parameters(self) -> list[Tensor]:
        """All of the module's parameters."""
        return list(self.module.parameters())

    def trainable_parameters(self) -> list[Tensor]:
        """The parameters this problem's optimizer trains."""
        return list(self.module.parameters())

    def meta_trainable_parameters(self) -> list[Tensor]:
        """The parameters an upper level differentiates by (Betty's hook; mlo uses the
        trainable ones)."""
        return self.trainable_parameters()

    def state_dict(self) -> dict[str, Any]:
        """The module's, optimizer's, scheduler's and loss scaler's states."""
        state = {"module": self.module.state_dict()}
        if self.optimizer is not None:
            state["optimizer"] = self.optimizer.state_dict()
        if self.scheduler is not None:
            state["scheduler"] = self.scheduler.state_dict()
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a [`state_dict`][mlo.betty.problems.Problem.state_dict]."""
        self.module.load_state_dict(state_dict["module"])
        if self.optimizer is not None and "optimizer" in state_dict:
            self.optimizer.load_state_dict(state_dict["optimizer"])
        if self.scheduler is not None and "scheduler" in state_dict:
            self.scheduler.load_state_dict(state_dict["scheduler"])
        if self.scaler is not None and "scaler" in state_dict:
            self.scaler.load_state_dict(state_dict["scaler"])

    def cache_states(self) -> None:
        """Remember the module's and optimizer's states (``roll_back``)."""
        optimizer = None if self.optimizer is None else copy.deepcopy(self.optimizer.state_dict())
        self._cache = (copy.deepcopy(self.module.state_dict()), optimizer)

    def recover_states(self) -> None:
        """Return to the states [`cache_states`][mlo.betty.problems.Problem.cache_states]
        remembered, in place (the tensors the engine holds stay the same objects)."""
        module, optimizer = self._cache
        self.module.load_state_dict(module)
        if optimizer is not None:
            self.optimizer.load_state_dict(optimizer)
        self._cache = None

    def log(self, stats: dict[str, Any], global_step: int | None) -> None:
        """Log ``stats`` against the global step (or the problem's own count)."""
        step = self._count if global_step is None or self.log_local_step else global_step
        self.logger.log(stats, tag=self.name, step=step)

    def train(self) -> None:
        """Training mode: the module's, and the problem counts its updates."""
        self._training = True
        self.module.train()

    def eval(self) -> None:
        """Evaluation mode."""
        self._training = False
        self.module.eval()

    def is_implemented(self, fn_name: str) -> bool:
        """Whether the problem has a method ``fn_name``."""
        return callable(getattr(self, fn_name, None))

    def is_rank_zero(self) -> bool:
        """Whether this process is rank 0 (or the only one)."""
        return self._rank == 0

    @property
    def name(self) -> str:
        """The problem's name."""
        return self._name

    @property
    def config(self) -> Config:
        """The problem's [`Config`][mlo.betty.configs.Config]."""
        return self._config

    @property
    def children(self) -> list[Problem]:
        """The lower levels whose solutions this problem's loss reads (``l2u``)."""
        return self._children

    @property
    def parents(self) -> list[Problem]:
        """The upper levels that read this problem's solution (``l2u``)."""
        return self._parents

    @property
    def paths(self) -> list[list[Problem]]:
        """Betty's hypergradient paths from this problem through the levels below it."""
        return self._paths

    @property
    def leaf(self) -> bool:
        """Whether no lower level feeds this problem (the engine steps it every iteration)."""
        return self._leaf

    @property
    def count(self) -> int:
        """The problem's updates so far (micro-steps with gradient accumulation)."""
        return self._count


class ImplicitProblem(Problem):
    """A problem whose Jacobian is taken at its solution by implicit differentiation
    (``Config.type``: darts, sama, neumann, cg)."""


class IterativeProblem(Problem):
    """A problem whose Jacobian is taken by differentiating through its last
    ``unroll_steps`` optimizer steps: mlo's ``unroll`` solver, which replays the steps the
    level's own optimizer took (SGD, SGD with momentum, Adam, AdamW)."""


class HigherIterativeProblem(IterativeProblem):
    """Betty's ``higher``-based iterative problem: the same as
    [`IterativeProblem`][mlo.betty.problems.IterativeProblem] here (mlo needs no patched
    optimizer)."""


def _sharded(loader: Any, ranks: int, rank: int) -> Any:
    """A DataLoader that reads this rank's shard of ``loader``'s dataset (every
    ``ranks``-th example from ``rank``, reshuffled each epoch if ``loader`` shuffles),
    with its batch size and other settings; anything else is read whole on every rank."""
    from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

    if not isinstance(loader, DataLoader) or loader.batch_size is None:
        return loader
    sampler = DistributedSampler(
        loader.dataset,
        num_replicas=ranks,
        rank=rank,
        shuffle=isinstance(loader.sampler, RandomSampler),
        drop_last=loader.drop_last,
    )
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
    )


def _to(value: Any, device: Any) -> Any:
    if device is not None and isinstance(value, Tensor):
        return value.to(device)
    return value
