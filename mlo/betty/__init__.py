"""Betty 0.2's API on mlo's engine: a Betty program runs with its ``betty`` imports
changed to ``mlo.betty`` and no Betty installed.

```python
from mlo.betty.configs import Config, EngineConfig   # was: from betty.configs import ...
from mlo.betty.engine import Engine                  # was: from betty.engine import Engine
from mlo.betty.problems import ImplicitProblem       # was: from betty.problems import ...
```

The problems, configurations, engine, environment and loggers keep Betty 0.2.1's names,
fields and defaults; the hypergradients are mlo's (see the page "Moving from Betty" for
where they differ). ``mlo.from_betty`` remains for engines built with an installed Betty.
"""

from .configs import Config, EngineConfig
from .engine import Engine
from .envs import Env
from .problems import HigherIterativeProblem, ImplicitProblem, IterativeProblem, Problem

__all__ = [
    "Config",
    "Engine",
    "EngineConfig",
    "Env",
    "HigherIterativeProblem",
    "ImplicitProblem",
    "IterativeProblem",
    "Problem",
]
