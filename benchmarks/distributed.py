"""Data-parallel DARTS search step: ticks per second on 1 and on 2 CPU processes (gloo), and
the share of the 2-process step spent in mlo's reductions (all-reduces, broadcasts).

Both configurations train the same supernet on the same global batches: one process with
batch B and 2 threads, or two ranks with batch B/2 and 1 thread each (the same cores).
They cannot share a process, so rounds alternate between them (1, 2, 1, 2, ...) and the
script prints the median of the paired ratios.

    python benchmarks/distributed.py                 # layers 2, channels 8, batch 32, 16 px
    python benchmarks/distributed.py --repeats 5 --ticks 20
    python benchmarks/distributed.py --sync-bn       # batch norm over the global batch
    python benchmarks/distributed.py --fsdp          # the 2 ranks' levels sharded (FSDP2)

With ``--fsdp`` the reductions' share includes the all-gathers that gather each level's
parameters again after its optimizer step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import mlo
from problems.nas import ArchitectureWeights, Supernet, build_darts

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import random_batches

ROOT = Path(__file__).resolve().parents[1]


def measure(args, rank: int, world: int) -> dict[str, float]:
    """Median seconds per tick (after 2 warm-up ticks) and seconds in reductions."""
    generator = torch.Generator().manual_seed(0)
    n = args.ticks + 2
    train = random_batches(n, args.batch, args.size, generator)
    val = random_batches(n, args.batch, args.size, generator)
    per = args.batch // world

    def shard(batches):
        return [
            (x[rank * per : (rank + 1) * per], y[rank * per : (rank + 1) * per]) for x, y in batches
        ]

    torch.manual_seed(0)
    net, arch = Supernet(10, args.layers, args.channels), ArchitectureWeights()
    if args.sync_bn:
        mlo.convert_sync_batchnorm(net)
    problems, deps = build_darts(net, arch, shard(train), shard(val), total_updates=10_000)
    engine = mlo.Engine(
        problems,
        deps,
        mlo.EngineConfig(progress=False, distributed=_mode(args) if world > 1 else "none"),
    )
    spent = [0.0]

    def timing(method):
        def timed(*a, **k):
            start = time.perf_counter()
            try:
                return method(*a, **k)
            finally:
                spent[0] += time.perf_counter() - start

        return timed

    if engine.reducer is not None:
        # Every average (the engine's and SyncBatchNorm's, forward and backward) goes
        # through mlo.parallel.distributed._mean; agreements and broadcasts through the reducer.
        mlo.parallel.distributed._mean = timing(mlo.parallel.distributed._mean)
        for name in ("all_true", "broadcast_"):
            setattr(engine.reducer, name, timing(getattr(engine.reducer, name)))
    if engine.sharding is not None:  # the all-gathers after each optimizer step
        engine.sharding.gather = timing(engine.sharding.gather)
    times = []
    for tick in range(n):
        if tick == 2:
            spent[0] = 0.0
        start = time.perf_counter()
        engine.step()
        if tick >= 2:
            times.append(time.perf_counter() - start)
    return {"tick": statistics.median(times), "reduce": spent[0] / len(times)}


def _mode(args) -> str:
    return "fsdp" if args.fsdp else "ddp"


def worker(args) -> None:
    import datetime

    import torch.distributed as dist

    dist.init_process_group("gloo", timeout=datetime.timedelta(minutes=5))
    torch.set_num_threads(1)
    result = measure(args, dist.get_rank(), dist.get_world_size())
    if dist.get_rank() == 0:
        Path(args.result).write_text(json.dumps(result))
    dist.destroy_process_group()


def two_ranks(args) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        result = Path(folder) / "result.json"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        command += ["--nproc_per_node", "2", __file__, "--worker", "--result", str(result)]
        command += [
            f"--{k.replace('_', '-')}={v}" if k not in FLAGS else f"--{k.replace('_', '-')}"
            for k, v in vars(args).items()
            if k in KNOBS and v is not False
        ]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        subprocess.run(command, check=True, env=env, capture_output=True)
        return json.loads(result.read_text())


FLAGS = ("sync_bn", "fsdp")
KNOBS = ("ticks", "layers", "channels", "batch", "size", *FLAGS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ticks", type=int, default=12)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32, help="global batch")
    parser.add_argument("--size", type=int, default=16, help="image side")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--sync-bn",
        action="store_true",
        help="batch norm over the global batch (mlo.convert_sync_batchnorm)",
    )
    parser.add_argument(
        "--fsdp",
        action="store_true",
        help="the 2 ranks shard each trained level (EngineConfig(distributed='fsdp'))",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    torch.set_num_threads(2)
    ratios, fractions, one, two = [], [], [], []
    for _ in range(args.repeats):
        single = measure(args, 0, 1)
        double = two_ranks(args)
        one.append(single["tick"])
        two.append(double["tick"])
        ratios.append(single["tick"] / double["tick"])
        fractions.append(double["reduce"] / double["tick"])
    print(f"torch {torch.__version__}, {os.cpu_count()} CPU cores, gloo")
    print(
        f"DARTS supernet step, layers {args.layers}, channels {args.channels}, global batch "
        f"{args.batch}, {args.size}×{args.size} images, {args.ticks} ticks × {args.repeats}"
        + (", SyncBatchNorm" if args.sync_bn else "")
        + (", 2 ranks sharded (fsdp)" if args.fsdp else "")
    )
    print(f"1 process, 2 threads   : {1 / statistics.median(one):6.2f} ticks/s")
    print(f"2 ranks, 1 thread each : {1 / statistics.median(two):6.2f} ticks/s")
    print(
        f"speed-up 2 ranks / 1 process (median of paired ratios): {statistics.median(ratios):.2f}"
    )
    print(
        "reductions' share of the 2-rank step (all-reduce, broadcast"
        + (", all-gather" if args.fsdp else "")
        + "; median): "
        f"{100 * statistics.median(fractions):.1f} %"
    )


if __name__ == "__main__":
    main()
