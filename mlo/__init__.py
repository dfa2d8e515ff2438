"""mlo: multilevel optimization for PyTorch.

Declare each level as a :class:`Problem`, the upper → lower dependencies as a graph, and
let the :class:`Engine` train every level through the levels below it.
"""

import logging

from . import checkpoint, data, observe, solvers
from .config import EngineConfig, ProblemConfig
from .engine import Engine
from .errors import (
    CheckpointError,
    DataError,
    GraphError,
    LevelError,
    MLOError,
    NonFiniteError,
    SetupError,
)
from .graph import LevelGraph
from .observe import observing
from .problem import Problem

logging.getLogger("mlo").addHandler(logging.NullHandler())

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
    "Problem",
    "ProblemConfig",
    "SetupError",
    "__version__",
    "checkpoint",
    "data",
    "observe",
    "observing",
    "solvers",
]
