"""What a search and an evaluation share around their loops: seeds, device and data
(``prepare``), the run folder's lock (``claim_if_lead``), and resuming a run only with
the settings it was started with (``resume_engine``)."""

from __future__ import annotations

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


def resume_engine(engine: mlo.Engine, config: SearchRun | EvalRun, out: Path) -> dict[str, Any]:
    """Load ``OUT/checkpoint.pt`` into ``engine`` after checking that the run was started
    with the same settings (but those in ``config.override``); drop the metric records
    after the checkpoint, which the resumed run writes again. Returns the ``extra``."""
    checkpoint = out / "checkpoint.pt"
    device = next(iter(engine.problems.values())).params.tensors[0].device
    saved = mlo.durable.checkpoint.read(checkpoint, map_location=device)
    extra = saved.get("extra") if isinstance(saved.get("extra"), dict) else {}
    check_resumed_settings(
        extra.get("settings"), settings(config), EXECUTION_SETTINGS, set(config.override)
    )
    engine.load_state_dict(saved["engine"], keep_current_hyperparameters=bool(config.override))
    if lead():
        truncate_metrics(out / "metrics.jsonl", engine.tick)
    return extra


def claim_if_lead(config: SearchRun | EvalRun):
    """The run folder's checks and lock (``problems.run_folder.claim``), taken by the
    rank that writes; under torchrun the other ranks write nothing."""
    if not lead():
        return nullcontext()
    return claim(Path(config.out), resume=config.resume, overwrite=config.overwrite)
