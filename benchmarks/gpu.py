"""GPU throughput: the LeaSE and DARTS search steps at the DARTS settings, the mobile
ImageNet network's training step, and the engine's data-parallel step.

Parts (``--parts``, default all):

- ``search``: one engine tick of the LeaSE search (four levels, the default LeaSE
  configuration, ResNet-18 audience) and of the DARTS baseline, at DARTS' CIFAR-10 search
  settings (8 cells, 16 channels, batch 64, 32×32 images), in float32 and with bfloat16
  autocast + channels_last (``--amp --channels-last`` of the examples). Rounds alternate
  between the configurations. Images per second count the explainer's search-train images
  (the examples' progress bar counts the same), peak memory is the most GPU memory
  allocated during a tick, and the projection is the search's length in hours: 50 epochs
  of CIFAR-10's 25,000 search-train images, as ``examples/lease_cifar.py`` plans it.
- ``imagenet``: one SGD step (forward with the auxiliary head, backward, update) of the
  mobile-setting network of DARTS_V2 (14 cells, 48 channels, 224×224) at batch 256 with
  bfloat16 autocast and channels_last; images per second and the projected GPU-hours of
  the 250-epoch recipe on ImageNet's 1,281,167 training images.
- ``syncs``: the host synchronisations of one LeaSE and one DARTS tick, by source line
  (CUDA's sync debug mode).
- ``ddp``: under ``torchrun`` (NCCL), the DARTS search tick with
  ``EngineConfig(distributed="ddp")`` against the same tick with ``"none"``, alternating,
  on this rank's GPU: the cost of mlo's reductions at this world size.

The data are random tensors already in pinned memory, so that the loaders do not decide
the figures.

    python benchmarks/gpu.py --out gpu.json
    torchrun --standalone --nproc_per_node 1 benchmarks/gpu.py --parts ddp
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F

import mlo
from problems.launch import start
from problems.lease import LeaseHyper, build
from problems.nas import ArchitectureWeights, Supernet, build_darts
from problems.nas.evaluation import MobileNetwork, count_parameters
from problems.nas.genotype import DARTS_V2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import random_batches

CIFAR_STD = (0.247, 0.243, 0.261)
SEARCH_IMAGES, SEARCH_EPOCHS = 25_000, 50
IMAGENET_IMAGES, IMAGENET_EPOCHS = 1_281_167, 250


def pinned(batches, device):
    if device.type != "cuda":
        return batches
    return [(x.pin_memory(), y.pin_memory()) for x, y in batches]


def search_engine(method: str, args, device, fast: bool, distributed: str = "none"):
    """The tick of ``examples/lease_cifar.py`` (``method='lease'``) or of its
    ``--baseline darts``, built as the example's runner builds it."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    data = [pinned(random_batches(4, args.batch, 32, generator), device) for _ in range(3)]
    supernet = Supernet(10, args.layers, args.channels).to(device)
    arch = ArchitectureWeights().to(device)
    if fast:
        supernet = supernet.to(memory_format=torch.channels_last)
    if method == "lease":
        problems, deps = build(
            supernet,
            arch,
            data[0],
            data[1],
            data[2],
            num_classes=10,
            batch_size=args.batch,
            total_updates=10_000,
            image_shape=(3, 32, 32),
            pixel_std=torch.tensor(CIFAR_STD),
            hyper=LeaseHyper(),
            seed=0,
        )
    else:
        problems, deps = build_darts(supernet, arch, data[0], data[2], total_updates=10_000)
    for p in problems:
        p.amp_dtype = torch.bfloat16 if fast else None
        p.channels_last = fast
    config = mlo.EngineConfig(progress=False, distributed=distributed)
    return mlo.Engine(problems, deps, config)


def timed(step, device) -> tuple[float, int]:
    """Seconds of one call of ``step`` and the peak memory allocated during it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    begin = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return time.perf_counter() - begin, torch.cuda.max_memory_allocated(device)
    return time.perf_counter() - begin, 0


def alternate(steps: dict, device, warmup: int, rounds: int) -> dict[str, dict[str, float]]:
    """Median seconds and peak bytes of each step, the steps alternating round by round."""
    seconds: dict[str, list[float]] = {k: [] for k in steps}
    peak: dict[str, int] = dict.fromkeys(steps, 0)
    for i in range(warmup + rounds):
        for name, step in steps.items():
            s, p = timed(step, device)
            print(
                f"  round {i} {name}: {s:.3f} s, {p / 2**30:.2f} GiB", file=sys.stderr, flush=True
            )
            if i >= warmup:
                seconds[name].append(s)
                peak[name] = max(peak[name], p)
    return {
        k: {"seconds": statistics.median(v), "peak_gib": peak[k] / 2**30}
        for k, v in seconds.items()
    }


def search_part(args, device) -> dict:
    steps = {}
    for method in ("lease", "darts"):
        for fast in (False, True):
            engine = search_engine(method, args, device, fast)
            steps[f"{method} {'bf16+channels_last' if fast else 'fp32'}"] = engine.step
    results = alternate(steps, device, args.warmup, args.rounds)
    ticks = SEARCH_EPOCHS * (SEARCH_IMAGES // args.batch)
    for r in results.values():
        r["images_per_second"] = args.batch / r["seconds"]
        r["search_hours_50_epochs"] = ticks * r["seconds"] / 3600
    return results


def imagenet_part(args, device) -> dict:
    torch.manual_seed(0)
    net = MobileNetwork(DARTS_V2).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=3e-5)
    x = torch.randn(args.imagenet_batch, 3, 224, 224, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (args.imagenet_batch,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits, aux = net(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=0.1)
        loss = loss + 0.4 * F.cross_entropy(aux.float(), y, label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        optimizer.step()

    r = alternate({"mobile DARTS_V2": step}, device, args.warmup, args.rounds)["mobile DARTS_V2"]
    r["batch"] = args.imagenet_batch
    r["parameters_millions"] = count_parameters(net) / 1e6
    r["images_per_second"] = args.imagenet_batch / r["seconds"]
    r["gpu_hours_250_epochs"] = IMAGENET_EPOCHS * IMAGENET_IMAGES / r["images_per_second"] / 3600
    return r


def ddp_part(args, device) -> dict:
    if not torch.distributed.is_initialized():  # torchrun with one process: start() waits
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    steps = {
        "ddp": search_engine("darts", args, device, True, "ddp").step,
        "none": search_engine("darts", args, device, True, "none").step,
    }
    results = alternate(steps, device, args.warmup, args.rounds)
    results["ratio ddp/none"] = results["ddp"]["seconds"] / results["none"]["seconds"]
    results["world_size"] = mlo.parallel.distributed.world_size()
    return results


def syncs_part(args, device) -> dict:
    """Host synchronisations in one tick (CUDA's sync debug mode), by source line."""
    results = {}
    for method in ("lease", "darts"):
        engine = search_engine(method, args, device, False)
        for _ in range(args.warmup):
            engine.step()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                engine.step()
                torch.cuda.synchronize(device)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        lines = Counter(
            f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)
        )
        results[method] = {"total": sum(lines.values()), "by_line": dict(lines.most_common())}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--parts", default="search,imagenet,syncs", help="search, imagenet, syncs, ddp"
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--imagenet-batch", type=int, default=256)
    parser.add_argument("--out", type=Path, help="write the results as JSON here too")
    args = parser.parse_args()
    device, _ = start(torch.device(args.device))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    parts = {
        "search": search_part,
        "imagenet": imagenet_part,
        "ddp": ddp_part,
        "syncs": syncs_part,
    }
    results: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
    }
    for name in args.parts.split(","):
        results[name] = parts[name](args, device)
        if mlo.parallel.distributed.rank() == 0:
            print(json.dumps({name: results[name]}, indent=1), flush=True)
            if args.out is not None:  # after each part, so that a timeout keeps the rest
                args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
