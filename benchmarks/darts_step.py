"""Time one DARTS-style iteration three ways, side by side, on the same batches.

The iteration: one SGD step (momentum, weight decay) on the network weights ``w`` using
a training batch, then one Adam step on the architecture weights ``α`` using a
validation batch, with the ``darts`` hypergradient:

    g_α = ∇_α L_val(w, α) − ξ [∇_α L_train(w + r v, α) − ∇_α L_train(w − r v, α)] / (2r),
    v = ∇_w L_val(w, α),  r = 0.01 / ‖v‖,  ξ = the weights' learning rate.

Versions: mlo; the same math hand-written in plain PyTorch; Betty (betty-ml 0.1.1, its
``darts`` type, if installed). Rounds are interleaved so that machine noise hits all
versions alike. Prints the median time per iteration and the ratios.

    python benchmarks/darts_step.py [--rounds 30] [--batch 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import mlo

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import betty_bilevel_step, betty_problem, quiet_betty, random_batches
from hand_darts import darts_step_by_hand

OPS = ("none", "skip", "conv3", "conv5", "maxpool", "avgpool")


class MixedOp(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()

        def conv(k: int) -> nn.Module:
            return nn.Sequential(
                nn.ReLU(),
                nn.Conv2d(channels, channels, k, padding=k // 2, bias=False),
                nn.BatchNorm2d(channels, affine=False),
            )

        self.ops = nn.ModuleList(
            [
                nn.Identity(),  # "none", multiplied by zero below
                nn.Identity(),
                conv(3),
                conv(5),
                nn.MaxPool2d(3, 1, 1),
                nn.AvgPool2d(3, 1, 1, count_include_pad=False),
            ]
        )

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        out = self.ops[1](x) * weights[1]
        for i in range(2, len(self.ops)):
            out = out + self.ops[i](x) * weights[i]
        return out + 0.0 * weights[0] * x


class Architecture(nn.Module):
    def __init__(self, edges: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(1e-3 * torch.randn(edges, len(OPS)))


class MixedCNN(nn.Module):
    """A stem, ``edges`` mixed operations in a chain, global pooling and a classifier."""

    def __init__(self, channels: int = 16, edges: int = 4, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)
        )
        self.edges = nn.ModuleList([MixedOp(channels) for _ in range(edges)])
        self.head = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        weights = F.softmax(alpha, dim=-1)
        h = self.stem(x)
        for i, edge in enumerate(self.edges):
            h = edge(h, weights[i])
        return self.head(h.mean(dim=(2, 3)))


def make_models(seed: int):
    torch.manual_seed(seed)
    return MixedCNN(), Architecture(4)


def make_optimizers(net: nn.Module, arch: nn.Module):
    w_opt = torch.optim.SGD(net.parameters(), lr=0.025, momentum=0.9, weight_decay=3e-4)
    a_opt = torch.optim.Adam(arch.parameters(), lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    return w_opt, a_opt


def _with_models(step, net: nn.Module, arch: nn.Module):
    """The step function, with the models it trains attached (for checks)."""

    def run() -> None:
        step()

    run.net, run.arch = net, arch
    return run


# --------------------------------------------------------------------------- mlo


class Weights(mlo.Problem):
    def training_step(self, batch):
        x, y = batch
        return F.cross_entropy(self.module(x, self.arch.module.alpha), y)


class Arch(mlo.Problem):
    def training_step(self, batch):
        x, y = batch
        return F.cross_entropy(self.weights.module(x, self.module.alpha), y)


def mlo_step(train, val):
    net, arch = make_models(0)
    w_opt, a_opt = make_optimizers(net, arch)
    weights = Weights(
        "weights",
        net,
        w_opt,
        data=train,
        config=mlo.ProblemConfig(solver=mlo.solvers.Darts(epsilon=0.01)),
    )
    architecture = Arch("arch", arch, a_opt, data=val)
    engine = mlo.Engine(
        [architecture, weights], {"arch": ["weights"]}, mlo.EngineConfig(progress=False)
    )
    return _with_models(engine.step, net, arch)


# --------------------------------------------------------------------------- by hand


def hand_step(train, val):
    net, arch = make_models(0)
    w_opt, a_opt = make_optimizers(net, arch)
    step = darts_step_by_hand(
        lambda x: net(x, arch.alpha), list(net.parameters()), [arch.alpha], w_opt, a_opt, train, val
    )
    return _with_models(step, net, arch)


# --------------------------------------------------------------------------- Betty


def betty_step(train, val):
    try:
        from betty.configs import Config
        from betty.problems import ImplicitProblem
    except ImportError:
        return None
    quiet_betty()
    net, arch = make_models(0)
    w_opt, a_opt = make_optimizers(net, arch)

    class BWeights(ImplicitProblem):
        def training_step(self, batch):
            x, y = batch
            return F.cross_entropy(self.module(x, self.arch.module.alpha), y)

    class BArch(ImplicitProblem):
        def training_step(self, batch):
            x, y = batch
            return F.cross_entropy(self.weights.module(x, self.module.alpha), y)

    bw = betty_problem(
        BWeights, "weights", Config(type="darts", darts_alpha=0.01), net, w_opt, train
    )
    ba = betty_problem(BArch, "arch", Config(first_order=True, retain_graph=True), arch, a_opt, val)
    return betty_bilevel_step(ba, bw)


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=16, help="image side")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    gen = torch.Generator().manual_seed(0)
    train = random_batches(8, args.batch, args.size, gen)
    val = random_batches(8, args.batch, args.size, gen)
    versions = {"mlo": mlo_step(train, val), "hand-written": hand_step(train, val)}
    betty = betty_step(train, val)
    if betty is not None:
        versions["betty"] = betty
    times: dict[str, list[float]] = {k: [] for k in versions}
    for i in range(args.warmup + args.rounds):
        for name, step in versions.items():
            start = time.perf_counter()
            step()
            elapsed = time.perf_counter() - start
            if i >= args.warmup:
                times[name].append(elapsed)

    print(
        f"DARTS iteration: batch {args.batch}, {args.size}x{args.size} images, "
        f"{args.rounds} rounds, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    medians = {k: statistics.median(v) for k, v in times.items()}
    for name, median in medians.items():
        print(f"  {name:13s} median {1e3 * median:8.2f} ms")
    hand = medians["hand-written"]
    print(f"  ratio mlo / hand-written = {medians['mlo'] / hand:.3f}  (target ≤ 1.05)")
    if "betty" in medians:
        print(f"  ratio mlo / betty        = {medians['mlo'] / medians['betty']:.3f}")


if __name__ == "__main__":
    main()
