"""Configurations from TOML files and flags, validated by pydantic with every mistake
named at once, and printed back as TOML that ``--config`` reads unchanged."""

from __future__ import annotations

import difflib
import json
import os
import stat
import sys
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ValidationError

from .failures import ConfigError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

M = TypeVar("M", bound=BaseModel)


def _not_empty(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        raise ValueError(
            "is empty, which would write the run into the current folder; give the run a "
            "folder of its own"
        )
    return value


OutFolder = Annotated[Path, BeforeValidator(_not_empty)]
"""An output folder: a path, never the empty string."""

MAX_CONFIG_BYTES = 1 << 20


def read_config_file(file: Path) -> dict[str, Any]:
    """A TOML configuration file's table; anything that is not a readable UTF-8 TOML
    file of at most 1 MiB is a ``ConfigError`` naming the file."""
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
            message = err["msg"].removeprefix("Value error, ")
            problems.append(f"{field}: {message} (got {err.get('input')!r:.60})")
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
