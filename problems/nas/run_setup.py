"""What a search and an evaluation share around their loops: seeds, device and data
(``prepare``), the run folder's lock (``claim_if_lead``), and resuming a run only with
the settings it was started with (``resume_engine``)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

import mlo

from ..launch import lead, start
from ..run_folder import check_resumed_settings, claim, flatten, truncate_metrics
from .config import EvalRun, SearchRun
from .data import ImageData, load_images


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine; use cpu")
    return device


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover
        pass


def prepare(config: SearchRun | EvalRun, cutout: int = 0) -> tuple[Path, torch.device, ImageData]:
    """Seed every generator, pick the device, load the data. The output folder is
    created by the first file written into it, so a run that fails first leaves none."""
    out = Path(config.out)
    seed_everything(config.seed)
    device, _ = start(resolve_device(config.device))
    data = load_images(
        config.dataset,
        config.data_dir,
        download=config.download,
        cutout=cutout,
        image_size=config.image_size,
        synthetic_size=config.synthetic_size,
        seed=config.seed,
    )
    return out, device, data


# Settings that say how a run executes, not what it computes: free to change on --resume.
EXECUTION_SETTINGS = (
    "resume",
    "overwrite",
    "override",
    "progress",
    "workers",
    "device",
    "max_steps",
    "checkpoint_every",
    "checkpoint_minutes",
    "log_every",
    "download",
    "data_dir",
    "out",
    "small",
    "short",
)


def settings(config: SearchRun | EvalRun) -> dict[str, Any]:
    """The run's configuration as flat ``{dotted.key: value}`` (stored in checkpoints)."""
    return flatten(config.model_dump(mode="json"))


def available_memory(device: torch.device) -> int | None:
    """Bytes this run may still allocate: the GPU's free memory, or the machine's
    ``MemAvailable`` (``None`` where it cannot be read)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def first_image_shape(dataset: Any) -> tuple[int, ...]:
    """The shape of a dataset's first image, read without moving any random generator
    (a training set's augmentation draws from the global one)."""
    with torch.random.fork_rng(devices=[]):
        return tuple(dataset[0][0].shape)


def check_memory(
    build: Callable[[], torch.nn.Module],
    batch: int,
    image_shape: tuple[int, ...],
    stem_channels: int,
    device: torch.device,
    what: str,
) -> None:
    """Refuse a network that cannot fit before any of it is allocated: a lower bound of
    what training it needs (its parameters four times over: weights, gradients, two
    optimizer moments; and its stem's output for one batch, twice: forward and
    backward), against the memory available. The network is built on the ``meta``
    device, which allocates nothing."""
    free = available_memory(device)
    if free is None:
        return
    with torch.device("meta"):
        params = sum(p.numel() for p in build().parameters())
    height, width = image_shape[-2:]
    need = 4 * (4 * params + 2 * batch * stem_channels * height * width)
    if need > free:
        raise mlo.OutOfMemoryError(
            f"{what} would need at least {need / 2**30:.1f} GiB to train ({params:,} "
            f"parameters, a {height}×{width} stem output of {stem_channels} channels for "
            f"{batch} images), and {free / 2**30:.1f} GiB is available; use a smaller "
            "--init-channels, --layers, --batch-size or --image-size"
        )


def data_facts(data: ImageData) -> dict[str, Any]:
    """What a resumed run's data must still be: the dataset, the sizes of its training
    and test sets (the order of the batches depends on them) and its classes."""
    classes = getattr(data.train, "classes", None)
    if classes is None:  # a Subset's dataset has them
        classes = getattr(getattr(data.train, "dataset", None), "classes", None)
    return {
        "dataset": data.name,
        "train": len(data.train),
        "test": len(data.test),
        "classes": [str(c) for c in classes] if classes is not None else None,
    }


def check_same_data(saved: Any, current: dict[str, Any], where: Path) -> None:
    """Refuse to resume on data that changed since the run started (checkpoints written
    before this check hold no facts, and are not checked)."""
    if not isinstance(saved, dict):
        return
    if saved.get("classes") != current["classes"]:
        gone = sorted(set(saved.get("classes") or []) - set(current["classes"] or []))
        new = sorted(set(current["classes"] or []) - set(saved.get("classes") or []))
        raise mlo.CheckpointError(
            f"{where}: the classes changed since the run started (gone: "
            f"{', '.join(gone) or 'none'}; new: {', '.join(new) or 'none'}); a resumed run "
            "must see the data it was started on: restore them, or start a new run"
        )
    for part in ("train", "test"):
        if saved.get(part) != current[part]:
            raise mlo.CheckpointError(
                f"{where}: the {part} set had {saved.get(part)} images when the run started "
                f"and has {current[part]} now (images added or removed), and the order of "
                "the batches depends on its size; resume with the same images, or start a "
                "new run"
            )


def resume_engine(
    engine: mlo.Engine, config: SearchRun | EvalRun, out: Path, data: ImageData | None = None
) -> dict[str, Any]:
    """Load ``OUT/checkpoint.pt`` into ``engine`` after checking that the run was started
    with the same settings (but those in ``config.override``), on as many ranks (or the
    same global batch) and on the same ``data`` when given; drop the metric records after
    the checkpoint, which the resumed run writes again. Returns the ``extra``."""
    checkpoint = out / "checkpoint.pt"
    device = next(iter(engine.problems.values())).params.tensors[0].device
    saved = mlo.durable.checkpoint.read(checkpoint, map_location=device)
    extra = saved.get("extra") if isinstance(saved.get("extra"), dict) else {}
    check_resumed_settings(
        extra.get("settings"), settings(config), EXECUTION_SETTINGS, set(config.override)
    )
    check_world(saved["engine"], extra.get("settings") or {}, config, checkpoint)
    if data is not None:
        check_same_data(extra.get("data"), data_facts(data), checkpoint)
    engine.load_state_dict(saved["engine"], keep_current_hyperparameters=bool(config.override))
    if lead():
        truncate_metrics(out / "metrics.jsonl", engine.tick)
    return extra


def check_world(
    state: dict[str, Any], saved: dict[str, Any], config: SearchRun | EvalRun, where: Path
) -> None:
    """Refuse a resume on another number of ranks unless the global batch (ranks ×
    ``--batch-size``) is the same: the saved batches are re-split over the ranks, so only
    then does the run continue as it would have."""
    ranks = state.get("ranks") if isinstance(state.get("ranks"), dict) else None
    saved_world = int(ranks["world"]) if ranks and "world" in ranks else 1
    world = mlo.parallel.distributed.world_size()
    batch = saved.get("batch_size", config.batch_size)
    if saved_world == world or saved_world * batch == world * config.batch_size:
        return
    raise mlo.CheckpointError(
        f"{where} was written by {saved_world} rank(s) with --batch-size {batch} each (a "
        f"global batch of {saved_world * batch}); this run has {world} rank(s) with "
        f"--batch-size {config.batch_size} (global {world * config.batch_size}), so its "
        f"batches would not continue the run's. Resume on {saved_world} rank(s)"
    )


def claim_if_lead(config: SearchRun | EvalRun):
    """The run folder's checks and lock (``problems.run_folder.claim``), taken by the
    rank that writes; under torchrun the other ranks write nothing."""
    if not lead():
        return nullcontext()
    return claim(Path(config.out), resume=config.resume, overwrite=config.overwrite)
