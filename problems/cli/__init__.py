"""What every example's command line shares, one concern a module:

- ``failures``: a user's mistake as one ``error: …`` line and exit status 2
  (``command_line``, ``fail``);
- ``config_files``: configurations from TOML files and flags, validated, printed back;
- ``flags``: the NAS examples' common flags and ``--threads``;
- ``small_examples``: the small examples' parser, solver names and engine of one run.
"""

from .config_files import (
    MAX_CONFIG_BYTES,
    OutFolder,
    build_config,
    print_config,
    read_config_file,
    to_toml,
    tomllib,
)
from .failures import USER_ERRNOS, ConfigError, command_line, fail
from .flags import add_common_flags, add_threads_flag, apply_threads
from .small_examples import (
    ResumableRun,
    SolverName,
    example_engine,
    example_folder,
    example_parser,
    parse_run,
    trained_level_solvers,
)

__all__ = [
    "MAX_CONFIG_BYTES",
    "USER_ERRNOS",
    "ConfigError",
    "OutFolder",
    "ResumableRun",
    "SolverName",
    "add_common_flags",
    "add_threads_flag",
    "apply_threads",
    "build_config",
    "command_line",
    "example_engine",
    "example_folder",
    "example_parser",
    "fail",
    "parse_run",
    "print_config",
    "read_config_file",
    "to_toml",
    "tomllib",
    "trained_level_solvers",
]
