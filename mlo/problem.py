"""A level of a multilevel program."""

from __future__ import annotations

import keyword
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from .config import ProblemConfig
from .data import BatchStream
from .errors import SetupError
from .parameters import ParameterSet


class Problem:
    r"""One learning problem: parameters (``module``), an optimizer, data and an objective.

    Subclass it and implement ``training_step``, which returns the scalar objective
    \(f_P\) on a batch. Inside it, other problems of the same engine are reached by name:
    ``self.outer.module(x)``.

    Args:
        name: unique name of the level; also the attribute other problems use to reach it.
        module: the ``nn.Module`` holding this level's trainable parameters \(\theta_P\) (a
            ``DistributedDataParallel`` wrapper is unwrapped: the engine averages itself).
        optimizer: a ``torch.optim.Optimizer`` over (a subset of) ``module``'s parameters;
            ``None`` for a level that implements ``best_response`` instead.
        data: any iterable of batches, cycled; ``None`` passes ``batch=None``.
        config: per-level options ([`mlo.ProblemConfig`][mlo.ProblemConfig]).
        scheduler: an optional learning-rate scheduler, stepped after every update.
    """

    def __init__(
        self,
        name: str,
        module: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        data: Iterable[Any] | None = None,
        config: ProblemConfig | None = None,
        scheduler: Any | None = None,
    ) -> None:
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
            raise SetupError(
                f"problem name {name!r} must be a Python identifier that is not a keyword, "
                "since other problems reach it as self.<name>; rename it (e.g. 'cls' for "
                "'class')"
            )
        if not isinstance(module, nn.Module):
            raise SetupError(f"problem {name!r}: module must be a torch.nn.Module")
        module = _unwrap(name, module)
        if optimizer is None and not self.explicit:
            raise SetupError(
                f"problem {name!r}: optimizer is None, but {type(self).__name__} does not "
                "implement best_response(); give it a torch.optim.Optimizer"
            )
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise SetupError(f"problem {name!r}: optimizer must be a torch.optim.Optimizer")
        if isinstance(optimizer, torch.optim.LBFGS):
            raise SetupError(
                f"problem {name!r}: LBFGS is not supported. It needs a closure that "
                "re-evaluates the loss several times per step, while mlo computes each "
                "update's gradient once (with the hypergradient of the levels below) and "
                "calls optimizer.step() without a closure. Use SGD, Adam or AdamW"
            )
        _check_scheduler(name, scheduler, optimizer)
        if config is not None and not isinstance(config, ProblemConfig):
            raise SetupError(f"problem {name!r}: config must be a mlo.ProblemConfig")
        self.name = name
        self.module = module
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.config = config if config is not None else ProblemConfig()
        self.params = ParameterSet(module)
        if len(self.params) == 0:
            raise SetupError(
                f"problem {name!r} has no trainable parameters (none of its module's "
                "parameters has requires_grad=True); give it a module with parameters"
            )
        own = {id(p) for p in self.params.tensors}
        for group in optimizer.param_groups if optimizer is not None else []:
            for p in group["params"]:
                if id(p) not in own:
                    raise SetupError(
                        f"problem {name!r}: its optimizer holds a tensor that is not a "
                        "trainable parameter of its module; build the optimizer from "
                        "module.parameters()"
                    )
        self.stream = BatchStream(name, data)
        self.batch: Any = None
        self.has_batch = False
        self._peers: dict[str, Problem] = {}

    def set_peers(self, peers: dict[str, Problem]) -> None:
        """The other problems of its engine, reached by name (``self.outer``); the engine
        calls it when it is built."""
        self._peers = dict(peers)

    def training_step(self, batch: Any) -> Tensor:
        r"""The objective \(f_P\) on ``batch``: a scalar tensor."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement training_step(self, batch) -> scalar tensor"
        )

    def best_response(self, batch: Any) -> list[Tensor]:
        """Optional: this level's solution as an explicit, differentiable function of the
        other problems' current parameters (one tensor per parameter, in
        ``module.named_parameters()`` order).

        A level that implements it is updated by setting its parameters to the result
        (no optimizer step; called under ``torch.no_grad()``, so a response that needs
        gradients inside must enable them itself), and the ``explicit`` solver
        differentiates through it (called with gradients enabled). Use
        it for levels solved by an algorithm rather than by gradient steps on
        ``training_step``: an adversarial attack, a closed-form ridge regression, ...
        """
        raise NotImplementedError

    @property
    def explicit(self) -> bool:
        """Whether this level implements ``best_response``."""
        return type(self).best_response is not Problem.best_response

    def reset(self) -> None:
        """Re-initialise the module and clear the optimizer state.

        Called before each inner loop when ``config.reset_each_inner_loop`` is set;
        override it for a custom re-initialisation.
        """
        for sub in self.module.modules():
            reset = getattr(sub, "reset_parameters", None)
            if callable(reset):
                reset()
        if self.optimizer is not None:
            self.optimizer.state.clear()

    def __getattr__(self, item: str) -> Problem:
        peers = self.__dict__.get("_peers")
        if peers and item in peers:
            return peers[item]
        known = f"; problems in its engine: {', '.join(peers)}" if peers else ""
        raise AttributeError(
            f"{type(self).__name__} {self.__dict__.get('name')!r} has no attribute {item!r}{known}"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, solver={self.config.solver.name!r})"


def _check_scheduler(name: str, scheduler: Any, optimizer: torch.optim.Optimizer | None) -> None:
    """A scheduler must be stepped after this problem's optimizer, and saved with it."""
    if scheduler is None:
        return
    if not (callable(getattr(scheduler, "step", None)) and hasattr(scheduler, "state_dict")):
        raise SetupError(
            f"problem {name!r}: scheduler must be a learning-rate scheduler built on its "
            f"optimizer (torch.optim.lr_scheduler.*), got {type(scheduler).__name__} "
            f"{scheduler!r:.60}"
        )
    if optimizer is None:
        raise SetupError(f"problem {name!r} has a scheduler but no optimizer; drop the scheduler")
    target = getattr(scheduler, "optimizer", optimizer)
    if target is not optimizer:
        raise SetupError(
            f"problem {name!r}: its scheduler was built for another optimizer; build it on "
            "this problem's own optimizer, e.g. CosineAnnealingLR(optimizer, T_max)"
        )


def _unwrap(name: str, module: nn.Module) -> nn.Module:
    """A ``DistributedDataParallel``-wrapped module is trained as the module it wraps: under
    ``EngineConfig(distributed="ddp")`` the engine averages gradients and Hessian-vector
    products itself (DDP's hooks only see ``.backward()``, which mlo does not call)."""
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(module, DistributedDataParallel):
        return module.module
    if isinstance(module, FullyShardedDataParallel):
        raise SetupError(
            f"problem {name!r}: modules wrapped by the FullyShardedDataParallel class "
            "(FSDP1) are not supported; pass the plain module with "
            "EngineConfig(distributed='fsdp'), which shards it with FSDP2, or one you "
            "sharded yourself with torch.distributed.fsdp.fully_shard"
        )
    return module
