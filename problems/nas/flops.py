"""Multiply-adds of a network's forward pass, counted by hooks on its convolutions and
linear layers: the figure NAS papers report as "FLOPs" or "mult-adds" (batch norm,
activations, pooling and additions are left out, as in those counts)."""

from __future__ import annotations

import torch
from torch import nn


def multiply_adds(model: nn.Module, image_shape: tuple[int, ...]) -> int:
    """Multiply-adds of ``model`` on one image of ``image_shape`` (channels, height,
    width), in evaluation mode (so no auxiliary head and no drop-path), without changing
    the model's training mode or any of its state."""
    counts: list[int] = []

    def conv(module: nn.Conv2d, _inputs, output: torch.Tensor) -> None:
        kernel = module.kernel_size[0] * module.kernel_size[1]
        counts.append(output[0].numel() * (module.in_channels // module.groups) * kernel)

    def linear(module: nn.Linear, _inputs, output: torch.Tensor) -> None:
        counts.append(module.in_features * module.out_features)

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear))
    was_training = model.training
    parameter = next(model.parameters())
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *image_shape, device=parameter.device, dtype=parameter.dtype))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return sum(counts)
