"""Fully sharded levels: ``EngineConfig(distributed="fsdp")`` on PyTorch's FSDP2
(``torch.distributed.fsdp.fully_shard``).

Every level trained by an optimizer keeps its parameters and its optimizer state sharded
across the ranks (FSDP2's ``DTensor`` parameters, ``Shard(0)``), which is where the
optimizer steps: a rank stores and updates ``1/N`` of each parameter and of its momenta.
To compute, the engine gathers each level's full parameters once (``unshard``) and keeps
them gathered while the ticks run, because a hypergradient evaluates and differentiates
every level's objective several times per update (the solvers' Hessian-vector and mixed
products read all levels' parameters); after each optimizer step the level is gathered
again from its updated shards. The arithmetic is then that of ``distributed="ddp"``
(``mlo.parallel.distributed``): each rank evaluates its own shard of the data, every gradient
and product is averaged across ranks, and the averaged gradient's local slice becomes the
sharded parameter's gradient. N ranks with batch B therefore compute the update of one
process with batch N·B, as under ``"ddp"``; what FSDP saves is the optimizer state (and
the master copy of the parameters), not the gathered parameters during a tick.

FSDP2's own gradient hooks (reduce-scatter and resharding after ``backward()``) are turned
off on these modules: mlo differentiates with autograd's grad (never ``.backward()``),
several times per update, and averages itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..errors import SetupError
from ..parameters import ParameterSet

if TYPE_CHECKING:
    from ..problem import Problem


class Sharding:
    """The sharded levels of one engine and their FSDP2 modules."""

    def __init__(self, problems: Mapping[str, Problem]) -> None:
        from torch.distributed.fsdp import FSDPModule

        self.roots: dict[str, Any] = {}  # a level's module (FSDP or holding FSDP modules)
        self.modules: dict[str, list[Any]] = {}  # its FSDP modules, outermost first
        self.shards: dict[str, list[Any]] = {}  # its sharded parameters (DTensors)
        self.gathered: dict[str, list[Tensor]] = {}  # the same, gathered (what computes)
        for name, problem in problems.items():
            if problem.optimizer is None:
                continue  # an explicit level holds its rank's solution (as under "ddp")
            if problem.config.solver.needs_trajectory:
                raise SetupError(
                    f"problem {name!r}: the 'unroll' solver is not available with "
                    "distributed='fsdp' (its replay needs the full optimizer state of every "
                    "recorded step); use distributed='ddp', or another solver"
                )
            if not any(isinstance(m, FSDPModule) for m in problem.module.modules()):
                _shard(name, problem)
            shards = [p for p in problem.module.parameters() if p.requires_grad]
            modules = [m for m in problem.module.modules() if isinstance(m, FSDPModule)]
            for module in modules:
                # mlo averages and reshards itself (see the module docstring).
                module.set_reshard_after_forward(False, recurse=False)
                module.set_reshard_after_backward(False, recurse=False)
                module.set_requires_gradient_sync(False, recurse=False)
                module.unshard()
            problem.params = ParameterSet(problem.module)  # the gathered parameters
            if [tuple(p.shape) for p in problem.params.tensors] != [tuple(s.shape) for s in shards]:
                raise SetupError(
                    f"problem {name!r}: its gathered parameters do not match its sharded "
                    "ones; shard the module with torch.distributed.fsdp.fully_shard and no "
                    "other parameter changes"
                )
            self.roots[name] = problem.module
            self.modules[name] = modules
            self.shards[name] = shards
            self.gathered[name] = list(problem.params.tensors)

    def __contains__(self, name: str) -> bool:
        return name in self.shards

    def move_gradients(self, name: str) -> None:
        """Give each sharded parameter of level ``name`` its slice of the (averaged,
        full) gradient the engine set on the gathered parameter, which it then drops."""
        for full, shard in zip(self.gathered[name], self.shards[name]):
            grad, full.grad = full.grad, None
            shard.grad = None if grad is None else _slice(grad, shard)

    def gather(self, name: str) -> None:
        """Gather level ``name``'s parameters again from its (updated) shards."""
        for module in self.modules[name]:
            module.reshard()
        for module in self.modules[name]:
            module.unshard()
        for shard in self.shards[name]:
            shard.grad = None

    def write_shards(self, name: str) -> None:
        """Copy level ``name``'s gathered parameters into its shards (after they were
        written in place, as ``Problem.reset`` does)."""
        with torch.no_grad():
            for full, shard in zip(self.gathered[name], self.shards[name]):
                shard.copy_(_slice(full.detach(), shard))

    def module_state(self, name: str, full: bool = True) -> dict[str, Any]:
        """Level ``name``'s module state dict, its shards gathered into full tensors with
        ``full`` (a collective), its parameters gathered again afterwards (FSDP2's
        state-dict hooks leave the sharded ones registered)."""
        state = self.roots[name].state_dict()
        if full:
            state = self.full_state(state)
        self.gather(name)
        return state

    def full_state(self, value: Any) -> Any:
        """``value`` (a state dict, nested) with every ``DTensor`` gathered into a full
        tensor: what a checkpoint holds, whatever the number of ranks. A collective:
        every rank calls it."""
        from torch.distributed.tensor import DTensor

        if isinstance(value, DTensor):
            return value.full_tensor()
        if isinstance(value, dict):
            return {k: self.full_state(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.full_state(v) for v in value]
        return value

    def load_module(self, name: str, state: dict[str, Any]) -> None:
        """Load a full module state into level ``name``'s shards, then gather."""
        from torch.distributed.tensor import DTensor

        root = self.roots[name]
        current = root.state_dict()
        converted = {
            key: _slice(value, current[key])
            if isinstance(current.get(key), DTensor) and isinstance(value, Tensor)
            else value
            for key, value in state.items()
        }
        for module in self.modules[name]:
            module.reshard()
        root.load_state_dict(converted)
        for module in self.modules[name]:
            module.unshard()

    def optimizer_state(self, name: str, state: dict[str, Any]) -> dict[str, Any]:
        """A full optimizer state dict made sharded like level ``name``'s parameters:
        each per-parameter tensor of a parameter's shape becomes its slice."""
        shards = self.shards[name]
        out = dict(state)
        out["state"] = {}
        for index, entries in state.get("state", {}).items():
            shard = shards[int(index)] if int(index) < len(shards) else None
            out["state"][index] = {
                key: _slice(value, shard)
                if shard is not None
                and isinstance(value, Tensor)
                and tuple(value.shape) == tuple(shard.shape)
                and value.dim() > 0
                else value
                for key, value in entries.items()
            }
        return out


def _slice(full: Tensor, like: Any) -> Any:
    """This rank's slice of ``full``, as a ``DTensor`` placed like ``like`` (no
    communication: every rank holds the same ``full``)."""
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(
        full.detach().to(like.dtype), like.device_mesh, like.placements, src_data_rank=None
    )


def _shard(name: str, problem: Problem) -> None:
    """Apply ``fully_shard`` to a level's module and point its optimizer at the sharded
    parameters (``fully_shard`` replaces the module's parameters)."""
    from torch.distributed.fsdp import fully_shard

    optimizer = problem.optimizer
    if optimizer is not None and optimizer.state:
        raise SetupError(
            f"problem {name!r}: its optimizer has already stepped; with distributed='fsdp' "
            "build the engine before training, or shard the module yourself "
            "(torch.distributed.fsdp.fully_shard) and build the optimizer after"
        )
    before = dict(problem.module.named_parameters())
    names = {id(p): n for n, p in before.items()}
    fully_shard(problem.module, reshard_after_forward=False)
    after = dict(problem.module.named_parameters())
    for group in optimizer.param_groups if optimizer is not None else []:
        group["params"] = [after[names[id(p)]] for p in group["params"]]
