"""How close finite-difference second-order products (``ProblemConfig(hvp="finite_difference")``)
come to the exact ones on a real network: the DARTS supernet of ``benchmarks/memory.py``.

At the supernet's weights after a few SGD steps, with ``v`` the validation loss's gradient
(the vector a solver's products start from), the script compares the central difference
of two gradients at distance ``r`` with the exact reverse-over-reverse product, for the
Hessian-vector product ``H v`` and the mixed product with the architecture weights, in
float32 and float64, and prints the relative errors.

    python benchmarks/hvp_accuracy.py [--layers 3] [--channels 8]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

RADII = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)


def relative(a, b) -> float:
    diff = sum(float((x - y).double().pow(2).sum()) for x, y in zip(a, b)) ** 0.5
    return diff / sum(float(y.double().pow(2).sum()) for y in b) ** 0.5


def errors(dtype: torch.dtype, args) -> dict[float, tuple[float, float]]:
    from mlo.autodiff import SecondOrder
    from mlo.autodiff.finite_difference import FiniteDifferenceSecondOrder
    from mlo.parameters import ParameterSet
    from problems.nas import ArchitectureWeights, Supernet

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import random_batches

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    net, arch = Supernet(10, args.layers, args.channels).to(dtype), ArchitectureWeights()
    arch = arch.to(dtype)
    train = [(x.to(dtype), y) for x, y in random_batches(6, args.batch, args.size, gen)]
    (val,) = [(x.to(dtype), y) for x, y in random_batches(1, args.batch, args.size, gen)]
    params = ParameterSet(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    for x, y in train[1:]:  # away from the initialisation
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x, arch.normalized()), y).backward()
        optimizer.step()
    x, y = train[0]
    alphas = list(arch.parameters())

    def objective(values=None):
        if values is None:
            return torch.nn.functional.cross_entropy(net(x, arch.normalized()), y)
        with params.substitute(values):
            return torch.nn.functional.cross_entropy(net(x, arch.normalized()), y)

    loss_val = torch.nn.functional.cross_entropy(net(val[0], arch.normalized()), val[1])
    v = [g.detach() for g in torch.autograd.grad(loss_val, params.tensors)]
    exact = SecondOrder(objective(), params.tensors)
    hv, mixed = exact.hvp(v), exact.mixed(v, alphas)
    found = {}
    for radius in RADII:
        approx = FiniteDifferenceSecondOrder(objective, params.tensors, radius)
        found[radius] = (relative(approx.hvp(v), hv), relative(approx.mixed(v, alphas), mixed))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        f"DARTS supernet {args.layers} cells x {args.channels} channels, batch {args.batch}, "
        f"{args.size}x{args.size} images, torch {torch.__version__}; relative error of the "
        "finite-difference product against the exact one"
    )
    found = {dtype: errors(dtype, args) for dtype in (torch.float32, torch.float64)}
    print("r        H v float32   mixed float32   H v float64   mixed float64")
    for radius in RADII:
        (h32, m32), (h64, m64) = found[torch.float32][radius], found[torch.float64][radius]
        print(f"{radius:<8g} {h32:11.2e}  {m32:14.2e}  {h64:12.2e}  {m64:14.2e}")


if __name__ == "__main__":
    main()
