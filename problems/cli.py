"""What every example's command line shares: configs from TOML files and flags, validated
by pydantic, and failures reported as one clear line instead of a traceback."""

from __future__ import annotations

import argparse
import difflib
import errno
import functools
import json
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from mlo import MLOError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

M = TypeVar("M", bound=BaseModel)


class ConfigError(MLOError, ValueError):
    """A configuration file or flag is invalid; the message names the key and the fix."""


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` to stderr, on one line, and exit (no traceback)."""
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    raise SystemExit(code)


# Refusals by the operating system that a user fixes (a path, a permission, the disk),
# not defects of the program.
USER_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.EEXIST,
        errno.ENAMETOOLONG,
        errno.ENOENT,
    }
)


def command_line(main: Callable[..., int | None]) -> Callable[..., int]:
    """The one place where a command line turns a user's mistake into ``error: …`` and
    exit status 2: an :class:`mlo.MLOError` (every mistake mlo and the examples
    detect), a configuration that fails validation, or an operating-system refusal such
    as a full disk or a read-only folder. Anything else is a bug and keeps its
    traceback. A run that returns normally under torchrun ends with
    :func:`problems.launch.finish`: no rank leaves while another still works."""
    from .launch import finish

    @functools.wraps(main)
    def run(argv: list[str] | None = None, *args: Any, **kwargs: Any) -> int:
        try:
            status = main(argv, *args, **kwargs) or 0
            if status == 0:
                finish()  # under torchrun: the ranks end together
            return status
        except MLOError as exc:
            fail(_user_message(exc))
        except ValidationError as exc:
            fail("invalid configuration: " + _validation_summary(exc))
        except OSError as exc:
            if exc.errno not in USER_ERRNOS:
                raise
            where = f" {exc.filename}" if exc.filename else ""
            fail(f"cannot write or read{where}: {exc.strerror or exc}")

    return run


def _user_message(exc: BaseException) -> str:
    """The message of a mistake; for one re-raised from a data-loader worker (whose text
    holds the worker's traceback), the original error's own line."""
    text = str(exc)
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return text


def _validation_summary(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']} (got {err.get('input')!r:.60})"
        for err in exc.errors()
    )


MAX_CONFIG_BYTES = 1 << 20


def read_config_file(file: Path) -> dict[str, Any]:
    """A TOML configuration file's table; anything that is not a readable UTF-8 TOML
    file of at most 1 MiB is a :class:`ConfigError` naming the file."""
    file = Path(file)
    try:
        mode = file.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(f"config file {file} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {file} cannot be read ({exc.strerror})") from None
    if stat.S_ISDIR(mode):
        raise ConfigError(f"config file {file} is a folder; give a .toml file")
    try:
        with open(file, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"config file {file} cannot be read ({exc.strerror})") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"config file {file} is larger than {MAX_CONFIG_BYTES >> 20} MiB; a configuration "
            "is a short TOML file"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {file} is not UTF-8 text (byte {exc.start}); save it as UTF-8 TOML"
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {file} is not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"config file {file} nests too deeply to be a configuration") from None


def _unknown_keys(
    model: type[BaseModel], data: dict[str, Any], prefix: str = ""
) -> tuple[list[str], dict[str, Any]]:
    """The messages for keys ``model`` does not have (nested tables included), and
    ``data`` without them."""
    problems, known = [], {}
    fields = model.model_fields
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.5)
            hint = f"; did you mean {prefix}{close[0]}?" if close else ""
            valid = ", ".join(fields)
            problems.append(f"unknown key {prefix}{key}{hint} (valid keys: {valid})")
            continue
        annotation = fields[key].annotation
        if (
            isinstance(value, dict)
            and isinstance(annotation, type)
            and issubclass(annotation, BaseModel)
        ):
            nested, value = _unknown_keys(annotation, value, f"{prefix}{key}.")
            problems.extend(nested)
        known[key] = value
    return problems, known


def build_config(
    model: type[M],
    file: Path | None,
    overrides: dict[str, Any],
    defaults: dict[str, Any] | None = None,
) -> M:
    """``model`` from ``defaults``, then a TOML file (optional), then command-line
    ``overrides`` on top.

    Nested tables map to nested models; an override key ``a.b`` sets ``[a] b``.
    """
    data: dict[str, Any] = dict(defaults or {})
    if file is not None:
        data.update(read_config_file(file))
    for key, value in overrides.items():
        if value is None:
            continue
        target = data
        *parents, leaf = key.split(".")
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = value
    # Every mistake at once: unknown keys, then the values of the known ones.
    problems, known = _unknown_keys(model, data)
    try:
        config = model.model_validate(known)
    except ValidationError as exc:
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"])
            problems.append(f"{field}: {err['msg']} (got {err.get('input')!r:.60})")
    if problems:
        source = f" in {file}" if file else ""
        raise ConfigError(f"invalid configuration{source}: " + "; ".join(problems))
    return config


def to_toml(data: dict[str, Any]) -> str:
    """``data`` (a JSON-like dict) as TOML: plain keys first, then one table per nested
    dict. TOML has no null: a ``None`` value is written as a comment (not set)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, float):
            if v != v:
                return "nan"
            return repr(v) if abs(v) != float("inf") else ("inf" if v > 0 else "-inf")
        if isinstance(v, int):
            return str(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(str(v), ensure_ascii=False)

    def table(d: dict[str, Any], name: str) -> list[str]:
        lines = [f"[{name}]"] if name else []
        for k, v in d.items():
            if v is None:
                lines.append(f"# {k} = (not set)")
            elif not isinstance(v, dict):
                lines.append(f"{k} = {value(v)}")
        for k, v in d.items():
            if isinstance(v, dict):
                lines += ["", *table(v, f"{name}.{k}" if name else k)]
        return lines

    return "\n".join(table(data, "")) + "\n"


def print_config(config: BaseModel) -> None:
    """The effective configuration as TOML that ``--config`` reads back unchanged.

    Piped into a program that stops reading (``| head``), it ends quietly."""
    try:
        sys.stdout.write(to_toml(config.model_dump(mode="json")))
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would report the broken pipe again when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def add_common_flags(
    parser: argparse.ArgumentParser,
    datasets: tuple[str, ...] = (
        "cifar10",
        "cifar100",
        "imagefolder",
        "fashion-mnist",
        "digits",
        "synthetic",
    ),
) -> None:
    """Flags shared by the search and evaluation commands (None = keep file/default)."""
    parser.add_argument("--config", type=Path, help="TOML file; flags override its values")
    parser.add_argument(
        "--print-config", action="store_true", help="print the effective configuration and exit"
    )
    parser.add_argument(
        "--dataset",
        choices=list(datasets),
        help="digits: real 8×8 handwritten digits shipped with scikit-learn (works offline); "
        "fashion-mnist: 28×28 clothing images (offline from Debian's dataset-fashion-mnist)"
        if "digits" in datasets
        else None,
    )
    parser.add_argument("--data-dir", type=Path, dest="data_dir")
    parser.add_argument(
        "--no-download",
        action="store_const",
        const=False,
        dest="download",
        help="never try to download the dataset",
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int, dest="batch_size")
    parser.add_argument("--layers", type=int)
    parser.add_argument("--init-channels", type=int, dest="init_channels")
    parser.add_argument("--max-steps", type=int, dest="max_steps")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    parser.add_argument("--workers", type=int, help="data-loading worker processes")
    parser.add_argument(
        "--amp",
        action="store_const",
        const=True,
        help="bfloat16 autocast (on GPUs with bf16 support)",
    )
    parser.add_argument("--channels-last", action="store_const", const=True, dest="channels_last")
    parser.add_argument(
        "--resume", action="store_const", const=True, help="continue from OUT/checkpoint.pt"
    )
    parser.add_argument(
        "--overwrite",
        action="store_const",
        const=True,
        help="replace the previous run in OUT (without it, a folder holding one is refused)",
    )
    parser.add_argument(
        "--override",
        type=_keys,
        help="with --resume: settings allowed to differ from the checkpoint's, comma-separated "
        "(e.g. seed,lease.lam)",
    )
    parser.add_argument("--no-progress", action="store_const", const=False, dest="progress")
    parser.add_argument(
        "--image-size",
        type=int,
        dest="image_size",
        help="image side for imagefolder, fashion-mnist (default 28), digits (default 16) and "
        "synthetic data",
    )
    parser.add_argument(
        "--synthetic-size",
        type=int,
        dest="synthetic_size",
        help="examples in the synthetic training set",
    )
    parser.add_argument(
        "--log-every", type=int, dest="log_every", help="updates between metric records"
    )
    parser.add_argument(
        "--checkpoint-every", type=int, dest="checkpoint_every", help="updates between checkpoints"
    )
    add_threads_flag(parser)


def _keys(text: str) -> list[str]:
    return [k.strip() for k in text.split(",") if k.strip()]


def add_threads_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: OMP_NUM_THREADS, else the cores this process may use)",
    )


def apply_threads(requested: int | None) -> str:
    """Set torch's threads (``problems.threads``); a bad value exits 2 with a message."""
    from .threads import configure_threads

    try:
        return configure_threads(requested)
    except ValueError as exc:
        fail(str(exc))


def example_parser(description: str) -> argparse.ArgumentParser:
    """A parser with the flags every small example takes (all default to the config's)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", type=Path, help="TOML file; flags override its values")
    parser.add_argument(
        "--print-config", action="store_true", help="print the effective configuration and exit"
    )
    parser.add_argument("--steps", type=int)
    parser.add_argument("--seeds", type=int)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--no-progress", action="store_const", const=False, dest="progress")
    parser.add_argument(
        "--resume",
        action="store_const",
        const=True,
        help="continue each run from its latest checkpoint in OUT/checkpoints",
    )
    parser.add_argument(
        "--checkpoint-every", type=int, dest="checkpoint_every", help="ticks between checkpoints"
    )
    add_threads_flag(parser)
    return parser


def parse_run(parser: argparse.ArgumentParser, model: type[M], argv: list[str] | None) -> M | None:
    """The validated configuration (file, then flags), or ``None`` after
    ``--print-config`` printed it; invalid input raises :class:`ConfigError`."""
    parsed = parser.parse_args(argv)
    flags = {
        k: v for k, v in vars(parsed).items() if k not in ("config", "print_config", "threads")
    }
    config = build_config(model, parsed.config, flags)  # mistakes: command_line reports them
    if parsed.print_config:
        print_config(config)
        return None
    print(apply_threads(parsed.threads), file=sys.stderr)
    return config


def trained_level_solvers() -> list[str]:
    """The registered solvers that apply to a level trained by its optimizer (all but
    those that need an explicit ``best_response``, such as ``explicit``)."""
    import mlo

    return [n for n in mlo.solvers.available() if not mlo.solvers.resolve(n).needs_best_response]


def _registered_solver(name: str) -> str:
    import mlo

    solver = mlo.solvers.resolve(name)  # raises with the list of valid names
    if solver.needs_best_response:
        raise ValueError(
            f"solver {name!r} needs a level with an explicit best_response, and this "
            f"example's levels are trained by their optimizers; use one of "
            f"{', '.join(trained_level_solvers())}"
        )
    return name


SolverName = Annotated[str, AfterValidator(_registered_solver)]
"""A config field holding the name of a registered solver that applies to a level trained
by its optimizer."""


class ResumableRun(BaseModel):
    """What every small example's configuration shares: checkpoints and resuming."""

    model_config = ConfigDict(extra="forbid")

    resume: bool = Field(
        False, description="continue each run from its latest checkpoint in OUT/checkpoints"
    )
    checkpoint_every: int = Field(50, ge=1, description="engine ticks between checkpoints")


def example_engine(problems, dependencies, config: Any, metrics_file: str, log_every: int = 50):
    """The engine one run of an example trains: ``config.steps`` ticks, ``config.progress``,
    a metrics file ``metrics_file`` in ``config.out`` written every ``log_every`` ticks, and
    checkpoints every ``config.checkpoint_every`` ticks (and at the end) in
    ``config.out/checkpoints/<run>``, ``<run>`` being ``metrics_file``'s stem.

    With ``config.resume`` the engine is returned loaded from that run's latest
    checkpoint, so that ``engine.run()`` continues exactly where it stopped (a finished run
    trains no further), and the metric records after that checkpoint dropped (the run
    writes them again). Without it, the run's old checkpoints and metrics are removed.
    """
    import torch

    import mlo

    from .launch import lead, shard_batch, start
    from .run_folder import truncate_metrics

    _, distributed = start(torch.device("cpu"))
    if distributed:
        # Whole-dataset batches (a list of them) are split across the ranks; the engine
        # averages the gradients, so each update is the single process's.
        for problem in problems:
            if isinstance(problem.stream.data, list):
                problem.stream.data = [shard_batch(b) for b in problem.stream.data]
    folder = Path(config.out) / "checkpoints" / Path(metrics_file).stem
    metrics = Path(config.out) / metrics_file
    saved = sorted(folder.glob("step_*.pt"))
    if not config.resume and lead():
        for old in saved:
            old.unlink()
        metrics.unlink(missing_ok=True)
    if not config.resume:
        saved = []
    engine = mlo.Engine(
        problems,
        dependencies,
        mlo.EngineConfig(
            steps=config.steps,
            progress=config.progress,
            log_every=log_every,
            metrics_path=metrics,
            checkpoint_every=config.checkpoint_every,
            checkpoint_dir=folder,
            keep_last=2,
            distributed="ddp" if distributed else "none",
        ),
    )
    if saved:
        engine.load(saved[-1])
        if lead():
            truncate_metrics(metrics, engine.tick)
    return engine
