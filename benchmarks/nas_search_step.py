"""DARTS search-step throughput on the DARTS supernet: mlo against the same step by hand.

Both versions start from the same supernet and architecture weights and see the same
batches; each iteration is one supernet SGD step (gradient clipping 5, cosine schedule)
and one architecture Adam step with the ``darts`` hypergradient (see hand_darts.py).
Rounds alternate between the versions. Prints images per second (search-train images
per iteration over its median time) and the ratio mlo / hand-written.

    python benchmarks/nas_search_step.py                      # CPU, a small supernet
    python benchmarks/nas_search_step.py --device cuda --layers 8 --channels 16 \\
        --batch 64 --amp --channels-last                      # the paper's search size
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

import mlo
from problems.nas import ArchitectureWeights, SearchHyper, Supernet, build_darts

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import random_batches
from hand_darts import darts_step_by_hand


def models(args, device):
    torch.manual_seed(0)
    net = Supernet(10, args.layers, args.channels).to(device)
    arch = ArchitectureWeights().to(device)
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net, arch


def mlo_version(args, device, train, val):
    net, arch = models(args, device)
    problems, deps = build_darts(net, arch, train, val, total_updates=10_000)
    for p in problems:
        p.amp_dtype = torch.bfloat16 if args.amp else None
        p.channels_last = args.channels_last
    engine = mlo.Engine(problems, deps, mlo.EngineConfig(progress=False))
    return engine.step, (net, arch)


def hand_version(args, device, train, val):
    net, arch = models(args, device)
    hyper = SearchHyper()
    w_opt, scheduler = hyper.weight_optimizer(net.parameters(), 10_000)
    a_opt = hyper.arch_optimizer(arch.parameters())
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp)

    def forward(x):
        with amp:
            logits = net(x, arch.normalized())
        # as the engine's levels do: upcast bfloat16 logits, keep float32/float64 ones
        return logits.float() if logits.dtype == torch.bfloat16 else logits

    def to_device(data):
        out = []
        for x, y in data:
            x = x.to(device)
            if args.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out.append((x, y.to(device)))
        return out

    step = darts_step_by_hand(
        forward,
        list(net.parameters()),
        list(arch.parameters()),
        w_opt,
        a_opt,
        to_device(train),
        to_device(val),
        grad_clip=hyper.grad_clip,
        scheduler=scheduler,
    )
    return step, (net, arch)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    gen = torch.Generator().manual_seed(0)
    train, val = random_batches(4, args.batch, 32, gen), random_batches(4, args.batch, 32, gen)
    versions = {
        "mlo": mlo_version(args, device, train, val)[0],
        "hand-written": hand_version(args, device, train, val)[0],
    }
    times: dict[str, list[float]] = {k: [] for k in versions}
    for i in range(args.warmup + args.rounds):
        for name, step in versions.items():
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)

    print(
        f"DARTS supernet search step: {args.layers} cells, {args.channels} channels, "
        f"batch {args.batch}, device {device}, amp={args.amp}, "
        f"channels_last={args.channels_last}, {args.rounds} rounds, torch {torch.__version__}"
    )
    throughput = {}
    for name, values in times.items():
        median = statistics.median(values)
        throughput[name] = args.batch / median
        print(f"  {name:13s} median {1e3 * median:9.2f} ms   {throughput[name]:8.1f} images/s")
    ratio = throughput["mlo"] / throughput["hand-written"]
    print(f"  throughput ratio mlo / hand-written = {ratio:.3f}  (target ≥ 0.95)")


if __name__ == "__main__":
    main()
