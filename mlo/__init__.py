"""mlo: multilevel optimization for PyTorch.

Declare each level as a :class:`Problem`, the upper → lower dependencies as a graph, and
let the :class:`Engine` train every level through the levels below it.
"""

import logging

from . import data, observe, solvers
from .checkpoint import CheckpointError
from .config import EngineConfig, ProblemConfig
from .data import DataError
from .engine import Engine, NonFiniteError
from .graph import GraphError, LevelGraph
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
    "LevelGraph",
    "NonFiniteError",
    "Problem",
    "ProblemConfig",
    "__version__",
    "data",
    "observe",
    "observing",
    "solvers",
]
