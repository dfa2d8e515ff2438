"""How a command line fails: a user's mistake becomes one ``error: …`` line and exit
status 2; anything else is a bug and keeps its traceback."""

from __future__ import annotations

import errno
import functools
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from pydantic import ValidationError

from mlo import MLOError
from mlo.errors import is_out_of_memory

from ..stopping import RunStopped


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
        errno.EIO,
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
    exit status 2: an [`mlo.MLOError`][mlo.errors.MLOError] (every mistake mlo and the examples
    detect), a configuration that fails validation, or an operating-system refusal such
    as a full disk or a read-only folder. Anything else is a bug and keeps its
    traceback. A run that returns normally under torchrun ends with
    ``problems.launch.finish``: no rank leaves while another still works."""
    from ..launch import finish

    @functools.wraps(main)
    def run(argv: list[str] | None = None, *args: Any, **kwargs: Any) -> int:
        try:
            status = main(argv, *args, **kwargs) or 0
            if status == 0:
                finish()  # under torchrun: the ranks end together
            return status
        except RunStopped as exc:  # a stop on request: not a mistake
            print(f"stopped: {exc}", file=sys.stderr)
            raise SystemExit(130) from None
        except KeyboardInterrupt:  # a second Ctrl-C, or one before training started
            print(
                "stopped: interrupted; the run's last checkpoint, if it wrote one, is "
                "kept (run the same command with --resume to continue from it)",
                file=sys.stderr,
            )
            raise SystemExit(130) from None
        except MLOError as exc:
            fail(_user_message(exc))
        except (MemoryError, RuntimeError) as exc:  # an allocation refused outside a level
            if not is_out_of_memory(exc):
                raise
            fail(
                f"out of memory ({_user_message(exc).strip().splitlines()[0]}); use a smaller "
                "--batch-size, --init-channels, --layers or --image-size"
            )
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
