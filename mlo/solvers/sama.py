"""SAMA (Choe et al., "Making Scalable Meta Learning Practical", NeurIPS 2023), as mlo
reads it: first-order hypergradients that know the lower level's optimizer."""

from __future__ import annotations

import torch
from torch import Tensor

from ..autodiff.linalg import Vector
from ..errors import SetupError
from .base import Level, register
from .darts import Darts

ADAPTIVE = (torch.optim.Adam, torch.optim.AdamW)
PLAIN = (torch.optim.SGD,)


@register("sama")
class Sama(Darts):
    r"""Identity base Jacobian with the optimizer's own adaptation, mixed product by finite
    difference: only gradients, no second-order pass.

    SAMA replaces \(H^{-1}\) by the identity and keeps the one part of the lower level's
    response that is cheap and matters, the optimizer's map from gradient to update. For
    Adam and AdamW that map is, per entry, the division by \(\sqrt{\hat v} + \epsilon\)
    (\(\hat v\) the bias-corrected second moment in the optimizer's state), so
    \(H^{-1} v\) is replaced by \(\xi\, v / (\sqrt{\hat v} + \epsilon)\); for SGD it is the
    identity, and ``sama`` is then ``darts``. The mixed product along that direction is
    DARTS's central finite difference:

    \[
    J_{D,U}^\top v \approx -\xi\,
    \frac{\nabla_U f_D(\theta_D + r u) - \nabla_U f_D(\theta_D - r u)}{2r},
    \qquad u = \frac{v}{\sqrt{\hat v} + \epsilon}, \quad r = \frac{\varepsilon}{\lVert u \rVert}
    \]

    (\(\varepsilon\) is ``epsilon``, \(\epsilon\) the optimizer's ``eps``.)

    ``xi`` defaults to D's learning rate. Before D's first Adam step (no second moment yet)
    the direction is ``v``. Other optimizers are refused by name: their update map is not
    read. On a nested level the mixed product of its total gradient is taken exactly, as
    ``darts`` does.
    """

    def direction(self, level: Level, v: Vector) -> Vector:
        optimizer = level.optimizer
        if optimizer is None or isinstance(optimizer, PLAIN):
            return v
        if not isinstance(optimizer, ADAPTIVE):
            raise SetupError(
                f"solver 'sama' on level {level.name!r}: its optimizer is "
                f"{type(optimizer).__name__}, whose update map sama does not read (it reads "
                "SGD, Adam and AdamW); use 'darts' (the identity) or 'cg'/'neumann' for it"
            )
        groups = {id(p): group for group in optimizer.param_groups for p in group["params"]}
        out: list[Tensor] = []
        for p, x in zip(level.own_params, v):
            state, group = optimizer.state.get(p, {}), groups.get(id(p))
            second = state.get("max_exp_avg_sq", state.get("exp_avg_sq"))
            if second is None or group is None:
                out.append(x)
                continue
            beta2 = group["betas"][1]
            step = torch.as_tensor(state["step"], dtype=second.dtype, device=second.device)
            corrected = second / (1 - beta2**step)
            out.append(x / (corrected.sqrt() + group["eps"]))
        return out
