"""mlo: multilevel optimization for PyTorch.

Declare each level as a ``Problem``, the upper → lower dependencies as a graph, and
let the ``Engine`` train every level through the levels below it.
"""

import logging
from typing import Any

from . import autodiff, data, durable, hypergradient, observe, parallel, solvers
from .config import EngineConfig, ProblemConfig
from .engine import Engine
from .errors import (
    CheckpointError,
    DataError,
    GraphError,
    LevelError,
    MLOError,
    NonFiniteError,
    OutOfMemoryError,
    SetupError,
    UnknownProblemError,
)
from .graph import LevelGraph
from .observe import observing
from .parallel.sync_batchnorm import SyncBatchNorm, convert_sync_batchnorm
from .problem import Problem

logging.getLogger("mlo").addHandler(logging.NullHandler())


def from_betty(betty_engine: Any, **overrides: Any) -> Engine:
    """Run a constructed Betty engine's program on mlo's engine; see
    [`mlo.compat.betty.from_betty`][mlo.compat.betty.from_betty] (needs
    ``pip install "mlo[betty]"``)."""
    from .compat.betty import from_betty as convert

    return convert(betty_engine, **overrides)


__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "DataError",
    "Engine",
    "EngineConfig",
    "GraphError",
    "LevelError",
    "LevelGraph",
    "MLOError",
    "NonFiniteError",
    "OutOfMemoryError",
    "Problem",
    "ProblemConfig",
    "SetupError",
    "SyncBatchNorm",
    "UnknownProblemError",
    "__version__",
    "autodiff",
    "convert_sync_batchnorm",
    "data",
    "durable",
    "from_betty",
    "hypergradient",
    "observe",
    "observing",
    "parallel",
    "solvers",
]
