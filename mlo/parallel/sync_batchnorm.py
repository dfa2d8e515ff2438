"""Batch normalisation over the global batch of all data-parallel ranks, differentiable to
any order.

Under ``EngineConfig(distributed="ddp")`` a plain ``BatchNorm`` normalises over each
rank's own ``B`` examples, so N ranks compute a different function from one process with
batch ``N·B``. ``SyncBatchNorm`` normalises over all ``N·B`` examples instead: its
batch mean and variance are averaged across ranks with ``mlo.parallel.distributed.Reducer.mean``,
whose derivative is again an average across ranks. Hessian-vector and mixed products
through it (darts, neumann, cg, unroll, nested levels) are therefore those of the global
batch's objective. PyTorch's ``torch.nn.SyncBatchNorm`` is not usable there: it runs on
GPUs only and its backward cannot be differentiated again.

Without a process group (or on one rank) it is ``BatchNorm``. Convert a model with
``convert_sync_batchnorm`` before or after creating its optimizer (the parameters and
buffers are kept).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .. import observe
from . import distributed


class SyncBatchNorm(_BatchNorm):
    r"""``BatchNorm1d/2d/3d`` whose training-mode statistics are the global batch's.

    The mean and variance come from one all-reduce per call (and one in the backward) of
    each rank's sums of \(x - c\) and \((x - c)^2\) and its example count, about a shift
    ``c`` every rank holds (the running mean, which follows the batch mean, so the
    one-pass variance loses little to cancellation; 0 without running statistics). The
    running statistics are updated with the global values (the unbiased variance over all
    ranks' examples), so they are identical on every rank. Evaluation mode uses the
    running statistics, as ``BatchNorm`` does; inside ``mlo.observing`` it is
    ``BatchNorm`` on the observed batch alone (an evaluation may run on one rank only, and
    must not wait for the others).
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(
                f"SyncBatchNorm expects a batch of shape (N, C, ...), got {input.dim()}D input"
            )

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        batch_stats = self.training or self.running_mean is None
        if not batch_stats or distributed.world_size() == 1 or observe.active():
            return super().forward(input)
        reducer = distributed.Reducer()
        if input.dtype in (torch.float16, torch.bfloat16):
            input = input.float()  # statistics in float32, as BatchNorm under autocast
        channels = input.shape[1]
        dims = [0, *range(2, input.dim())]
        shape = [1, channels] + [1] * (input.dim() - 2)
        count = torch.full(
            (1,), input.numel() // channels, dtype=torch.float64, device=input.device
        )
        # One reduction of the sums about a shift every rank shares: the running mean
        # when there is one (close to the batch mean, so E[(x-c)²] - (μ-c)² loses little
        # to cancellation), else 0.
        if self.running_mean is not None:
            shift = self.running_mean.detach().to(input.dtype).reshape(shape)
            shifted = input - shift
        else:
            shift, shifted = None, input
        # The sums in float64 (as PyTorch's CPU batch norm accumulates), so that the
        # one-pass variance keeps the precision of a two-pass one in float32.
        wide = shifted.double()
        first, second, examples = reducer.mean([wide.sum(dims), wide.square().sum(dims), count])
        offset = first / examples  # μ - c
        var = (second / examples - offset.square()).clamp_min(0).to(input.dtype)
        offset, examples = offset.to(input.dtype), examples.to(input.dtype)
        mean = offset if shift is None else offset + shift.reshape(-1)
        if self.training and self.track_running_stats:
            self._update_running(mean, var, examples * reducer.world)
        centred = shifted - offset.reshape(shape)
        normalised = centred * torch.rsqrt(var + self.eps).reshape(shape)
        if self.affine:
            normalised = normalised * self.weight.reshape(shape) + self.bias.reshape(shape)
        return normalised

    def _update_running(self, mean: Tensor, var: Tensor, examples: Tensor) -> None:
        assert self.num_batches_tracked is not None
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            factor: Tensor | float
            if self.momentum is None:  # a cumulative moving average, as BatchNorm's
                factor = self.num_batches_tracked.to(self.running_mean.dtype).reciprocal()
            else:
                factor = self.momentum
            unbiased = var * examples / (examples - 1).clamp_min(1)
            self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), factor)
            self.running_var.lerp_(unbiased.detach().to(self.running_var.dtype), factor)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm1d/2d/3d`` in ``module`` by a ``SyncBatchNorm`` that
    holds the same parameters and buffers (an optimizer created before keeps working);
    returns the module (a new one only when ``module`` is itself a batch norm)."""
    if isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNorm):
        converted = SyncBatchNorm(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
        )
        if module.affine:
            converted.weight = module.weight
            converted.bias = module.bias
        if module.track_running_stats:
            converted.running_mean = module.running_mean
            converted.running_var = module.running_var
            converted.num_batches_tracked = module.num_batches_tracked
        converted.train(module.training)
        return converted
    for name, child in module.named_children():
        replaced = convert_sync_batchnorm(child)
        if replaced is not child:
            setattr(module, name, replaced)
    return module
